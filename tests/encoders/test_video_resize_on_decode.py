"""Video frames are resized as they decode: the pixels are exactly those of decoding everything at
source size and resizing afterwards (the processor's order), and no more than one source frame is
held at a time."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from omni.encoders.image_processing import PatchGeometry, resize_frames, video_size_for
from omni.encoders.limits import MediaLimits
from omni.encoders.messages import load_conversation_media
from omni.encoders.video_loader import load_video
from omni.tools.media_factory import video_frames, write_video

LIMITS = MediaLimits()


def _decode_then_resize(path, item: dict) -> torch.Tensor:
    """The order omni used before (and the processor uses): every sampled frame at source size, then
    one resize of the stacked batch."""
    decoded = load_video(
        str(path), LIMITS, fps=item.get("fps"), nframes=item.get("nframes"),
        start_s=item.get("video_start"), end_s=item.get("video_end"),
    )
    frames = decoded.frames
    height, width = video_size_for(
        frames.shape[0], frames.shape[-1], frames.shape[-2], LIMITS, PatchGeometry(), str(path),
        min_pixels=item.get("min_pixels"), max_pixels=item.get("max_pixels"), total_pixels=item.get("total_pixels"),
        resized_height=item.get("resized_height"), resized_width=item.get("resized_width"),
    )
    return resize_frames(frames, height, width)


def _load_item(path, item: dict, use_audio_in_video: bool = False):
    conversation = [{"role": "user", "content": [{"type": "video", "video": str(path), **item}]}]
    [loaded] = load_conversation_media(conversation, use_audio_in_video, LIMITS)
    return loaded


@pytest.mark.parametrize("item", [
    {},  # 2 fps of a 7 s 1920x1080 clip: the per-frame budget (768 tokens) shrinks it
    {"nframes": 8, "total_pixels": 8 * 28 * 28 * 200},  # the whole-video budget shrinks it further
    {"fps": 4.0, "video_start": 1.0, "video_end": 3.5, "max_pixels": 300 * 28 * 28},
    {"nframes": 4, "resized_height": 300, "resized_width": 500},
])
def test_real_1080p_clip_matches_decode_then_resize_exactly(real_videos, item):
    path = real_videos / "a.mp4"
    loaded = _load_item(path, item, use_audio_in_video=True)
    expected = _decode_then_resize(path, item)
    assert loaded.frames.shape == expected.shape and loaded.frames.dtype == torch.uint8
    assert torch.equal(loaded.frames, expected)
    assert loaded.video_audio is not None and loaded.video_audio.size > 0  # its AAC track, from the same file


@pytest.mark.parametrize("kind", ["mkv", "webm", "mov"])
def test_every_container_matches_decode_then_resize_exactly(media, kind):
    # 160x120 frames grow to the per-frame minimum: an upscale, the other direction
    path = media.video[kind]
    assert torch.equal(_load_item(path, {"fps": 5.0}).frames, _decode_then_resize(path, {"fps": 5.0}))


# Run in a fresh interpreter, whose memory is this load's alone. The peak is the kernel's high-water
# mark of resident memory (VmHWM), reset after a warm-up load of a tiny video (one-time costs: codec
# tables, resize kernels, threads). Not ru_maxrss: on Linux it carries the parent's peak over a fork.
_PEAK_RSS_SCRIPT = """
import sys
from omni.encoders.messages import load_conversation_media

def status_bytes(field):
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024

def load(path, frames):
    item = {"type": "video", "video": path, "nframes": frames, "max_pixels": 128 * 28 * 28}
    return load_conversation_media([{"role": "user", "content": [item]}])[0]

load(sys.argv[3], 4)
with open("/proc/self/clear_refs", "w") as clear_refs:
    clear_refs.write("5")  # high-water mark := current resident size
before = status_bytes("VmRSS")
loaded = load(sys.argv[1], int(sys.argv[2]))
print(status_bytes("VmHWM") - before, loaded.frames.numel())
"""


def test_memory_is_the_resized_frames_plus_a_few_source_frames(tmp_path):
    width, height, sampled = 1280, 720, 40
    path = write_video(tmp_path / "clip.mp4", video_frames(60, width, height, seed=7), 10, "mp4")
    warm_up = write_video(tmp_path / "tiny.mp4", video_frames(10, 64, 48, seed=8), 10, "mp4")
    run = subprocess.run([sys.executable, "-c", _PEAK_RSS_SCRIPT, str(path), str(sampled), str(warm_up)],
                         capture_output=True, text=True, timeout=300, check=True)
    growth_bytes, output_bytes = map(int, run.stdout.split())
    source_frame_bytes = width * height * 3
    # Decoding every sampled frame at source size before resizing holds all 40 (plus the resize's
    # float copy of them): ~220 MB here. Resizing each as it decodes holds the output (~11 MB), one
    # source frame with its resize buffers, and the decoder's frames in flight (one per thread): ~30 MB.
    assert growth_bytes < output_bytes + 16 * source_frame_bytes, (
        f"peak RSS grew {growth_bytes / 2**20:.0f} MiB for {output_bytes / 2**20:.0f} MiB of frames "
        f"({(growth_bytes - output_bytes) / source_frame_bytes:.0f} source frames besides them)")
