"""Decode a video with PyAV and sample its frames: `fps` frames per second (default 2) or exactly
`nframes`, within `min_frames` / `max_frames` and the `video_start` / `video_end` section.

The frame arithmetic is qwen-omni-utils' (`smart_nframes`, `calculate_video_frame_range`, then
`linspace(first, last, n).round()`), so a message gives the same frames as in Qwen's pipeline. Only
the sampled frames are converted to RGB; the others are decoded (codecs are sequential) and dropped.
Each sampled frame is resized as it is decoded (`frame_size` picks the size from the frame count and
the source size, both known before the first frame is held), so a long 4K clip never holds more
than its resized frames and one source frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import torch

from omni.encoders.deadline import DecodeDeadline
from omni.encoders.image_processing import resize_frames
from omni.encoders.limits import MediaLimits
from omni.encoders.sources import MediaBytes, resolve_source
from omni.errors import MediaError

FRAME_FACTOR = 2  # frames are sampled in pairs: one temporal patch holds 2 frames

# (sampled frames, source width, source height) -> target (height, width) of every sampled frame
FrameSize = Callable[[int, int, int], tuple[int, int]]


@dataclass
class DecodedVideo:
    frames: torch.Tensor  # (frames, 3, height, width) uint8: sampled frames, at `frame_size`'s size or source size
    source_fps: float  # the container's average frame rate
    frames_in_range: int  # source frames between video_start and video_end
    frame_indices: list[int]
    name: str
    source: MediaBytes | None  # None for a video given as a list of images

    @property
    def sample_fps(self) -> float:
        """Sampled frames per second of video (qwen-omni-utils' `sample_fps`)."""
        return len(self.frame_indices) / max(self.frames_in_range, 1e-6) * self.source_fps


def sample_frame_count(
    frames_in_range: int,
    source_fps: float,
    fps: float | None,
    nframes: int | None,
    min_frames: int,
    max_frames: int,
    label: str,
) -> int:
    """How many frames to sample (even, within the range and the frame budget)."""
    if fps is not None and nframes is not None:
        raise MediaError(f"video {label!r}: give either fps or nframes, not both")
    if nframes is not None:
        count = round(nframes / FRAME_FACTOR) * FRAME_FACTOR
        if count > max_frames:
            raise MediaError(f"video {label!r}: nframes={nframes} is over the {max_frames} frame limit")
    else:
        lowest = math.ceil(min_frames / FRAME_FACTOR) * FRAME_FACTOR
        highest = math.floor(min(max_frames, frames_in_range) / FRAME_FACTOR) * FRAME_FACTOR
        wanted = frames_in_range / source_fps * fps
        count = min(min(max(wanted, lowest), highest), frames_in_range)
        count = math.floor(count / FRAME_FACTOR) * FRAME_FACTOR
    if not FRAME_FACTOR <= count <= frames_in_range:
        raise MediaError(
            f"video {label!r}: {count} frames would be sampled but its section holds {frames_in_range} frames; "
            f"a video needs at least {FRAME_FACTOR} frames"
        )
    return count


def frame_range(total_frames: int, source_fps: float, start_s: float | None, end_s: float | None, label: str):
    """(first, last) frame indices of the section [start_s, end_s] (inclusive)."""
    if start_s is None and end_s is None:
        return 0, total_frames - 1
    duration_s = total_frames / source_fps
    first = math.ceil(max(0.0, min(start_s, duration_s)) * source_fps) if start_s is not None else 0
    last = total_frames - 1
    if end_s is not None:
        last = min(math.floor(max(0.0, min(end_s, duration_s)) * source_fps), total_frames - 1)
    if first >= last:
        raise MediaError(
            f"video {label!r}: the section video_start={start_s}, video_end={end_s} holds no frames "
            f"(the video is {duration_s:.2f} s, {total_frames} frames at {source_fps:.3f} fps)"
        )
    return first, last


def load_video(
    value: Any,
    limits: MediaLimits,
    fps: float | None = None,
    nframes: int | None = None,
    min_frames: int | None = None,
    max_frames: int | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
    name: str | None = None,
    frame_size: FrameSize | None = None,
    deadline: DecodeDeadline | None = None,
) -> DecodedVideo:
    """`frame_size` resizes each sampled frame as it is decoded (None keeps the source size);
    `deadline` is the request's decoding budget (a fresh one from `limits` when None)."""
    deadline = deadline or DecodeDeadline.start(limits)
    source = resolve_source(value, limits, "video")
    label = name or source.name
    if fps is None and nframes is None:
        fps = limits.default_fps
    if fps is not None and not fps > 0:
        raise MediaError(f"video {label!r}: fps must be positive, got {fps}")
    max_frames = min(max_frames if max_frames is not None else limits.max_video_frames, limits.max_video_frames)
    min_frames = min_frames if min_frames is not None else limits.min_video_frames
    try:
        container = av.open(source.open())
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"video {label!r} cannot be opened (unsupported format or corrupt): {exc}") from None
    with container:
        if not container.streams.video:
            raise MediaError(f"video {label!r} has no video track")
        stream = container.streams.video[0]
        source_fps = _frame_rate(stream)
        if source_fps is None:
            raise MediaError(f"video {label!r} declares no frame rate")
        duration_s = _duration_s(container, stream)
        if duration_s is not None and duration_s > limits.max_video_seconds:
            raise MediaError(
                f"video {label!r} is {duration_s:.0f} s long, over the {limits.max_video_seconds:g} s limit"
            )
        total = stream.frames or _count_packets(source, label, deadline)
        if total <= 0:
            raise MediaError(f"video {label!r} has no frames")
        if duration_s is None and total / source_fps > limits.max_video_seconds:
            raise MediaError(
                f"video {label!r} is {total / source_fps:.0f} s long, over the {limits.max_video_seconds:g} s limit"
            )
        first, last = frame_range(total, source_fps, start_s, end_s, label)
        in_range = last - first + 1
        count = sample_frame_count(in_range, source_fps, fps, nframes, min_frames, max_frames, label)
        indices = torch.linspace(first, last, count).round().long().tolist()
        frames = _decode_frames(container, stream, indices, label, frame_size, deadline)
    return DecodedVideo(
        frames=frames, source_fps=source_fps, frames_in_range=in_range, frame_indices=indices, name=label,
        source=source,
    )


def _frame_rate(stream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return None


def _duration_s(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _count_packets(source: MediaBytes, label: str, deadline: DecodeDeadline) -> int:
    """Frames of a container that does not index them (webm, mkv): count packets (no decoding), in a
    container of their own (seeking back is not possible in every file) over the same opened file."""
    try:
        with av.open(source.open()) as container:
            stream = container.streams.video[0]
            packets = 0
            for packet in container.demux(stream):
                deadline.check(label)
                packets += packet.size > 0
            return packets
    except MediaError:
        raise
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise MediaError(f"video {label!r} is corrupt or truncated: {exc}") from None


def _decode_frames(
    container, stream, indices: list[int], label: str, frame_size: FrameSize | None, deadline: DecodeDeadline
) -> torch.Tensor:
    stream.thread_type = "AUTO"
    wanted: dict[int, list[int]] = {}
    for slot, index in enumerate(indices):
        wanted.setdefault(index, []).append(slot)
    # Written in place as frames decode, so the video is never held twice (a list, then its stack).
    frames: torch.Tensor | None = None
    filled = [False] * len(indices)
    last_index = indices[-1]
    decoded = -1
    latest = None
    source_shape = None  # (3, height, width) of the first sampled frame; the others must match it
    try:
        for decoded, frame in enumerate(container.decode(stream)):
            deadline.check(label)
            if decoded in wanted:
                # contiguous, as a frame of the stacked batch the processor resizes is: the resize
                # kernel's result depends on the memory layout, and must equal the processor's
                pixels = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).unsqueeze(0).contiguous()
                if frames is None:
                    source_shape = tuple(pixels.shape[1:])
                    height, width = source_shape[1:]
                    target = frame_size(len(indices), width, height) if frame_size is not None else (height, width)
                    frames = torch.empty((len(indices), 3, *target), dtype=torch.uint8)
                elif tuple(pixels.shape[1:]) != source_shape:
                    raise MediaError(f"video {label!r} changes resolution mid-stream "
                                     f"({sorted({source_shape, tuple(pixels.shape[1:])})}); omni needs one frame size")
                latest = resize_frames(pixels, *target)[0]
                for slot in wanted[decoded]:
                    frames[slot] = latest
                    filled[slot] = True
            if decoded >= last_index:
                break
    except MediaError:
        raise
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise MediaError(
            f"video {label!r} is corrupt or truncated: decoding failed after {decoded + 1} frames: {exc}"
        ) from None
    if decoded < 0:
        raise MediaError(f"video {label!r} has no decodable frames")
    if frames is None:
        raise MediaError(f"video {label!r}: none of the sampled frames decodes ({decoded + 1} frames decoded)")
    # The index may promise a frame or two more than the stream yields (edit lists, a short tail):
    # those slots repeat the frame before them (the last one that decoded, for the first slot).
    for slot in range(len(filled)):
        if not filled[slot]:
            frames[slot] = frames[slot - 1] if slot > 0 else latest
    return frames
