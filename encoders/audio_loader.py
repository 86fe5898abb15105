"""Decode audio from any container PyAV (FFmpeg) reads — wav, flac, mp3, ogg/opus, m4a, or the audio
track of a video — to 16 kHz mono float32.

Resampling is FFmpeg's (swresample through PyAV) at the source's channel layout; channels are then
averaged, as librosa's `to_mono` does (FFmpeg's own mono downmix scales by 1/sqrt(2) instead, which
would make a stereo file louder than the same file in Qwen's pipeline).
"""

from __future__ import annotations

from typing import Any

import av
import numpy as np

from omni.encoders.deadline import DecodeDeadline
from omni.encoders.limits import MediaLimits
from omni.encoders.sources import MediaBytes, is_source, resolve_source
from omni.errors import MediaError

# Above this start offset the decoder seeks instead of decoding and discarding the prefix.
_SEEK_AFTER_S = 10.0


def load_audio(
    value: Any, limits: MediaLimits, start_s: float = 0.0, end_s: float | None = None, name: str | None = None,
    deadline: DecodeDeadline | None = None,
) -> np.ndarray:
    """A (samples,) float32 waveform at `limits.sample_rate_hz`. `value` is a source (path, bytes, data
    URI, URL) or an already decoded mono waveform at that rate (numpy or torch, as qwen-omni-utils
    accepts); `start_s` / `end_s` cut a section (seconds); `deadline` is the request's decoding
    budget (a fresh one from `limits` when None)."""
    _check_range(start_s, end_s, name or "audio")
    if is_source(value):
        source = resolve_source(value, limits, "audio")
        waveform = decode_audio_track(source, limits, start_s, end_s, name or source.name, deadline=deadline)
        return check_waveform(waveform, limits, name or source.name)
    label = name or "audio array"
    waveform = _as_waveform(value, label)
    rate = limits.sample_rate_hz
    waveform = waveform[int(rate * start_s) : None if end_s is None else int(rate * end_s)]
    return check_waveform(np.ascontiguousarray(waveform, dtype=np.float32), limits, label)


def has_audio_track(source: MediaBytes) -> bool:
    try:
        with av.open(source.open()) as container:
            return len(container.streams.audio) > 0
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"{source.name!r} cannot be opened as a media file: {exc}") from None


def decode_audio_track(
    source: MediaBytes, limits: MediaLimits, start_s: float, end_s: float | None, label: str, in_video: bool = False,
    deadline: DecodeDeadline | None = None,
) -> np.ndarray:
    """Decode, resample and mix down the first audio stream of `source`, from `start_s` to `end_s`."""
    deadline = deadline or DecodeDeadline.start(limits)
    rate = limits.sample_rate_hz
    what = "video" if in_video else "audio file"
    # Decode a little past the limit so that "too long" is detected without decoding the whole file.
    wanted_s = (end_s - start_s) if end_s is not None else limits.max_audio_seconds + 1.0
    wanted = int(round(wanted_s * rate))
    try:
        container = av.open(source.open())
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"{what} {label!r} cannot be opened (unsupported format or corrupt): {exc}") from None
    with container:
        if not container.streams.audio:
            raise MediaError(f"{what} {label!r} has no audio track")
        stream = container.streams.audio[0]
        stream.thread_type = "AUTO"
        skip = int(rate * start_s)  # samples to drop from the start of what is decoded
        seeked = start_s > _SEEK_AFTER_S
        if seeked:
            container.seek(int(start_s * av.time_base), backward=True, any_frame=False)
        resampler: av.AudioResampler | None = None
        layout = None
        chunks: list[np.ndarray] = []
        collected = 0
        try:
            for frame in container.decode(stream):
                deadline.check(label)
                if seeked:
                    # the seek lands on a frame at or before start_s: drop the samples before it
                    first_s = float(frame.pts * frame.time_base) if frame.pts is not None else start_s
                    skip, seeked = max(0, int(round((start_s - first_s) * rate))), False
                if resampler is None or frame.layout.name != layout:
                    # a layout change mid-stream (rare, e.g. concatenated files) needs a fresh resampler
                    if resampler is not None:
                        collected += _take(resampler.resample(None), chunks)
                    layout = frame.layout.name
                    resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
                collected += _take(resampler.resample(frame), chunks)
                if collected >= skip + wanted:
                    break
            else:
                if resampler is not None:
                    collected += _take(resampler.resample(None), chunks)
        except MediaError:
            raise
        except (av.FFmpegError, ValueError, OSError) as exc:
            if not chunks:
                raise MediaError(f"{what} {label!r} could not be decoded (corrupt or truncated): {exc}") from None
            # a truncated tail: keep what decoded, as players do
    if not chunks:
        raise MediaError(f"{what} {label!r} holds no decodable audio")
    waveform = np.concatenate(chunks)
    return np.ascontiguousarray(waveform[skip : skip + wanted])


def check_waveform(waveform: np.ndarray, limits: MediaLimits, label: str) -> np.ndarray:
    rate = limits.sample_rate_hz
    if waveform.size == 0:
        raise MediaError(f"audio {label!r} is empty (zero samples in the requested range)")
    seconds = waveform.size / rate
    if seconds > limits.max_audio_seconds:
        raise MediaError(
            f"audio {label!r} is longer than the {limits.max_audio_seconds:g} s limit (at least {seconds:.1f} s); "
            "cut it (audio_start/audio_end, or video_start/video_end for a video's track) or raise "
            "MediaLimits.max_audio_seconds"
        )
    if not np.isfinite(waveform).all():
        raise MediaError(f"audio {label!r} contains NaN or infinite samples")
    if limits.reject_silent_audio and not np.any(waveform):
        raise MediaError(f"audio {label!r} is digital silence (every sample is 0)")
    return waveform


def _take(frames, chunks: list[np.ndarray]) -> int:
    taken = 0
    for frame in frames:
        planes = frame.to_ndarray()  # (channels, samples) float32, planar
        mono = planes[0] if planes.shape[0] == 1 else planes.mean(axis=0, dtype=np.float32)
        chunks.append(mono)
        taken += mono.shape[0]
    return taken


def _as_waveform(value: Any, label: str) -> np.ndarray:
    try:
        import torch

        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().float().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if not isinstance(value, np.ndarray):
        raise MediaError(
            f"{label}: audio must be a path, URL, data URI, bytes or a mono waveform array; got {type(value).__name__}"
        )
    if value.ndim != 1:
        raise MediaError(f"{label}: a waveform array must be mono (1-D), got shape {tuple(value.shape)}")
    if np.issubdtype(value.dtype, np.integer):
        scale = float(np.iinfo(value.dtype).max) + 1.0
        return value.astype(np.float32) / scale
    if not np.issubdtype(value.dtype, np.floating):
        raise MediaError(f"{label}: waveform dtype {value.dtype} is neither float nor integer PCM")
    return value.astype(np.float32, copy=False)


def _check_range(start_s: float, end_s: float | None, label: str) -> None:
    if start_s < 0 or (end_s is not None and end_s <= start_s):
        raise MediaError(f"{label}: the section start={start_s} s, end={end_s} s is empty or negative")
