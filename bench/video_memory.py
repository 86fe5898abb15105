"""Peak memory of reading one video for the model: omni (frames resized as they are decoded) vs
transformers' `load_video` (PyAV backend: every sampled frame at source size) followed by the same
resize, on the same synthetic clip, the same number of sampled frames and the same target size.

    python bench/video_memory.py [--width 1920 --height 1080] [--frames 300] [--fps 10] [--repeats 3]

Each measurement runs in a fresh process (peak RSS, `ru_maxrss`, minus the RSS once everything is
imported), the two sides taking turns. The last line is JSON with `peak_ratio` (omni / transformers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

_MEASURE = r"""
import resource, sys
import torch
from torchvision.transforms.v2 import functional as tvf
from omni.encoders.messages import load_conversation_media
from transformers.video_utils import load_video

def rss_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20

side, path, fps = sys.argv[1], sys.argv[2], float(sys.argv[3])
item = load_conversation_media([{"role": "user", "content": [{"type": "video", "video": sys.argv[4], "fps": 2.0}]}])
before = rss_mib()  # after imports and a first small read (decoder libraries loaded)
if side == "omni":
    [item] = load_conversation_media([{"role": "user", "content": [{"type": "video", "video": path, "fps": fps}]}])
    frames = item.frames
else:
    count, height, width = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
    array, _ = load_video(path, num_frames=count, backend="pyav")
    source = torch.from_numpy(array).permute(0, 3, 1, 2)
    frames = tvf.resize(source, [height, width], interpolation=tvf.InterpolationMode.BICUBIC, antialias=True)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(peak - before, *frames.shape)
"""


def write_clip(path: Path, width: int, height: int, count: int) -> None:
    """A moving square on a gradient, H.264, 30 fps, frames made one at a time (a 4K clip of
    hundreds of frames would not fit in memory as one array)."""
    import av
    import numpy as np

    rows, columns = np.mgrid[0:height, 0:width]
    background = np.stack([columns * 255 // width, rows * 255 // height, (rows + columns) % 256], -1).astype(np.uint8)
    square = height // 3
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, 30)
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for index in range(count):
            frame = background.copy()
            x, y = (index * 11) % (width - square), (index * 7) % (height - square)
            frame[y:y + square, x:x + square] = (index * 37 % 256, 255 - index % 256, 128)
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = index
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def measure(side: str, clip: Path, fps: float, warm_up: Path, shape: tuple[int, ...] = ()) -> tuple[float, list[int]]:
    run = subprocess.run([sys.executable, "-c", _MEASURE, side, str(clip), str(fps), str(warm_up), *map(str, shape)],
                         capture_output=True, text=True, check=True)
    growth, *frames_shape = run.stdout.split()
    return float(growth), [int(n) for n in frames_shape]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--frames", type=int, default=300, help="frames in the clip (30 fps)")
    parser.add_argument("--fps", type=float, default=10.0, help="frames sampled per second of video")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        clip, warm_up = Path(scratch) / "clip.mp4", Path(scratch) / "warm.mp4"
        write_clip(clip, args.width, args.height, args.frames)
        write_clip(warm_up, 64, 48, 8)
        omni_mib, reference_mib = [], []
        shape: list[int] = []
        for _ in range(args.repeats):  # the two sides take turns
            growth, shape = measure("omni", clip, args.fps, warm_up)
            omni_mib.append(growth)
            count, _, height, width = shape
            growth, reference_shape = measure("transformers", clip, args.fps, warm_up, (count, height, width))
            assert reference_shape == shape, (reference_shape, shape)
            reference_mib.append(growth)
    output_mib = shape[0] * shape[1] * shape[2] * shape[3] / 2**20
    figures = {
        "bench": "video_memory", "clip": f"{args.width}x{args.height}", "clip_frames": args.frames,
        "sampled_frames": shape[0], "output": f"{shape[3]}x{shape[2]}", "output_mib": round(output_mib, 1),
        "omni_peak_mib": round(statistics.median(omni_mib), 1),
        "transformers_peak_mib": round(statistics.median(reference_mib), 1),
    }
    figures["peak_ratio"] = round(figures["omni_peak_mib"] / figures["transformers_peak_mib"], 3)
    print(f"omni: {omni_mib} MiB, transformers load_video + resize: {reference_mib} MiB (peak RSS growth per run)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
