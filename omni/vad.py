"""Voice activity detection: where a speaker's turn starts and ends. One implementation, used by
the demo's voice chat (omni.demo.turn) and the Realtime API's server VAD (omni.server.realtime).

Silero VAD scores 32 ms frames (512 samples at 16 kHz) with a small recurrent model. Its model file
ships inside the `silero-vad` wheel; we load the TorchScript file directly instead of importing the
`silero_vad` package, whose import calls `torch.set_num_threads(1)` for the whole process (that would
make the Thinker in the same process run on one core).

`EndOfTurnDetector` turns a stream of microphone chunks (any rate, any channel count, int or float PCM)
into turn events: `speech_start` once speech has lasted `min_speech_ms` (the moment a reply in progress
should be interrupted), and `turn_end` with the utterance (16 kHz mono float32) once the speaker has
been silent for `min_silence_ms`. Both carry where the speech itself began and (turn_end) ended in
the stream, which the Realtime API reports as audio_start_ms / audio_end_ms.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from omni.errors import InputError

VAD_SAMPLE_RATE_HZ = 16000
FRAME_SAMPLES = 512  # Silero's window at 16 kHz
FRAME_MS = 1000.0 * FRAME_SAMPLES / VAD_SAMPLE_RATE_HZ


def silero_model_path() -> Path:
    """The TorchScript Silero VAD inside the installed `silero-vad` wheel (found without importing it)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("voice activity detection needs the silero-vad package: pip install -e '.[demo]' "
                         "(or '.[realtime]')")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.jit"
    if not path.is_file():
        raise InputError(f"the silero-vad package has no model file at {path}; reinstall silero-vad")
    return path


class SileroVAD:
    """Speech probability per 512-sample frame at 16 kHz. The model keeps its recurrent state between
    calls, so each audio stream needs its own instance (loading one takes a few milliseconds)."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 flags TorchScript loading as deprecated
            self._model = torch.jit.load(str(silero_model_path()), map_location="cpu").eval()
        self.reset()

    def reset(self) -> None:
        self._model.reset_states()

    @torch.inference_mode()
    def probability(self, frame: np.ndarray) -> float:
        if frame.shape != (FRAME_SAMPLES,):
            raise InputError(f"a VAD frame is {FRAME_SAMPLES} samples at 16 kHz, got shape {frame.shape}")
        return float(self._model(torch.from_numpy(np.ascontiguousarray(frame, dtype=np.float32)), VAD_SAMPLE_RATE_HZ))


@dataclass(frozen=True)
class VADOptions:
    threshold: float = 0.5  # a frame at or above this is speech
    release_threshold: float = 0.35  # below this, silence (hysteresis, as in Silero's own iterator)
    min_speech_ms: float = 250.0  # shorter blips (clicks, a cough) neither start a turn nor barge in
    min_silence_ms: float = 700.0  # this much silence after speech ends the turn
    pad_ms: float = 200.0  # audio kept before the detected start, so the first syllable is not cut
    max_turn_s: float = 60.0  # a turn this long ends even without a pause

    def frames(self, ms: float) -> int:
        return max(1, int(round(ms / FRAME_MS)))


@dataclass(frozen=True)
class TurnEvent:
    kind: str  # "speech_start" or "turn_end"
    stream_s: float  # position in the stream (seconds of audio fed so far) where it was detected
    audio: np.ndarray | None = None  # turn_end: the utterance, 16 kHz mono float32
    speech_start_s: float = 0.0  # stream position of the utterance's first speech frame (no padding)
    speech_end_s: float | None = None  # turn_end: stream position where its speech ended (no trailing pause)


def to_mono_float(samples: np.ndarray) -> np.ndarray:
    """Float32 mono in [-1, 1] from int or float PCM shaped (samples,) or (samples, channels)."""
    samples = np.asarray(samples)
    if np.issubdtype(samples.dtype, np.integer):
        samples = samples.astype(np.float32) / (float(np.iinfo(samples.dtype).max) + 1.0)
    elif not np.issubdtype(samples.dtype, np.floating):
        raise InputError(f"microphone audio must be integer or float PCM, got dtype {samples.dtype}")
    if samples.ndim == 2:
        # Gradio hands (samples, channels); a (1, n) or (2, n) planar block is recognised by its short axis
        samples = samples.mean(axis=1) if samples.shape[0] >= samples.shape[1] else samples.mean(axis=0)
    elif samples.ndim != 1:
        raise InputError(f"microphone audio must be 1-D or (samples, channels), got shape {samples.shape}")
    return samples.astype(np.float32, copy=False)


class StreamResampler:
    """Chunk-by-chunk resampling to 16 kHz with FFmpeg's swresample, which keeps its filter state
    between chunks (per-chunk interpolation would click at every chunk boundary)."""

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._rate_hz: int | None = None

    def __call__(self, samples: np.ndarray, sample_rate_hz: int) -> np.ndarray:
        if sample_rate_hz <= 0:
            raise InputError(f"microphone sample rate must be positive, got {sample_rate_hz}")
        if sample_rate_hz == VAD_SAMPLE_RATE_HZ:
            return samples
        if sample_rate_hz != self._rate_hz:
            self._resampler = av.AudioResampler(format="fltp", layout="mono", rate=VAD_SAMPLE_RATE_HZ)
            self._rate_hz = sample_rate_hz
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="fltp", layout="mono")
        frame.sample_rate = sample_rate_hz
        out = [f.to_ndarray()[0] for f in self._resampler.resample(frame)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


class EndOfTurnDetector:
    """Streaming end-of-turn detection: `feed()` microphone chunks, get `TurnEvent`s back."""

    def __init__(self, options: VADOptions | None = None, vad: SileroVAD | None = None) -> None:
        self.options = options or VADOptions()
        self.vad = vad or SileroVAD()
        self._resample = StreamResampler()
        self.reset()

    def reset(self) -> None:
        self.vad.reset()
        self._resample = StreamResampler()
        self._pending = np.zeros(0, np.float32)  # resampled samples not yet a whole frame
        self._frames_seen = 0
        self._preroll: deque[np.ndarray] = deque(maxlen=self.options.frames(self.options.pad_ms))
        self._utterance: list[np.ndarray] = []
        self._speech_start_frame = 0  # stream frame index of the utterance's first speech frame
        self._in_speech = False  # inside a (possible) utterance
        self._started = False  # the utterance passed min_speech_ms: speech_start was reported
        self._speech_frames = 0
        self._silent_frames = 0

    @property
    def speaking(self) -> bool:
        """True while a confirmed utterance is in progress."""
        return self._started

    def feed(self, samples: np.ndarray, sample_rate_hz: int) -> list[TurnEvent]:
        audio = self._resample(to_mono_float(samples), int(sample_rate_hz))
        if self._pending.size:
            audio = np.concatenate([self._pending, audio])
        whole = (audio.size // FRAME_SAMPLES) * FRAME_SAMPLES
        self._pending = audio[whole:].copy()
        events: list[TurnEvent] = []
        for start in range(0, whole, FRAME_SAMPLES):
            event = self._step(audio[start:start + FRAME_SAMPLES])
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[TurnEvent]:
        """End of the microphone stream: a confirmed utterance in progress ends its turn now."""
        if not self._started:
            self.reset()
            return []
        event = self._end_turn()
        self.reset()
        return [event]

    def _stream_s(self) -> float:
        return self._frame_s(self._frames_seen)

    @staticmethod
    def _frame_s(frame_index: int) -> float:
        return frame_index * FRAME_SAMPLES / VAD_SAMPLE_RATE_HZ

    def _step(self, frame: np.ndarray) -> TurnEvent | None:
        opts = self.options
        probability = self.vad.probability(frame)
        self._frames_seen += 1
        if not self._in_speech:
            if probability >= opts.threshold:
                self._in_speech = True
                self._speech_start_frame = self._frames_seen - 1
                self._utterance = [*self._preroll, frame]
                self._speech_frames, self._silent_frames = 1, 0
                self._preroll.clear()
            else:
                self._preroll.append(frame)
            return None
        self._utterance.append(frame)
        if probability < opts.release_threshold:
            self._silent_frames += 1
        else:
            self._silent_frames = 0
            if probability >= opts.threshold:
                self._speech_frames += 1
        if not self._started and self._speech_frames >= opts.frames(opts.min_speech_ms):
            self._started = True
            return TurnEvent("speech_start", self._stream_s(), speech_start_s=self._frame_s(self._speech_start_frame))
        if self._silent_frames >= opts.frames(opts.min_silence_ms):
            if self._started:
                return self._end_turn()
            self._drop_utterance()  # a blip that never reached min_speech_ms
        elif self._started and len(self._utterance) * FRAME_MS >= opts.max_turn_s * 1000.0:
            return self._end_turn()
        return None

    def _end_turn(self) -> TurnEvent:
        # keep pad_ms of the trailing silence: enough to finish the last word, not the whole pause
        trailing = max(0, self._silent_frames - self.options.frames(self.options.pad_ms))
        frames = self._utterance[:len(self._utterance) - trailing] if trailing else self._utterance
        audio = np.concatenate(frames) if frames else np.zeros(0, np.float32)
        speech_end_s = self._frame_s(self._frames_seen - self._silent_frames)
        speech_start_s = self._frame_s(self._speech_start_frame)
        self._drop_utterance()
        return TurnEvent("turn_end", self._stream_s(), audio, speech_start_s, speech_end_s)

    def _drop_utterance(self) -> None:
        self._utterance = []
        self._in_speech = self._started = False
        self._speech_frames = self._silent_frames = 0
