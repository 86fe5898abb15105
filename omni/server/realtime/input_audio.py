"""The input audio buffer: base64 PCM16 at 24 kHz in, 16 kHz for the model and the VAD.

Appended audio is resampled once, as it arrives (FFmpeg's swresample keeps its filter state across
appends, so pieces of any length join without clicks), and goes to the buffer that
`input_audio_buffer.commit` turns into a user item and, with server VAD, to the same end-of-turn
detector the demo uses (omni.vad). Positions (audio_start_ms, audio_end_ms) count the milliseconds
of audio appended since the connection opened.

Without VAD the buffer holds what the client appended, up to `max_buffer_s` (an append past that is
refused); with VAD, where a client streams its microphone without pause, it keeps the last
`max_buffer_s` and the detector holds the utterance, which ends a turn at `max_buffer_s` at the latest.
"""

from __future__ import annotations

import base64
import binascii
from collections import deque

import av
import numpy as np

from omni.server.realtime.protocol import ClientEventError
from omni.server.realtime.settings import SAMPLE_RATE_HZ, TurnDetection
from omni.vad import VAD_SAMPLE_RATE_HZ, EndOfTurnDetector, StreamResampler, TurnEvent, VADOptions

MIN_COMMIT_MS = 100  # OpenAI's least committable buffer


def decode_pcm16(audio_b64: str, param: str) -> np.ndarray:
    """float32 mono samples of base64 little-endian PCM16."""
    try:
        data = base64.b64decode(audio_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ClientEventError(f"{param} is not valid base64", code="invalid_value", param=param) from None
    if len(data) % 2:
        raise ClientEventError(f"{param} holds {len(data)} bytes, not whole 16-bit samples (PCM16, 24 kHz mono)",
                               code="invalid_value", param=param)
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def resample_to_16k(samples_24k: np.ndarray) -> np.ndarray:
    """A whole clip from 24 kHz to the model's 16 kHz (the resampler flushed at its end)."""
    if samples_24k.size == 0:
        return np.zeros(0, np.float32)
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=VAD_SAMPLE_RATE_HZ)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples_24k, np.float32).reshape(1, -1), format="fltp",
                                       layout="mono")
    frame.sample_rate = SAMPLE_RATE_HZ
    pieces = [f.to_ndarray()[0] for f in resampler.resample(frame)] + [f.to_ndarray()[0] for f in resampler.resample(None)]
    return np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)


def vad_options(detection: TurnDetection, max_turn_s: float) -> VADOptions:
    """OpenAI's server_vad settings as the detector's: threshold with Silero's own hysteresis (release
    0.15 below it), prefix_padding_ms as the padding kept around the speech, silence_duration_ms as
    the pause that ends a turn."""
    return VADOptions(threshold=detection.threshold, release_threshold=max(0.01, detection.threshold - 0.15),
                      min_silence_ms=float(detection.silence_duration_ms), pad_ms=float(detection.prefix_padding_ms),
                      max_turn_s=max_turn_s)


class InputAudio:
    def __init__(self, max_buffer_s: float, detection: TurnDetection | None) -> None:
        self.max_buffer_samples = int(max_buffer_s * VAD_SAMPLE_RATE_HZ)
        self.max_buffer_s = max_buffer_s
        self._resample = StreamResampler()
        self._buffer: deque[np.ndarray] = deque()
        self.buffered_samples = 0
        self.total_samples = 0  # 16 kHz samples appended since the connection opened
        self._detector: EndOfTurnDetector | None = None
        self._detector_origin = 0  # total_samples when the detector last started listening
        self.configure(detection)

    def configure(self, detection: TurnDetection | None) -> None:
        """Server VAD on (with these settings) or off; a detector in the middle of an utterance starts over."""
        if detection is None:
            self._detector = None
            return
        options = vad_options(detection, self.max_buffer_s)
        if self._detector is None:
            self._detector = EndOfTurnDetector(options)
        else:
            self._detector.options = options
            self._detector.reset()
        self._detector_origin = self.total_samples

    @property
    def vad(self) -> bool:
        return self._detector is not None

    @property
    def speaking(self) -> bool:
        return self._detector is not None and self._detector.speaking

    def append(self, samples_24k: np.ndarray) -> list[TurnEvent]:
        """Add audio (float32, 24 kHz); the detector's turn events. Runs in a worker thread (Silero)."""
        samples = self._resample(samples_24k, SAMPLE_RATE_HZ)
        if self._detector is None and self.buffered_samples + samples.size > self.max_buffer_samples:
            raise ClientEventError(
                f"the input audio buffer holds {self.buffered_samples / VAD_SAMPLE_RATE_HZ:.1f} s; at most "
                f"{self.max_buffer_s:g} s may wait for a commit: commit or clear it", code="input_audio_buffer_full")
        self._buffer.append(samples)
        self.buffered_samples += samples.size
        while self.buffered_samples > self.max_buffer_samples:
            self.buffered_samples -= self._buffer.popleft().size
        events = self._detector.feed(samples, VAD_SAMPLE_RATE_HZ) if self._detector is not None else []
        self.total_samples += samples.size
        return events

    def take(self) -> np.ndarray:
        """The buffer's audio (16 kHz), for a commit; the buffer is empty afterwards."""
        if self.buffered_samples < MIN_COMMIT_MS * VAD_SAMPLE_RATE_HZ // 1000:
            raise ClientEventError(f"the input audio buffer holds {self.buffered_samples * 1000 // VAD_SAMPLE_RATE_HZ} "
                                   f"ms of audio; a commit needs at least {MIN_COMMIT_MS} ms",
                                   code="input_audio_buffer_commit_empty")
        audio = np.concatenate(list(self._buffer))
        self.clear()
        return audio

    def clear(self) -> None:
        """Empty the buffer; the detector forgets an utterance in progress."""
        self._buffer.clear()
        self.buffered_samples = 0
        if self._detector is not None:
            self._detector.reset()
            self._detector_origin = self.total_samples

    def drop_buffered(self) -> None:
        """After the detector ended a turn: its utterance became the item, so the buffer is spent."""
        self._buffer.clear()
        self.buffered_samples = 0

    def stream_ms(self, detector_s: float) -> int:
        """A detector position as milliseconds since the connection opened."""
        return int(round(1000 * (self._detector_origin / VAD_SAMPLE_RATE_HZ + detector_s)))
