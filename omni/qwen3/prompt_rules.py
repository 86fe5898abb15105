"""Qwen3-Omni's rules for turning media into prompt tokens (`omni.prompt.MediaRules`): patch 16 with
mean = std = 0.5, Whisper features padded to the longest clip of the call, the AuT's 12.5 Hz token count,
audio-in-video merged token by token by time, and Qwen3's rope index. The rest of omni.prompt (chat
template, media loading, expansion, embedding merge) is shared with Qwen2.5-Omni."""

from __future__ import annotations

import numpy as np

from omni.encoders.image_processing import PatchGeometry
from omni.encoders.qwen3.audio_encoder import output_lengths
from omni.encoders.qwen3.audio_features import extract_features
from omni.encoders.qwen3.image_processing import process_images, process_videos
from omni.prompt import MediaInputs, MediaRules
from omni.qwen3.config import ThinkerConfig
from omni.qwen3.rope_index import rope_index


def qwen3_media_rules(config: ThinkerConfig) -> MediaRules:
    n_window = config.audio.n_window
    return MediaRules(
        geometry=PatchGeometry(config.vision.patch_size, config.vision.temporal_patch_size,
                               config.vision.spatial_merge_size),
        audio_tokens=lambda mel_frames: int(output_lengths(mel_frames, n_window)),
        extract_audio=extract_features,
        process_images=process_images,
        process_videos=process_videos,
        interleave=interleave_by_time,
        positions=_positions,
    )


def interleave_by_time(grid, second_per_grid: float, audio_tokens: int, geometry: PatchGeometry,
                       config: ThinkerConfig) -> list[int]:
    """<|audio_bos|>, then the video's tokens and its audio track's tokens merged by time (a video token
    goes first on equal times; one audio token per position), then <|audio_eos|>, as Qwen3OmniMoeProcessor
    expands a video whose audio it loaded."""
    ids = config.token_ids
    rows, cols = grid[1] // geometry.merge_size, grid[2] // geometry.merge_size
    # float64 times, as the processor computes them with numpy
    video_time = np.repeat(np.arange(grid[0]), rows * cols) * second_per_grid * config.position_id_per_seconds
    out = [ids.audio_start]
    video_at = audio_at = 0
    while video_at < len(video_time) and audio_at < audio_tokens:
        if video_time[video_at] <= audio_at:
            out.append(ids.video)
            video_at += 1
        else:
            out.append(ids.audio)
            audio_at += 1
    out.extend([ids.video] * (len(video_time) - video_at))
    out.extend([ids.audio] * (audio_tokens - audio_at))
    out.append(ids.audio_end)
    return out


def _positions(input_ids, config: ThinkerConfig, media: MediaInputs, token_mask, geometry: PatchGeometry):
    return rope_index(
        input_ids, config.token_ids,
        image_grid_thw=media.images.grid_thw if media.images is not None else None,
        video_grid_thw=media.videos.grid_thw if media.videos is not None else None,
        video_second_per_grid=media.video_second_per_grid,
        audio_feature_lens=media.audio.feature_lens if media.audio is not None else None,
        token_mask=token_mask, spatial_merge_size=geometry.merge_size,
        position_id_per_seconds=config.position_id_per_seconds, n_window=config.audio.n_window,
    )
