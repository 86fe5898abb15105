"""Media preprocessing time: omni vs the transformers Qwen2.5-Omni processor, in one process.

    python bench/preprocess.py [--repeats 7]

Both sides start from the same decoded media and produce the same model inputs (checked):
- image: one 1280 x 960 RGB picture -> resize (smart_resize), normalise, patchify;
- audio: 10 s of 16 kHz speech-like audio -> 128-bin log-mel + mask (the reference pads to 300 s, as
  the Qwen2.5-Omni processor always does);
- video: 10 s of 640 x 480 video sampled at 2 fps (20 frames) -> resize, normalise, patchify.
Decoding (PIL, PyAV) is the same work for both and is reported separately for omni only. Times are
medians over `--repeats` runs after a warm-up. The last line is JSON: image_ratio, audio_ratio,
video_ratio (omni / reference, lower is faster) and the raw timings.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omni.encoders.audio_features import extract_features  # noqa: E402
from omni.encoders.audio_loader import load_audio  # noqa: E402
from omni.encoders.image_loader import load_image  # noqa: E402
from omni.encoders.image_processing import (  # noqa: E402
    PatchGeometry,
    image_frames,
    image_size_for,
    process_images,
    process_videos,
    resize_frames,
    video_size_for,
)
from omni.encoders.limits import MediaLimits  # noqa: E402
from omni.encoders.video_loader import load_video  # noqa: E402
from omni.tools.make_checkpoint import cached_checkpoint  # noqa: E402
from omni.tools.media_factory import drawing, tone, video_frames, write_audio, write_video  # noqa: E402

GEOMETRY = PatchGeometry()
LIMITS = MediaLimits()


def _median_seconds(work, repeats: int) -> float:
    work()  # warm-up (allocations, lazy imports, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _omni_image(image):
    height, width = image_size_for(image.width, image.height, LIMITS, GEOMETRY, "bench")
    return process_images([resize_frames(image_frames(image), height, width)], GEOMETRY)


def _omni_video(frames):
    height, width = video_size_for(frames.shape[0], frames.shape[-1], frames.shape[-2], LIMITS, GEOMETRY, "bench")
    return process_videos([resize_frames(frames, height, width)], GEOMETRY)


def _speech_like(seconds: float) -> np.ndarray:
    """Tones gliding in pitch under noise bursts: broadband, non-stationary audio."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 16000)) / 16000
    pitch = 150 + 80 * np.sin(2 * np.pi * 0.7 * t)
    voiced = 0.3 * np.sin(2 * np.pi * np.cumsum(pitch) / 16000) * (np.sin(2 * np.pi * 3 * t) > 0)
    return (voiced + 0.02 * rng.standard_normal(t.shape)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    from transformers import Qwen2_5OmniProcessor

    processor = Qwen2_5OmniProcessor.from_pretrained(cached_checkpoint("tiny"))
    workdir = Path(tempfile.mkdtemp(prefix="omni-bench-"))

    # ---- decoded inputs, shared by both sides
    jpeg = io.BytesIO()
    drawing(1280, 960, seed=1).save(jpeg, format="JPEG", quality=90)
    image = load_image(jpeg.getvalue(), LIMITS)
    audio_path = write_audio(workdir / "speech.mp3", _speech_like(10.0)[None], 16000, "mp3")
    waveform = load_audio(str(audio_path), LIMITS)[: 10 * 16000]
    video_path = write_video(workdir / "clip.mp4", video_frames(250, 640, 480, seed=2), 25, "mp4",
                             audio=tone(10.0, 300.0))
    video = load_video(str(video_path), LIMITS)
    frames = video.frames  # (20, 3, 480, 640) uint8

    # ---- same outputs on both sides
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected_image = processor.image_processor(images=[image], return_tensors="pt")
        expected_video = processor.video_processor(videos=[frames], return_tensors="pt")
        expected_audio = processor.feature_extractor([waveform], sampling_rate=16000, padding="max_length",
                                                     return_attention_mask=True, return_tensors="pt")
    ours_image, ours_video = _omni_image(image), _omni_video(frames)
    ours_audio = extract_features([waveform])
    assert torch.equal(ours_image.grid_thw, expected_image["image_grid_thw"])
    assert torch.equal(ours_video.grid_thw, expected_video["video_grid_thw"])
    assert ours_audio.feature_lens.tolist() == expected_audio["attention_mask"].sum(-1).tolist()
    frames_valid = int(ours_audio.feature_lens[0])
    audio_difference = (ours_audio.input_features - expected_audio["input_features"][0, :, :frames_valid]).abs().max()
    assert audio_difference <= 1e-4, audio_difference

    # ---- timings
    def reference_image():
        processor.image_processor(images=[image], return_tensors="pt")

    def reference_audio():
        processor.feature_extractor([waveform], sampling_rate=16000, padding="max_length",
                                    return_attention_mask=True, return_tensors="pt")

    def reference_video():
        processor.video_processor(videos=[frames], return_tensors="pt")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timings = {
            "omni_image_s": _median_seconds(lambda: _omni_image(image), args.repeats),
            "reference_image_s": _median_seconds(reference_image, args.repeats),
            "omni_audio_10s_s": _median_seconds(lambda: extract_features([waveform]), args.repeats),
            "reference_audio_10s_s": _median_seconds(reference_audio, args.repeats),
            "omni_video_10s_s": _median_seconds(lambda: _omni_video(frames), args.repeats),
            "reference_video_10s_s": _median_seconds(reference_video, args.repeats),
            # decoding, omni only (the reference processor reads no files)
            "omni_decode_image_s": _median_seconds(lambda: load_image(jpeg.getvalue(), LIMITS), args.repeats),
            "omni_decode_audio_10s_s": _median_seconds(lambda: load_audio(str(audio_path), LIMITS), args.repeats),
            "omni_decode_video_10s_s": _median_seconds(lambda: load_video(str(video_path), LIMITS), args.repeats),
        }
    ratios = {
        "image_ratio": timings["omni_image_s"] / timings["reference_image_s"],
        "audio_ratio": timings["omni_audio_10s_s"] / timings["reference_audio_10s_s"],
        "video_ratio": timings["omni_video_10s_s"] / timings["reference_video_10s_s"],
    }
    grid = ours_image.grid_thw[0].tolist()
    print(f"image 1280x960 -> grid {grid}: omni {timings['omni_image_s'] * 1e3:7.2f} ms, "
          f"reference {timings['reference_image_s'] * 1e3:7.2f} ms, ratio {ratios['image_ratio']:.3f}")
    print(f"audio 10 s -> {frames_valid} frames: omni {timings['omni_audio_10s_s'] * 1e3:7.2f} ms, "
          f"reference {timings['reference_audio_10s_s'] * 1e3:7.2f} ms, ratio {ratios['audio_ratio']:.3f}")
    print(f"video 10 s, {frames.shape[0]} frames {frames.shape[-1]}x{frames.shape[-2]} -> grid "
          f"{ours_video.grid_thw[0].tolist()}: omni {timings['omni_video_10s_s'] * 1e3:7.2f} ms, "
          f"reference {timings['reference_video_10s_s'] * 1e3:7.2f} ms, ratio {ratios['video_ratio']:.3f}")
    print(f"omni decode: image {timings['omni_decode_image_s'] * 1e3:.2f} ms, 10 s audio "
          f"{timings['omni_decode_audio_10s_s'] * 1e3:.2f} ms, 10 s video {timings['omni_decode_video_10s_s'] * 1e3:.2f} ms")
    result = {"bench": "preprocess", "threads": torch.get_num_threads(), "repeats": args.repeats,
              **{key: round(value, 4) for key, value in ratios.items()},
              **{key: round(value, 6) for key, value in timings.items()}}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
