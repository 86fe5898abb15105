"""One wall-clock budget (MediaLimits.max_decode_seconds) for decoding all media of a request: the
video, packet-count and audio loops check it per frame, and every conversation of a prompt shares it."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

import omni.encoders.deadline as deadline_module
from omni.config import VisionEncoderConfig
from omni.encoders.audio_loader import load_audio
from omni.encoders.deadline import DecodeDeadline
from omni.encoders.limits import MediaLimits
from omni.encoders.messages import load_conversation_media, process_mm_info
from omni.encoders.video_loader import load_video
from omni.errors import MediaError
from omni.prompt import load_media


class TickingClock:
    """Every reading is one second after the previous one, so a budget of N s runs out at the
    (N+1)-th check whatever the machine's speed."""

    def __init__(self) -> None:
        self.readings = 0

    def monotonic(self) -> float:
        self.readings += 1
        return float(self.readings)


@pytest.fixture
def clock(monkeypatch):
    ticking = TickingClock()
    monkeypatch.setattr(deadline_module, "time", ticking)
    return ticking


def _video(path) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video", "video": str(path)}]}]


def test_the_limit_has_a_default_and_is_named_when_exceeded():
    assert 0 < MediaLimits().max_decode_seconds < 3600  # on by default, shorter than the longest video
    expired = DecodeDeadline(budget_s=2.0, expires_at=time.monotonic() - 1.0)
    with pytest.raises(MediaError, match=r"longer than the 2 s limit \(MediaLimits.max_decode_seconds\)"):
        expired.check("clip.mp4")


@pytest.mark.parametrize("kind", ["mp4", "mkv"])  # mp4 indexes its frames; mkv's packets are counted first
def test_video_decoding_stops_at_the_first_frame_past_the_deadline(media, clock, kind):
    # 30 frames, 2 fps sampling: all 30 decode (or are counted); a 5 s budget runs out at the 6th
    with pytest.raises(MediaError, match="max_decode_seconds"):
        load_video(str(media.video[kind]), MediaLimits(max_decode_seconds=5.0))
    assert clock.readings == 1 + 6  # the start, then one check per frame (or packet) until the 6th
    clock.readings = 0
    assert len(load_video(str(media.video[kind]), MediaLimits(max_decode_seconds=1000.0)).frame_indices) == 6


def test_audio_decoding_stops_at_the_deadline(media, clock):
    with pytest.raises(MediaError, match="max_decode_seconds"):
        load_audio(str(media.speech), MediaLimits(max_decode_seconds=3.0))
    assert clock.readings == 1 + 4
    assert load_audio(str(media.speech), MediaLimits(max_decode_seconds=1000.0)).size > 0


def test_a_video_is_cut_short_in_wall_clock_time(real_videos):
    path = real_videos / "a.mp4"  # 7 s of 1920x1080: every frame decodes for 2 fps sampling
    load_conversation_media(_video(path), limits=MediaLimits())  # one-time costs (imports, kernels) first
    start = time.monotonic()
    load_conversation_media(_video(path), limits=MediaLimits())
    whole_s = time.monotonic() - start
    start = time.monotonic()
    with pytest.raises(MediaError, match=f"{whole_s / 4:g} s limit"):
        load_conversation_media(_video(path), limits=MediaLimits(max_decode_seconds=whole_s / 4))
    assert time.monotonic() - start < whole_s * 0.75


def _checks_for_one_conversation(media, clock) -> int:
    process_mm_info(_video(media.video["mp4"]), use_audio_in_video=False, limits=MediaLimits(max_decode_seconds=1e6))
    readings, clock.readings = clock.readings, 0
    return readings


def test_every_conversation_of_a_call_shares_one_deadline(media, clock):
    one = _checks_for_one_conversation(media, clock)
    limits = MediaLimits(max_decode_seconds=one + 5)  # enough for one conversation, not for two
    process_mm_info(_video(media.video["mp4"]), use_audio_in_video=False, limits=limits)
    with pytest.raises(MediaError, match="max_decode_seconds"):
        process_mm_info([_video(media.video["mp4"])] * 2, use_audio_in_video=False, limits=limits)


def test_a_prompts_conversations_share_one_deadline(media, clock):
    config = SimpleNamespace(vision=VisionEncoderConfig())  # load_media reads the patch geometry only
    one = _checks_for_one_conversation(media, clock)
    limits = MediaLimits(max_decode_seconds=one + 5)
    assert len(load_media([_video(media.video["mp4"])], config, limits=limits)) == 1
    with pytest.raises(MediaError, match="max_decode_seconds"):
        load_media([_video(media.video["mp4"])] * 2, config, limits=limits)


def test_a_given_deadline_is_honoured_before_any_item_is_read(media):
    expired = DecodeDeadline(budget_s=1.0, expires_at=time.monotonic() - 1.0)
    with pytest.raises(MediaError, match="'video 1'.*max_decode_seconds"):
        load_conversation_media(_video(media.video["mp4"]), deadline=expired)
