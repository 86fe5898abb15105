"""The typed events a reply streams: text deltas, audio chunks, and one final event."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class AudioChunk:
    samples: np.ndarray  # float32 mono, in [-1, 1]
    sample_rate_hz: int
    sequence: int  # 0, 1, 2, ... within one reply

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate_hz

    def pcm16(self) -> bytes:
        """Little-endian 16-bit PCM of this chunk."""
        from omni.audio_io import pcm16_bytes

        return pcm16_bytes(self.samples)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    text_tokens: int
    codec_tokens: int = 0
    cached_prompt_tokens: int = 0  # of prompt_tokens, those a prefix-cache hit did not prefill again


@dataclass(frozen=True)
class Timings:
    """Seconds from the start of the request; per-stage compute seconds and peak memory; real-time factor."""

    first_text_s: float | None = None
    first_audio_s: float | None = None
    total_s: float = 0.0
    audio_duration_s: float = 0.0
    stage_s: dict[str, float] = field(default_factory=dict)  # prefill, thinker, talker, token2wav, ...
    # Peak memory while each stage ran (encoders, thinker_prefill, thinker_decode, talker, codec), in
    # the unit `memory_measure` names (CUDA: PyTorch's allocated bytes; CPU: the resident set); the
    # stages in `stage_peak_shared` ran beside another one, whose memory their figure includes (see
    # omni.memory_stats). Empty where nothing was measured (a reply run without the engine measures
    # its encoders only).
    stage_peak_bytes: dict[str, int] = field(default_factory=dict)
    memory_measure: str | None = None
    stage_peak_shared: tuple[str, ...] = ()

    @property
    def real_time_factor(self) -> float | None:
        """Compute time / audio duration (below 1 is faster than real time)."""
        if not self.audio_duration_s:
            return None
        return self.total_s / self.audio_duration_s


@dataclass(frozen=True)
class ReplyDone:
    text: str
    finish_reason: str  # "stop", "length" or "cancelled"
    usage: Usage
    timings: Timings
    codec_codes: tuple[int, ...] = ()  # the Talker's codec tokens (re-synthesis, caching, tests)


Event = TextDelta | AudioChunk | ReplyDone
