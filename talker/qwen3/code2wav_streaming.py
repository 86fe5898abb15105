"""Exact streaming Code2Wav: codec frames in as the Talker writes them, final waveform samples out.

Every stage of Code2Wav is causal (omni.talker.qwen3.code2wav), so nothing is re-decoded or
cross-faded: a stream carries, between steps, what each stage reads from the past,
- each transformer layer's rotated keys and values of the last `sliding_window - 1` frames,
- each causal convolution's last (kernel - 1) * dilation input samples (zeros before the start, as the
  whole pass pads), and
- each overlapping transposed convolution's last input sample,
and a step runs only the new frames through the network. After k frames the decoder has made exactly
the first k * 1920 - 555 samples of the whole decode, and those are all final: `step` returns them as
soon as they exist (1365 samples, 56.9 ms at 24 kHz, after the first frame; 1920 per frame after that).
The whole decode of T frames ends at T * 1920 - 555, so `finish` has no tail to add; it closes the
stream.

The concatenated steps equal the whole pass up to fp32 rounding, not bit for bit: the same operations
run on shorter tensors, and the matmul / convolution kernels sum in another order for another length
(a one-row projection vs a many-row one; torch picks oneDNN or im2col by tensor size). Measured max
abs difference: <= 1.5e-6 at the test widths (waveform peak ~0.5, tests/talker/qwen3/
test_qwen3_code2wav.py), 1.2e-5 to 1.3e-5 at the published widths with a random init (pre-clamp peak
~1.9, activations up to ~12 inside the decoder).

A one-frame step reads every weight once (~0.9 GB at the published widths in fp32) for 80 ms of audio,
so its cost is mostly fixed: steps of several frames cost little more than one. On a 2-vCPU machine
shared with other processes, one torch thread ran a one-frame step in ~0.2-0.4 s where two threads
took 0.3-2.8 s (idle workers waking per operation; see omni.talker.streaming); the thread count is the
caller's choice.

transformers' `Qwen3OmniMoeCode2Wav.chunked_decode` is not this: it re-decodes each chunk with 25 frames
of left context (the transformer reads up to 8 * 71 frames back) and drops 555 samples at every chunk
border, so its output is shorter than the whole decode and differs near and after the borders.
"""

from __future__ import annotations

import torch

from omni.errors import InputError
from omni.talker.qwen3.code2wav import Code2Wav, KeyValueWindow


class Code2WavStream:
    """One utterance's decoding state. `step(codes)` takes new frames (quantizers, n) and returns the
    samples (float tensor, 1-D) that became final; `finish()` closes the stream; `reset()` starts a new
    utterance. Create it with `start(code2wav)`."""

    def __init__(self, code2wav: Code2Wav) -> None:
        self.code2wav = code2wav
        self.reset()

    def reset(self) -> None:
        code2wav = self.code2wav
        weight = code2wav.code_embedding.weight
        config = code2wav.config
        empty = torch.zeros(1, config.num_kv_heads, 0, config.head_dim, device=weight.device, dtype=weight.dtype)
        self.frames_in = 0
        self.samples_out = 0
        self.finished = False
        self.caches = [KeyValueWindow(empty, empty) for _ in code2wav.pre_transformer.layers]
        self.contexts = [leaf.initial_context(1, weight.device, weight.dtype) for leaf in code2wav.context_leaves]

    @torch.inference_mode()
    def step(self, new_codes: torch.Tensor) -> torch.Tensor:
        if self.finished:
            raise InputError("this Code2Wav stream has finished; reset() it for a new utterance")
        code2wav = self.code2wav
        if new_codes.dim() != 2:
            raise InputError(f"new_codes must be (quantizers, frames), got shape {tuple(new_codes.shape)}")
        codes = new_codes.to(code2wav.code_embedding.weight.device).unsqueeze(0)
        code2wav.check_codes(codes)
        frames = codes.shape[-1]
        if frames == 0:
            return torch.zeros(0, device=codes.device, dtype=code2wav.code_embedding.weight.dtype)
        hidden = code2wav.pre_transformer(code2wav.embed(codes), self.frames_in, self.caches)
        samples = code2wav.decode_hidden(hidden, self.contexts)[0]
        self.frames_in += frames
        self.samples_out += samples.shape[0]
        return samples

    def finish(self) -> torch.Tensor:
        """The codes are complete. The whole decode ends where the steps' samples end (see the module
        docstring), so this returns no samples; it only marks the stream finished."""
        self.finished = True
        weight = self.code2wav.code_embedding.weight
        return torch.zeros(0, device=weight.device, dtype=weight.dtype)

    @property
    def first_frame_samples(self) -> int:
        """Samples `step` returns for the first frame (the first-frame latency in samples of audio)."""
        return self.code2wav.samples_for_frames(1)


def start(code2wav: Code2Wav) -> Code2WavStream:
    return Code2WavStream(code2wav)
