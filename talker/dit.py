"""The Token2Wav DiT: a flow-matching transformer that predicts the velocity of a mel spectrogram
conditioned on codec tokens, a voice (ECAPA embedding of its reference mel plus its `cond` vector)
and the flow time.

Attention is block-local (blocks of `block_size` mel frames): a frame sees its own block, and in the
config's look-backward / look-ahead layers one block before / after. That locality is what makes
chunked (streaming) synthesis possible. Parameter names follow `token2wav.code2wav_dit_model.*`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from omni.config import DiTConfig
from omni.layers import rotate_half
from omni.rope import inverse_frequencies
from omni.talker.speaker_encoder import SpeakerEncoder

TIME_FREQUENCIES = 256
TIME_SCALE = 1000.0


class AdaLayerNormZero(nn.Module):
    """LayerNorm modulated by the time embedding: shift/scale/gate for attention and MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim * 6)

    def forward(self, hidden: torch.Tensor, time: torch.Tensor):
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = self.linear(F.silu(time)).chunk(6, dim=1)
        normed = F.layer_norm(hidden, hidden.shape[-1:], eps=1e-6) * (1 + scale_attn[:, None]) + shift_attn[:, None]
        return normed, gate_attn, shift_mlp, scale_mlp, gate_mlp


class AdaLayerNormZeroFinal(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim * 2)

    def forward(self, hidden: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(F.silu(time)).chunk(2, dim=1)
        return F.layer_norm(hidden, hidden.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        # indices 0 and 3 hold the weights (1 is the GELU, 2 a dropout in training)
        self.ff = nn.ModuleList([nn.Linear(dim, dim * mult), nn.GELU(approximate="tanh"), nn.Identity(),
                                 nn.Linear(dim * mult, dim)])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.ff[3](self.ff[1](self.ff[0](hidden)))


class BlockAttention(nn.Module):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.heads = config.num_heads
        self.head_dim = config.head_dim
        inner = config.num_heads * config.head_dim
        self.to_q = nn.Linear(config.hidden_size, inner)
        self.to_k = nn.Linear(config.hidden_size, inner)
        self.to_v = nn.Linear(config.hidden_size, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, config.hidden_size)])

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                past: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Returns the output and this call's (rotated) keys and values; `past` keys/values (of the
        block before the window, rotated at their own positions) are attended to first."""
        batch, frames, _ = hidden.shape
        shape = (batch, frames, self.heads, self.head_dim)
        q = self.to_q(hidden).view(shape).transpose(1, 2)
        k = self.to_k(hidden).view(shape).transpose(1, 2)
        v = self.to_v(hidden).view(shape).transpose(1, 2)
        # The checkpoint was trained with rotary positions on the first head only, in the interleaved
        # (x0, x1), (x2, x3) pair layout: move that head to the half-split layout and rotate it.
        q = torch.cat([_rotate_first_head(q[:, :1], cos, sin), q[:, 1:]], dim=1)
        k = torch.cat([_rotate_first_head(k[:, :1], cos, sin), k[:, 1:]], dim=1)
        keys, values = (torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)) if past is not None else (k, v)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.to_out[0](out.transpose(1, 2).reshape(batch, frames, self.heads * self.head_dim)), k, v


def _rotate_first_head(head: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    head = torch.cat([head[..., 0::2], head[..., 1::2]], dim=-1)
    return head * cos + rotate_half(head) * sin


class DiTBlock(nn.Module):
    def __init__(self, config: DiTConfig, looks_back: bool, looks_ahead: bool) -> None:
        super().__init__()
        self.looks_back = looks_back
        self.looks_ahead = looks_ahead
        self.attn_norm = AdaLayerNormZero(config.hidden_size)
        self.attn = BlockAttention(config)
        self.ff = FeedForward(config.hidden_size, config.ff_mult)

    def forward(self, hidden, time, cos, sin, mask, past=None):
        normed, gate_attn, shift_mlp, scale_mlp, gate_mlp = self.attn_norm(hidden, time)
        attended, keys, values = self.attn(normed, cos, sin, mask, past)
        hidden = hidden + gate_attn[:, None] * attended
        normed = F.layer_norm(hidden, hidden.shape[-1:], eps=1e-6) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return hidden + gate_mlp[:, None] * self.ff(normed), keys, values


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.time_mlp = nn.ModuleList([nn.Linear(TIME_FREQUENCIES, dim), nn.SiLU(), nn.Linear(dim, dim)])

    def forward(self, time: torch.Tensor) -> torch.Tensor:
        """time (batch,) in [0, 1] -> (batch, dim)."""
        half = TIME_FREQUENCIES // 2
        rates = torch.exp(torch.arange(half, device=time.device).float() * -(math.log(10000) / (half - 1)))
        angles = TIME_SCALE * time[:, None] * rates[None]
        hidden = torch.cat([angles.sin(), angles.cos()], dim=-1).to(time.dtype)
        return self.time_mlp[2](self.time_mlp[1](self.time_mlp[0](hidden)))


class CodecEmbedding(nn.Module):
    def __init__(self, num_embeds: int, dim: int, repeats: int) -> None:
        super().__init__()
        self.repeats = repeats
        self.codec_embed = nn.Embedding(num_embeds + 1, dim)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (batch, n) -> (batch, n * repeats, dim): each code covers `repeats` mel frames."""
        return torch.repeat_interleave(self.codec_embed(codes), self.repeats, dim=1)


class InputEmbedding(nn.Module):
    """proj(concat(noisy mel, ECAPA(reference mel), code embedding, voice cond)). Only the mel part
    changes along the ODE, so the rest is projected once per synthesis (`condition`)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.mel_dim = config.mel_dim
        self.proj = nn.Linear(config.mel_dim + config.enc_dim + config.enc_emb_dim + config.emb_dim, config.hidden_size)
        self.spk_encoder = SpeakerEncoder(config)

    def condition(self, speaker: torch.Tensor, code_embeds: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """speaker (batch, enc_dim), code_embeds (batch, frames, emb_dim), cond (batch, enc_emb_dim)
        -> the constant part of the projection (batch, frames, hidden), bias included."""
        frames = code_embeds.shape[1]
        rest = torch.cat([speaker[:, None].expand(-1, frames, -1), code_embeds, cond[:, None].expand(-1, frames, -1)], -1)
        return F.linear(rest, self.proj.weight[:, self.mel_dim :], self.proj.bias)

    def forward(self, noisy_mel: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(condition, noisy_mel, self.proj.weight[:, : self.mel_dim].t().expand(noisy_mel.shape[0], -1, -1))


@dataclass
class DiTCondition:
    """What stays fixed while the ODE integrates one window: the projected conditioning of the
    conditional and unconditional (guidance) branches, stacked on the batch axis."""

    projected: torch.Tensor  # (2 * batch, frames, hidden)


class DiT(nn.Module):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        self.time_embed = TimestepEmbedding(config.hidden_size)
        self.text_embed = CodecEmbedding(config.num_embeds, config.emb_dim, config.repeats)
        self.input_embed = InputEmbedding(config)
        self.transformer_blocks = nn.ModuleList(
            DiTBlock(config, looks_back=i in config.look_backward_layers, looks_ahead=i in config.look_ahead_layers)
            for i in range(config.num_layers)
        )
        self.norm_out = AdaLayerNormZeroFinal(config.hidden_size)
        self.proj_out = nn.Linear(config.hidden_size, config.mel_dim)
        self.register_buffer("inv_freq", inverse_frequencies(config.head_dim, config.rope_theta), persistent=False)

    def reset_buffers(self) -> None:
        self.inv_freq = inverse_frequencies(self.config.head_dim, self.config.rope_theta, device=self.proj_out.weight.device)

    def speaker_embedding(self, reference_mel: torch.Tensor) -> torch.Tensor:
        """ECAPA embedding of a voice's reference mel (batch, frames, mel_dim) -> (batch, enc_dim)."""
        return self.input_embed.spk_encoder(reference_mel)

    def condition(self, codes: torch.Tensor, cond: torch.Tensor, speaker: torch.Tensor, null_speaker: torch.Tensor
                  ) -> DiTCondition:
        """Conditioning of a window of codes (batch, n): conditional branch first, then the guidance
        branch (code 0 everywhere, zero voice; `null_speaker` is the ECAPA embedding of a zero mel)."""
        code_embeds = self.text_embed(codes)
        null_code_embeds = self.text_embed(torch.zeros_like(codes))
        projected = torch.cat([
            self.input_embed.condition(speaker, code_embeds, cond),
            self.input_embed.condition(null_speaker, null_code_embeds, torch.zeros_like(cond)),
        ])
        return DiTCondition(projected)

    def attention_masks(self, frames: int, device: torch.device, past_frames: int = 0
                        ) -> dict[tuple[bool, bool], torch.Tensor | None]:
        """Boolean (frames, keys) masks per (looks_back, looks_ahead) kind of layer. With
        `past_frames` (one block of remembered keys before the window), look-back layers see them
        as the block before the window's first."""
        block = self.config.block_size
        query_block = torch.arange(frames, device=device) // block
        masks = {}
        for layer in self.transformer_blocks:
            kind = (layer.looks_back, layer.looks_ahead)
            if kind in masks:
                continue
            key_block = query_block
            if layer.looks_back and past_frames:
                key_block = torch.div(torch.arange(-past_frames, frames, device=device), block, rounding_mode="floor")
            offset = key_block[None, :] - query_block[:, None]
            mask = (offset >= -int(layer.looks_back)) & (offset <= int(layer.looks_ahead))
            masks[kind] = None if bool(mask.all()) else mask
        return masks

    def rotary(self, frames: int, device: torch.device, dtype: torch.dtype, start: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor]:
        angles = torch.arange(start, start + frames, device=device).float()[:, None] * self.inv_freq[None]
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def velocity(
        self,
        noisy_mel: torch.Tensor,
        time: torch.Tensor,
        condition: DiTCondition,
        rotary: tuple[torch.Tensor, torch.Tensor],
        masks: dict[tuple[bool, bool], torch.Tensor | None],
        past: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
        remember: tuple[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] | None = None,
    ) -> torch.Tensor:
        """The predicted flow (2 * batch, frames, mel_dim) for both guidance branches, at flow time `time` (0-d).

        past: per look-back layer, keys/values of the block before the window (streaming).
        remember: (first frame, store): put each look-back layer's keys/values of the block that
        starts at that frame into store, for the next window."""
        branches = condition.projected.shape[0]
        hidden = self.input_embed(torch.cat([noisy_mel, noisy_mel]) if noisy_mel.shape[0] != branches else noisy_mel,
                                  condition.projected)
        time_embeds = self.time_embed(time.reshape(1).expand(branches))
        cos, sin = rotary
        for index, layer in enumerate(self.transformer_blocks):
            layer_past = past.get(index) if past and layer.looks_back else None
            hidden, keys, values = layer(hidden, time_embeds, cos, sin, masks[(layer.looks_back, layer.looks_ahead)],
                                         layer_past)
            if remember is not None and layer.looks_back:
                first, store = remember
                block = slice(first, first + self.config.block_size)
                store[index] = (keys[:, :, block], values[:, :, block])
        return self.proj_out(self.norm_out(hidden, time_embeds))
