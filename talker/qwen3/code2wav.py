"""Qwen3-Omni's Code2Wav: the Talker's 16-layer codec codes (12.5 frames/s) -> 24 kHz waveform.

codes (batch, 16 quantizers, frames) -> one embedding per code (each quantizer's codebook at offset
codebook_size * q of one table), averaged over the quantizers -> an 8-layer causal transformer with
sliding-window attention (72 frames) -> ConvNeXt upsampling (x2, x2) -> a causal convolutional decoder
with SnakeBeta activations (x8, x5, x4, x3) -> clamp to [-1, 1]: 1920 samples per frame.

Every stage is causal: decoding the first k frames gives exactly the first k * 1920 - 555 samples of
the whole decode. The 555 are the decoder's transposed convolutions (kernel 2r, stride r): the
reference keeps only outputs that have both overlapping inputs, so each stage holds back r of its
outputs, and 555 = 8*60 + 5*12 + 4*3 + 3 at the waveform rate. A whole pass of T frames is therefore
T * 1920 - 555 samples long; nothing is left over at the end.

Every leaf that needs past samples (causal convolutions, transposed convolutions with overlap) takes
an optional `contexts` list and its `slot` in it: None is the whole pass (zero left padding, as the
reference); a list carries each leaf's left context from one streaming step to the next
(omni.talker.qwen3.code2wav_streaming). The attention takes an optional per-layer key/value cache the
same way. Parameter names follow the checkpoint's `code2wav.*`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from omni.errors import InputError
from omni.layers import GatedMLP, RMSNorm
from omni.qwen3.config import Code2WavConfig
from omni.rope import apply_rotary, inverse_frequencies
from omni.talker.bigvgan import SnakeBeta

# Whole-pass attention runs this many query frames at a time against their window of keys: the same
# sums as one masked (frames x frames) attention, in memory linear in the frames.
QUERY_BLOCK_FRAMES = 256
CONVNEXT_KERNEL = 7
DECODER_KERNEL = 7
RESIDUAL_DILATIONS = (1, 3, 9)


class CausalConv1d(nn.Module):
    """A stride-1 convolution that sees only the present and the past: (kernel - 1) * dilation samples
    of left context, zeros before the first sample (the reference's `CausalConvNet`; with stride 1
    it never pads on the right)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1,
                 groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, groups=groups)
        self.context_samples = (kernel_size - 1) * dilation
        self.slot = -1  # index into a streaming `contexts` list, assigned by Code2Wav

    def initial_context(self, batch: int, device, dtype) -> torch.Tensor:
        return torch.zeros(batch, self.conv.in_channels, self.context_samples, device=device, dtype=dtype)

    def forward(self, hidden: torch.Tensor, contexts: list[torch.Tensor] | None = None) -> torch.Tensor:
        if contexts is None:
            return self.conv(F.pad(hidden, (self.context_samples, 0)))
        extended = torch.cat([contexts[self.slot], hidden], dim=-1)
        # a view: the next step's cat copies it, so no copy here
        contexts[self.slot] = extended[..., extended.shape[-1] - self.context_samples :]
        return self.conv(extended)


class CausalTransposedConv1d(nn.Module):
    """Transposed convolution (kernel K, stride s) whose first and last K - s outputs are dropped (the
    reference's `CausalTransConvNet`): those are the outputs that miss one of their overlapping inputs.
    Hence T inputs give T * s - (K - s) outputs, and output m depends only on inputs up to
    (m + K - s) // s: streaming keeps the last (K - s) / s inputs, and a step with n new inputs gives
    exactly the next n * s outputs.

    It runs as its polyphase equivalent: an ordinary convolution over (K / s) consecutive inputs with
    Cout * s output channels (one per output channel and phase), interleaved into the time axis. The
    same products, summed in another order; torch's own transposed convolution takes a slow path for
    short inputs (a streaming step's few samples), 225 ms for the published first decoder stage's
    5 inputs against ~20 ms as a convolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride=stride)
        self.trim = kernel_size - stride
        if self.trim < 0 or kernel_size % stride:
            raise ValueError(f"kernel {kernel_size} must be a positive multiple of the stride {stride}")
        self.stride = stride
        self.context_inputs = self.trim // stride
        self.slot = -1
        self._polyphase: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._polyphase_of: tuple | None = None

    @property
    def held_back_outputs(self) -> int:
        return self.trim

    def initial_context(self, batch: int, device, dtype) -> torch.Tensor:
        # no inputs yet (not zeros): the reference drops the outputs that the first input only half makes
        return torch.zeros(batch, self.conv.in_channels, 0, device=device, dtype=dtype)

    def _polyphase_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(Cout * s, Cin, K / s) taps, tap j reading input (m + j) for output block m, and the bias per
        (channel, phase). Cached while the weights stay the same tensors (a load or .to() replaces or
        bumps them); rebuilt on every call while gradients are wanted."""
        weight, bias = self.conv.weight, self.conv.bias
        key = (_identity(weight), None if bias is None else _identity(bias))
        if self._polyphase is not None and self._polyphase_of == key and not torch.is_grad_enabled():
            return self._polyphase
        in_channels, out_channels, kernel = weight.shape
        taps = kernel // self.stride
        # kernel index = (taps - 1 - j) * s + phase: the newest input (tap taps - 1) uses the first phase block
        polyphase = weight.view(in_channels, out_channels, taps, self.stride).flip(2).permute(1, 3, 0, 2)
        polyphase = polyphase.reshape(out_channels * self.stride, in_channels, taps)
        phase_bias = None if bias is None else bias.repeat_interleave(self.stride)
        if torch.is_grad_enabled():
            return polyphase, phase_bias
        with torch.inference_mode(False):
            self._polyphase = (polyphase.clone(), None if phase_bias is None else phase_bias.clone())
        self._polyphase_of = key
        return self._polyphase

    def forward(self, hidden: torch.Tensor, contexts: list[torch.Tensor] | None = None) -> torch.Tensor:
        if contexts is not None and self.context_inputs:
            hidden = torch.cat([contexts[self.slot], hidden], dim=-1)
            contexts[self.slot] = hidden[..., max(0, hidden.shape[-1] - self.context_inputs) :]
        batch, _, inputs = hidden.shape
        out_channels = self.conv.out_channels
        blocks = inputs - self.context_inputs
        if blocks <= 0:
            return hidden.new_zeros(batch, out_channels, 0)
        phases = F.conv1d(hidden, *self._polyphase_weights())  # (batch, Cout * s, blocks)
        return phases.view(batch, out_channels, self.stride, blocks).transpose(2, 3).reshape(batch, out_channels, -1)


def _identity(tensor: torch.Tensor) -> tuple[int, int]:
    """Where a tensor's data lives and how often it was modified in place (inference tensors keep no
    count: weights loaded under inference mode count as never modified)."""
    return tensor.data_ptr(), -1 if tensor.is_inference() else tensor._version


class ConvNeXtBlock(nn.Module):
    """Causal depthwise conv, LayerNorm, 4x pointwise MLP with GELU, per-channel gain, residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dwconv = CausalConv1d(channels, channels, CONVNEXT_KERNEL, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pwconv1 = nn.Linear(channels, 4 * channels)
        self.pwconv2 = nn.Linear(4 * channels, channels)
        self.gamma = nn.Parameter(torch.full((channels,), 1e-6))

    def forward(self, hidden: torch.Tensor, contexts: list[torch.Tensor] | None = None) -> torch.Tensor:
        mixed = self.dwconv(hidden, contexts).transpose(1, 2)
        mixed = self.pwconv2(F.gelu(self.pwconv1(self.norm(mixed))))
        return hidden + (self.gamma * mixed).transpose(1, 2)


class UpsampleStage(nn.ModuleList):
    """`upsample.I`: [0] a transposed conv with kernel = stride (no overlap), [1] a ConvNeXt block."""

    def __init__(self, channels: int, factor: int) -> None:
        super().__init__([CausalTransposedConv1d(channels, channels, factor, factor), ConvNeXtBlock(channels)])

    def forward(self, hidden: torch.Tensor, contexts: list[torch.Tensor] | None = None) -> torch.Tensor:
        return self[1](self[0](hidden, contexts), contexts)


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.act1 = SnakeBeta(channels)
        self.conv1 = CausalConv1d(channels, channels, DECODER_KERNEL, dilation=dilation)
        self.act2 = SnakeBeta(channels)
        self.conv2 = CausalConv1d(channels, channels, 1)

    def forward(self, hidden: torch.Tensor, contexts: list[torch.Tensor] | None = None) -> torch.Tensor:
        out = self.conv2(self.act2(self.conv1(self.act1(hidden), contexts)), contexts)
        return out.add_(hidden)


class DecoderBlock(nn.Module):
    """`decoder.I.block`: SnakeBeta, transposed conv (kernel 2r, stride r) halving the channels, and
    three residual units with dilations 1, 3, 9."""

    def __init__(self, in_channels: int, rate: int) -> None:
        super().__init__()
        out_channels = in_channels // 2
        self.block = nn.ModuleList(
            [SnakeBeta(in_channels), CausalTransposedConv1d(in_channels, out_channels, 2 * rate, rate)]
            + [ResidualUnit(out_channels, d) for d in RESIDUAL_DILATIONS]
        )

    def forward(self, hidden: torch.Tensor, contexts: list[torch.Tensor] | None = None) -> torch.Tensor:
        hidden = self.block[1](self.block[0](hidden), contexts)
        for unit in self.block[2:]:
            hidden = unit(hidden, contexts)
        return hidden


class LayerScale(nn.Module):
    def __init__(self, channels: int, initial_scale: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), initial_scale))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.scale * hidden


class KeyValueWindow:
    """One layer's rotated keys and values of the last `sliding_window - 1` frames (all the next frame
    attends to besides itself), (batch, kv_heads, <= window - 1, head_dim) each."""

    __slots__ = ("keys", "values")

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values


def sliding_window_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, query_start: int,
                             key_start: int, window: int, scale: float) -> torch.Tensor:
    """query (batch, heads, q, head_dim) at frames query_start..; keys/values (batch, kv_heads, k,
    head_dim) at frames key_start..; each query attends to the keys at frames (its own - window, its own]."""
    query_frames = torch.arange(query_start, query_start + query.shape[2], device=query.device)[:, None]
    key_frames = torch.arange(key_start, key_start + keys.shape[2], device=query.device)[None, :]
    allowed = (key_frames <= query_frames) & (key_frames > query_frames - window)
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=allowed, scale=scale,
                                          enable_gqa=keys.shape[1] != query.shape[1])


class Attention(nn.Module):
    def __init__(self, config: Code2WavConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_kv_heads
        self.head_dim = config.head_dim
        self.window = config.sliding_window
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start_frame: int,
                cache: KeyValueWindow | None = None) -> torch.Tensor:
        batch, frames, _ = hidden.shape
        query = self.q_proj(hidden).view(batch, frames, self.num_heads, self.head_dim).transpose(1, 2)
        keys = self.k_proj(hidden).view(batch, frames, self.num_kv_heads, self.head_dim).transpose(1, 2)
        values = self.v_proj(hidden).view(batch, frames, self.num_kv_heads, self.head_dim).transpose(1, 2)
        query, keys = apply_rotary(query, keys, cos, sin)
        scale = self.head_dim**-0.5
        if cache is not None:
            keys = torch.cat([cache.keys, keys], dim=2)
            values = torch.cat([cache.values, values], dim=2)
            key_start = start_frame - cache.keys.shape[2]
            attended = sliding_window_attention(query, keys, values, start_frame, key_start, self.window, scale)
            keep = min(self.window - 1, keys.shape[2])
            cache.keys, cache.values = keys[:, :, keys.shape[2] - keep :], values[:, :, values.shape[2] - keep :]
        else:
            # whole pass: query blocks against their window of keys (start_frame is 0 here)
            blocks = []
            for first in range(0, frames, QUERY_BLOCK_FRAMES):
                last = min(frames, first + QUERY_BLOCK_FRAMES)
                key_first = max(0, first - self.window + 1)
                blocks.append(sliding_window_attention(
                    query[:, :, first:last], keys[:, :, key_first:last], values[:, :, key_first:last], first,
                    key_first, self.window, scale))
            attended = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=2)
        return self.o_proj(attended.transpose(1, 2).reshape(batch, frames, -1))


class TransformerLayer(nn.Module):
    def __init__(self, config: Code2WavConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn_layer_scale = LayerScale(config.hidden_size, config.layer_scale_initial_scale)
        self.mlp_layer_scale = LayerScale(config.hidden_size, config.layer_scale_initial_scale)

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start_frame: int,
                cache: KeyValueWindow | None = None) -> torch.Tensor:
        attended = self.self_attn(self.input_layernorm(hidden), cos, sin, start_frame, cache)
        hidden = hidden + self.self_attn_layer_scale(attended)
        return hidden + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(hidden)))


class PreTransformer(nn.Module):
    """`pre_transformer`: causal sliding-window transformer over the frame embeddings (no q/k norm)."""

    def __init__(self, config: Code2WavConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.register_buffer("inv_freq", inverse_frequencies(config.head_dim, config.rope_theta), persistent=False)
        self.config = config

    def reset_buffers(self) -> None:
        """Recompute the rope frequencies (after the module was built on the meta device)."""
        self.inv_freq = inverse_frequencies(self.config.head_dim, self.config.rope_theta, device=self.norm.weight.device)

    def rotary(self, start_frame: int, frames: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(start_frame, start_frame + frames, device=self.inv_freq.device).float()
        angles = positions[None, :, None] * self.inv_freq.float()
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(self, embeddings: torch.Tensor, start_frame: int = 0,
                caches: list[KeyValueWindow] | None = None) -> torch.Tensor:
        cos, sin = self.rotary(start_frame, embeddings.shape[1], embeddings.dtype)
        hidden = embeddings
        for index, layer in enumerate(self.layers):
            hidden = layer(hidden, cos, sin, start_frame, None if caches is None else caches[index])
        return self.norm(hidden)


class Code2Wav(nn.Module):
    def __init__(self, config: Code2WavConfig) -> None:
        super().__init__()
        self.config = config
        self.pre_transformer = PreTransformer(config)
        self.code_embedding = nn.Embedding(config.codebook_size * config.num_quantizers, config.hidden_size)
        self.register_buffer("code_offset", torch.arange(config.num_quantizers).view(1, -1, 1) * config.codebook_size,
                             persistent=False)
        self.upsample = nn.ModuleList(UpsampleStage(config.hidden_size, factor) for factor in config.upsampling_ratios)
        channels = [config.decoder_dim // 2**i for i in range(len(config.upsample_rates) + 1)]
        self.decoder = nn.ModuleList(
            [CausalConv1d(config.hidden_size, config.decoder_dim, DECODER_KERNEL)]
            + [DecoderBlock(channels[i], rate) for i, rate in enumerate(config.upsample_rates)]
            + [SnakeBeta(channels[-1]), CausalConv1d(channels[-1], 1, DECODER_KERNEL)]
        )
        self.context_leaves = [m for m in self.modules() if isinstance(m, (CausalConv1d, CausalTransposedConv1d))]
        for slot, leaf in enumerate(self.context_leaves):
            leaf.slot = slot

    def reset_buffers(self) -> None:
        """Recompute the quantizers' row offsets (after the module was built on the meta device)."""
        config = self.config
        self.code_offset = torch.arange(config.num_quantizers, device=self.code_embedding.weight.device).view(
            1, -1, 1) * config.codebook_size

    @property
    def samples_per_frame(self) -> int:
        return self.config.samples_per_frame

    @property
    def held_back_samples(self) -> int:
        """Samples at the end of a decode that wait for the next frame (555 for the published rates)."""
        held, rate_after = 0, 1
        for block in reversed(self.decoder[1:-2]):
            held += block.block[1].held_back_outputs * rate_after
            rate_after *= block.block[1].conv.stride[0]
        for stage in reversed(self.upsample):
            held += stage[0].held_back_outputs * rate_after
            rate_after *= stage[0].conv.stride[0]
        return held

    def samples_for_frames(self, frames: int) -> int:
        """Length of the decode of `frames` frames (also: how many of its samples are final)."""
        return max(0, frames * self.samples_per_frame - self.held_back_samples)

    def check_codes(self, codes: torch.Tensor) -> None:
        config = self.config
        if codes.dim() != 3 or codes.shape[1] != config.num_quantizers:
            raise InputError(f"codes must be (batch, {config.num_quantizers} quantizers, frames), "
                             f"got {tuple(codes.shape)}")
        if codes.is_floating_point() or codes.is_complex():
            raise InputError(f"codes must be an integer tensor, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= config.codebook_size):
            raise InputError(f"codes must lie in [0, {config.codebook_size}) (the codebook size), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (batch, quantizers, frames) -> (batch, frames, hidden): the quantizers' mean embedding."""
        return self.code_embedding(codes + self.code_offset).mean(1)

    def decode_hidden(self, hidden: torch.Tensor, contexts: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Transformer output (batch, frames, hidden) -> waveform (batch, samples) in [-1, 1]."""
        hidden = hidden.transpose(1, 2)
        for stage in self.upsample:
            hidden = stage(hidden, contexts)
        hidden = self.decoder[0](hidden, contexts)
        for block in self.decoder[1:-2]:
            hidden = block(hidden, contexts)
        waveform = self.decoder[-1](self.decoder[-2](hidden), contexts)
        return waveform.clamp_(-1.0, 1.0)[:, 0]

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (batch, quantizers, frames) -> waveform (batch, frames * 1920 - 555) in [-1, 1]."""
        self.check_codes(codes)
        if codes.shape[-1] == 0:
            return torch.zeros(codes.shape[0], 0, device=codes.device, dtype=self.code_embedding.weight.dtype)
        return self.decode_hidden(self.pre_transformer(self.embed(codes)))
