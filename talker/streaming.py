"""Streaming Token2Wav: codec tokens in as the Talker writes them, waveform chunks out.

Each chunk's mel comes from running the DiT's flow over a window: `left_context_frames` already-final
frames before the chunk, the chunk, and `look_ahead_frames` after it. The DiT attends at most one
block (24 frames) back or ahead per layer, so a window of a few blocks reproduces the whole-utterance
mel closely; windows start on block boundaries so their blocks are the utterance's blocks, and every
frame starts from the same initial noise as in the whole-utterance path (`NoiseSource`). The vocoder
then runs over the chunk's mel with `vocoder_context_frames` on each side (the right side from the
window's provisional look-ahead mel), and consecutive chunks are joined with a short linear
crossfade over `crossfade_samples`, computed from that same look-ahead, so the join has no click and
costs no extra latency.

Qwen's own streaming code2wav (their vLLM fork) uses 72-frame chunks, 48 frames of past context and
24 of look-ahead. Here the first chunk is one block (audio starts after 24 codes), the second 72
frames, later ones 192; and instead of re-integrating the past context in every window, the window
starts at its chunk and reads the block before it from the keys/values the previous window computed
(`remember_past`): each frame is integrated once plus its look-ahead, so streaming costs little more
than one whole-utterance pass (bench/token2wav.py), at the same quality (tests/talker/test_streaming.py).

What a window costs beyond its frames. Every window repeats the same operations: 36 velocity
evaluations of the DiT, each a few dozen operations, and a vocoder pass of some 500 more; each one
large enough to be split over torch's threads is a parallel region in which the threads meet. A
short window has as many regions as a long one, so its per-frame cost is mostly this fixed part.
Two things make that part machine- and process-dependent:
- GNU OpenMP (PyTorch's CPU threads) keeps idle worker threads spinning between regions only while
  the process has no more OpenMP threads than cores. A served model is loaded in the main thread
  and run by the engine's thread (the encoders in a third), each with its own team, so on two cores
  the workers sleep after every region and each region pays a wake-up. Measured on a 2-vCPU AMD
  EPYC (KVM guest), the same DiT / vocoder window (ms, 2 threads vs 1 thread):
      window frames (DiT / vocoder)    48 / 32    96 / 88    216 / 208   500 (whole pass)
      engine's thread, 2 threads       267 / 150  388 / 223  597 / 392   1336 / 612
      engine's thread, 1 thread        143 / 88   280 / 174  657 / 389   1870 / 761
      main thread alone, 2 threads      95 / 67   201 / 147  472 / 216   1118 / 500
      main thread alone, 1 thread      143 / 86   245 / 160  633 / 331   1873 / 719
  (bench/token2wav.py --engine-thread compares the paths in the engine's situation.)
- Kernel choice and caches: the whole pass's attention is quadratic in its frames and its tensors
  outgrow the caches sooner, which favours the windows on this machine (AVX-512, 2 MB of L2 per
  core) more than on one with smaller caches.
So the fixed part is kept small everywhere rather than tuned to one machine: the DiT prepares all
that depends only on the flow time once per window and stacks its q/k/v projections
(omni.talker.dit.DiTSteps), about half the operations per evaluation; BigVGAN runs a stage's AMP
blocks side by side while they are small and filters without padded copies (omni.talker.bigvgan),
about half its operations; and windows shorter than `one_thread_below_frames` run on one thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from omni.errors import InputError
from omni.talker.flow import FlowOptions
from omni.talker.token2wav import NoiseSource, Token2Wav, VoiceCondition


@dataclass(frozen=True)
class ChunkSchedule:
    first_chunk_frames: int = 24
    chunk_frames: int = 72  # the second chunk
    # From the third chunk on: once audio is playing, a longer chunk halves the per-chunk look-ahead
    # and vocoder-context cost; the second chunk stays short because it must be ready before the
    # 0.24 s first chunk has finished playing.
    later_chunk_frames: int = 192
    left_context_frames: int = 48
    look_ahead_frames: int = 24
    vocoder_context_frames: int = 8
    crossfade_samples: int = 240  # 10 ms at 24 kHz
    # True: instead of re-integrating `left_context_frames` in every window, remember the keys and
    # values the previous window computed for the block before this one (the only past the DiT's
    # look-back layers read) at every velocity evaluation. Each frame is then integrated once
    # (plus the look-ahead), which is what keeps streaming close to the cost of one whole pass.
    remember_past: bool = True
    # Windows of fewer DiT frames than this (the first two: 48 and 96 frames) run on one torch
    # thread. Under the engine (see the module docstring) one thread is faster for them (first
    # window 267 + 150 ms -> 143 + 88 ms, second 388 + 223 -> 280 + 174); a process that runs the
    # codec in its only torch thread loses some (95 + 67 -> 143 + 86 ms, 201 + 147 -> 245 + 160),
    # still a shorter first chunk than before this schedule had the knob (about 0.23 s). Longer
    # windows gain from a second thread everywhere. 0: every window uses torch's threads.
    # python bench/token2wav.py --preset small --repeats 3 --engine-thread --one-thread-below-frames
    # 0 / 64 / 128: streaming_rtf_overhead 1.261 / 1.158 / 1.183, first_chunk_s 0.315 / 0.200 / 0.209;
    # without --engine-thread 0.943 / 0.975 / 0.923, first_chunk_s 0.215 / 0.227 / 0.214 (noise
    # hides the cost there); python bench/ttfa.py --preset small --repeats 3 with 0 / 64 / 128:
    # streaming_overhead 0.955 / 0.911 / 0.93-0.94, omni_ttfa_s 0.914 / 0.809 / 0.85 (2-vCPU AMD EPYC).
    one_thread_below_frames: int = 128

    def check(self, block_size: int, samples_per_frame: int) -> ChunkSchedule:
        for name in ("first_chunk_frames", "chunk_frames", "later_chunk_frames", "left_context_frames", "look_ahead_frames"):
            value = getattr(self, name)
            if value < 0 or value % block_size or (value == 0 and name.endswith("chunk_frames")):
                raise InputError(f"{name}={value} must be a positive multiple of the DiT block size ({block_size} mel frames)")
        if self.vocoder_context_frames < 0 or self.vocoder_context_frames > self.look_ahead_frames:
            raise InputError(f"vocoder_context_frames={self.vocoder_context_frames} must lie in [0, look_ahead_frames]")
        if self.one_thread_below_frames < 0:
            raise InputError(f"one_thread_below_frames={self.one_thread_below_frames} must be >= 0 (0: every window "
                             "uses torch's threads)")
        if self.crossfade_samples < 0 or self.crossfade_samples > self.vocoder_context_frames * samples_per_frame:
            raise InputError(f"crossfade_samples={self.crossfade_samples} must lie in [0, vocoder context "
                             f"({self.vocoder_context_frames * samples_per_frame} samples)]")
        return self

    def codes_for_first_chunk(self, frames_per_code: int) -> int:
        return -(-(self.first_chunk_frames + self.look_ahead_frames) // frames_per_code)


@dataclass
class CodecStreamState:
    codes: list[int] = field(default_factory=list)
    mel_tail: torch.Tensor | None = None  # (1, <= vocoder_context_frames, mel_dim): the last decided mel frames
    final_frames: int = 0  # mel frames decided (and vocoded) so far
    crossfade_tail: torch.Tensor | None = None  # provisional samples that overlap the next chunk's start
    past: list | None = None  # per velocity evaluation: look-back keys/values of the block before the next window
    chunks_out: int = 0
    finished: bool = False


class StreamingToken2Wav:
    """One utterance: `push(codes)` and `finish()` return the waveform chunks (float32 tensors) that
    became ready. `reset()` starts a new utterance with fresh state."""

    def __init__(self, token2wav: Token2Wav, voice: VoiceCondition, noise: NoiseSource,
                 schedule: ChunkSchedule = ChunkSchedule(), flow: FlowOptions = FlowOptions()) -> None:
        self.token2wav = token2wav
        self.voice = voice
        self.noise = noise
        self.flow = flow
        self.frames_per_code = token2wav.mel_frames_per_code
        self.samples_per_frame = token2wav.samples_per_mel_frame
        self.schedule = schedule.check(token2wav.dit_config.block_size, self.samples_per_frame)
        self.state = CodecStreamState()

    def reset(self) -> None:
        self.state = CodecStreamState()

    @property
    def available_frames(self) -> int:
        return len(self.state.codes) * self.frames_per_code

    def push(self, codes: list[int] | int) -> list[torch.Tensor]:
        state = self.state
        if state.finished:
            raise InputError("this codec stream has finished; reset() it for a new utterance")
        state.codes.extend([codes] if isinstance(codes, int) else codes)
        if len(state.codes) > self.token2wav.max_codes:
            raise InputError(f"{len(state.codes)} codec tokens exceed the DiT's limit of {self.token2wav.max_codes}")
        chunks = []
        while (end := self._next_chunk_end()) + self.schedule.look_ahead_frames <= self.available_frames:
            chunks.append(self._decode_chunk(end, final=False))
        return chunks

    def finish(self) -> list[torch.Tensor]:
        """The codes are complete: decode what is left (ready chunks first, then the remainder)."""
        state = self.state
        if state.finished:
            return []
        chunks = self.push([])
        state.finished = True
        if self.available_frames > state.final_frames:
            chunks.append(self._decode_chunk(self.available_frames, final=True))
        return chunks

    def _next_chunk_end(self) -> int:
        state, schedule = self.state, self.schedule
        sizes = (schedule.first_chunk_frames, schedule.chunk_frames)
        return state.final_frames + (sizes[state.chunks_out] if state.chunks_out < 2 else schedule.later_chunk_frames)

    def _decode_chunk(self, end: int, final: bool) -> torch.Tensor:
        schedule = self.schedule
        start = self.state.final_frames
        window_end = self.available_frames if final else end + schedule.look_ahead_frames
        if schedule.remember_past:
            # The window starts at the chunk: the block before it is present as the keys/values
            # its own window computed (remembered per velocity evaluation), not recomputed.
            window_start = start
        else:
            window_start = max(0, start - schedule.left_context_frames)
        with _threads(1 if window_end - window_start < schedule.one_thread_below_frames else None):
            return self._decode_window(window_start, start, end, window_end, final)

    @torch.inference_mode()
    def _decode_window(self, window_start: int, start: int, end: int, window_end: int, final: bool) -> torch.Tensor:
        state, schedule, t2w = self.state, self.schedule, self.token2wav
        codes = torch.tensor(state.codes[window_start // self.frames_per_code : -(-window_end // self.frames_per_code)],
                             dtype=torch.long, device=t2w.device).view(1, -1)
        noise = self.noise.frames(window_start, window_start + codes.shape[1] * self.frames_per_code)
        block = t2w.dit_config.block_size
        remember_from = end - block - window_start if schedule.remember_past and not final else None
        window_mel, state.past = t2w.mel_window(codes, self.voice, noise, self.flow, start_frame=window_start,
                                                past=state.past if schedule.remember_past else None,
                                                remember_from=remember_from)
        window_mel = window_mel[:, : window_end - window_start]
        chunk_mel = window_mel[:, start - window_start : end - window_start]

        left = state.mel_tail if state.mel_tail is not None else chunk_mel[:, :0]
        right = window_mel[:, end - window_start : end - window_start + schedule.vocoder_context_frames] if not final else chunk_mel[:, :0]
        samples = t2w.vocode(torch.cat([left, chunk_mel, right], dim=1))
        begin = left.shape[1] * self.samples_per_frame
        stop = begin + chunk_mel.shape[1] * self.samples_per_frame
        chunk = samples[begin:stop].clone()
        fade = state.crossfade_tail
        if fade is not None and fade.numel():
            overlap = min(fade.numel(), chunk.numel())
            ramp = torch.linspace(0.0, 1.0, overlap + 2, device=chunk.device)[1:-1]
            chunk[:overlap] = chunk[:overlap] * ramp + fade[:overlap] * (1 - ramp)
        state.crossfade_tail = None if final else samples[stop : stop + schedule.crossfade_samples].clone()

        decided = chunk_mel if state.mel_tail is None else torch.cat([state.mel_tail, chunk_mel], dim=1)
        state.mel_tail = decided[:, max(0, decided.shape[1] - schedule.vocoder_context_frames) :]
        state.final_frames = end
        state.chunks_out += 1
        return chunk


@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Run the block on at most `count` torch threads (None: as set)."""
    before = torch.get_num_threads()
    if count is None or count >= before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
