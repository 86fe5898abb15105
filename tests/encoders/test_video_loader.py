"""Video decoding with PyAV: frame sampling by fps / nframes within budgets and sections, in every
container, and the typed errors of broken videos."""

from __future__ import annotations

import pytest
import torch

from omni.encoders.limits import MediaLimits
from omni.encoders.video_loader import load_video, sample_frame_count
from omni.errors import MediaError
from omni.tools.media_factory import VIDEO_FORMATS, truncated_copy, video_frames

LIMITS = MediaLimits()


@pytest.mark.parametrize("kind", sorted(VIDEO_FORMATS))
@pytest.mark.parametrize("with_audio", [False, True])
def test_every_container_samples_2_fps(media, kind, with_audio):
    path = (media.video_audio if with_audio else media.video)[kind]
    video = load_video(str(path), LIMITS)
    # 30 frames at 10 fps, sampled at 2 fps: 6 frames spread evenly over the clip
    assert video.frames.shape == (6, 3, 120, 160) and video.frames.dtype == torch.uint8
    assert video.frame_indices == [0, 6, 12, 17, 23, 29]
    assert video.source_fps == pytest.approx(10.0)
    assert video.sample_fps == pytest.approx(2.0)
    original = torch.from_numpy(video_frames(30, 160, 120, seed=4)).permute(0, 3, 1, 2)
    for slot, index in enumerate(video.frame_indices):
        error = (video.frames[slot].float() - original[index].float()).abs().mean().item()
        assert error < 12, f"frame {index} decodes far from what was encoded ({error:.1f})"


def test_nframes_fps_and_frame_budgets(media):
    path = str(media.video["mp4"])
    # rounded to pairs with Python's round (half to even), as qwen-omni-utils rounds
    assert len(load_video(path, LIMITS, nframes=9).frame_indices) == 8
    assert len(load_video(path, LIMITS, nframes=11).frame_indices) == 12
    assert load_video(path, LIMITS, fps=5.0).frame_indices == torch.linspace(0, 29, 14).round().long().tolist()
    assert len(load_video(path, LIMITS, fps=0.1).frame_indices) == 4  # min_frames
    assert len(load_video(path, LIMITS, fps=10.0, max_frames=8).frame_indices) == 8
    assert len(load_video(path, MediaLimits(max_video_frames=6), fps=10.0).frame_indices) == 6
    with pytest.raises(MediaError, match="either fps or nframes"):
        load_video(path, LIMITS, fps=2.0, nframes=4)
    with pytest.raises(MediaError, match="over the 6 frame limit"):
        load_video(path, MediaLimits(max_video_frames=6), nframes=8)
    with pytest.raises(MediaError, match="holds 30 frames"):
        load_video(path, LIMITS, nframes=40)
    with pytest.raises(MediaError, match="fps must be positive"):
        load_video(path, LIMITS, fps=0)


def test_section_start_and_end(media):
    video = load_video(str(media.video["webm"]), LIMITS, start_s=1.0, end_s=2.5)
    assert video.frame_indices[0] == 10 and video.frame_indices[-1] == 25
    assert video.frames_in_range == 16
    assert video.sample_fps == pytest.approx(len(video.frame_indices) / 16 * 10)
    with pytest.raises(MediaError, match="holds no frames"):
        load_video(str(media.video["webm"]), LIMITS, start_s=2.9, end_s=2.95)


def test_video_longer_than_the_limit(media):
    with pytest.raises(MediaError, match="over the 2 s limit"):
        load_video(str(media.video["mkv"]), MediaLimits(max_video_seconds=2.0))


def test_broken_videos_are_media_errors(media, tmp_path):
    with pytest.raises(MediaError, match="has no video track"):
        load_video(str(media.tone["m4a"]), LIMITS)
    with pytest.raises(MediaError, match="no decodable frames|decoding failed after 0 frames"):
        load_video(str(media.undecodable_video), LIMITS)
    text = tmp_path / "clip.mp4"
    text.write_text("not a video " * 100)
    with pytest.raises(MediaError, match="cannot be opened"):
        load_video(str(text), LIMITS)
    image = tmp_path / "frame.webm"
    image.write_bytes(media.image_jpg.read_bytes())
    with pytest.raises(MediaError):
        load_video(str(image), LIMITS)


@pytest.mark.parametrize("kind", ["mp4", "mov"])
def test_truncated_mp4_is_a_media_error(media, tmp_path, kind):
    # the index (moov) of these files comes last: a cut file does not open
    cut = truncated_copy(media.video[kind], tmp_path / f"cut.{kind}", 0.6)
    with pytest.raises(MediaError, match="cannot be opened"):
        load_video(str(cut), LIMITS)


@pytest.mark.parametrize("kind", ["mkv", "webm"])
def test_truncated_stream_plays_its_first_part(media, tmp_path, kind):
    # streaming containers hold packets in order: what arrived decodes, sampled over what arrived
    cut = truncated_copy(media.video[kind], tmp_path / f"cut.{kind}", 0.6)
    video = load_video(str(cut), LIMITS)
    assert 4 <= video.frames_in_range < 30
    assert video.frames.shape[1:] == (3, 120, 160) and video.frame_indices[-1] == video.frames_in_range - 1


def test_sample_frame_count_rules():
    assert sample_frame_count(300, 30.0, 2.0, None, 4, 768, "v") == 20
    assert sample_frame_count(300, 30.0, None, 7, 4, 768, "v") == 8
    assert sample_frame_count(3, 30.0, 2.0, None, 4, 768, "v") == 2
    with pytest.raises(MediaError, match="at least 2 frames"):
        sample_frame_count(1, 30.0, 2.0, None, 4, 768, "v")
