"""What omni accepts as media: sizes, durations, budgets and where bytes may come from.

One frozen `MediaLimits` travels with every request that carries media; loaders check against it
and raise `MediaError` naming the file and the limit. The defaults are Qwen2.5-Omni's own budgets
(qwen-omni-utils and the transformers processor): 300 s of audio per clip (the processor's feature
window), at most 16384 vision tokens per image, 768 frames per video and a 128k-token sequence's
worth of pixels per video.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omni.errors import MediaError

MIB = 1024 * 1024
PATCH_FACTOR = 28  # patch 14 x spatial merge 2: one Thinker vision token covers 28 x 28 pixels


@dataclass(frozen=True)
class MediaLimits:
    # --- where bytes come from
    allow_remote: bool = False  # fetch http(s) URLs; off by default (a server must opt in)
    remote_timeout_s: float = 10.0
    max_remote_bytes: int = 64 * MIB
    max_file_bytes: int = 1024 * MIB  # local files, raw bytes and data URIs
    media_root: Path | None = None  # when set, local paths must resolve inside it
    # Fetch only from hosts that resolve to public addresses, checked for the URL and every redirect
    # (a server exposed to clients must not let them reach its own network).
    public_remote_only: bool = False

    # --- audio
    sample_rate_hz: int = 16000
    max_audio_seconds: float = 300.0  # the transformers processor's window (chunk_length 300 s)
    reject_silent_audio: bool = False  # digital silence (all samples 0) is an error when True

    # --- images
    min_image_side_px: int = 14  # one patch: anything smaller carries no visual content
    max_image_source_pixels: int = 89_478_485  # decoded size cap (Pillow's decompression-bomb limit)
    max_image_pixels: int = 16384 * PATCH_FACTOR * PATCH_FACTOR  # after resizing: 16384 tokens
    min_image_pixels: int = 4 * PATCH_FACTOR * PATCH_FACTOR
    max_aspect_ratio: float = 200.0

    # --- video
    default_fps: float = 2.0
    max_video_frames: int = 768
    min_video_frames: int = 4
    # per-frame budgets, in pixels after resizing (qwen-omni-utils VIDEO_MIN/MAX_TOKEN_NUM)
    min_video_frame_pixels: int = 128 * PATCH_FACTOR * PATCH_FACTOR
    max_video_frame_pixels: int = 768 * PATCH_FACTOR * PATCH_FACTOR
    # whole-video budget: 90% of a 128k-token sequence (qwen-omni-utils' default total_pixels)
    max_video_total_pixels: int = int(128000 * PATCH_FACTOR * PATCH_FACTOR * 0.9)
    max_video_seconds: float = 3600.0  # decode budget: longer sources are refused before decoding

    # --- time
    # Wall-clock seconds to decode all media of one request (every conversation of a prompt). An hour
    # of 1080p H.264 at 30 fps (within max_video_seconds) takes ~20 min to decode on 2 cores, so the
    # duration caps alone let one request hold a worker that long; 300 s still decodes ~14 min of it.
    max_decode_seconds: float = 300.0


def check_size(size_bytes: int, limit_bytes: int, name: str) -> None:
    """Refuse `name` (a file, URL or payload) of `size_bytes` over `limit_bytes`."""
    if size_bytes > limit_bytes:
        raise MediaError(f"{name} is {size_bytes / MIB:.1f} MiB, over the {limit_bytes / MIB:.1f} MiB limit")
