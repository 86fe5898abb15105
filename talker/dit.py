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
from omni.rope import inverse_frequencies
from omni.talker.speaker_encoder import SpeakerEncoder

TIME_FREQUENCIES = 256
TIME_SCALE = 1000.0


class AdaLayerNormZero(nn.Module):
    """LayerNorm modulated by the time embedding: shift/scale/gate for attention and MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim * 6)

    def modulation(self, time: torch.Tensor) -> torch.Tensor:
        """time embeddings (evaluations, dim) -> (evaluations, 6, dim): shift, 1 + scale and gate for
        the attention, then for the MLP (1 + scale, so that it is the layer norm's weight)."""
        modulation = self.linear(F.silu(time)).unflatten(1, (6, -1))
        modulation[:, 1::3] += 1
        return modulation


class AdaLayerNormZeroFinal(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim * 2)

    def modulation(self, time: torch.Tensor) -> torch.Tensor:
        """time embeddings (evaluations, dim) -> (evaluations, 2, dim): 1 + scale, shift."""
        modulation = self.linear(F.silu(time)).unflatten(1, (2, -1))
        modulation[:, 0] += 1
        return modulation


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

    def stacked_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The q, k and v projections as one (weight, bias): one matrix product instead of three."""
        return (torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight]),
                torch.cat([self.to_q.bias, self.to_k.bias, self.to_v.bias]))

    def forward(self, hidden: torch.Tensor, projection: tuple[torch.Tensor, torch.Tensor], rotation: torch.Tensor,
                mask: torch.Tensor | None, past: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Returns the output and this call's (rotated) keys and values, (batch, heads, frames,
        head_dim); `past` keys/values (of the block before the window, rotated at their own
        positions) are attended to first."""
        batch, frames, _ = hidden.shape
        qkv = F.linear(hidden, *projection).view(batch, frames, 3, self.heads, self.head_dim)
        # The checkpoint was trained with rotary positions on the first head only, in the interleaved
        # (x0, x1), (x2, x3) pair layout: rotate those pairs of q and k in place as complex numbers.
        first_heads = torch.view_as_complex(qkv[:, :, :2, 0].unflatten(-1, (-1, 2)))
        first_heads.mul_(rotation[:, None])
        q, k, v = (part.transpose(1, 2) for part in qkv.unbind(2))
        keys, values = (torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)) if past is not None else (k, v)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.to_out[0](out.transpose(1, 2).reshape(batch, frames, self.heads * self.head_dim)), k, v


class DiTBlock(nn.Module):
    def __init__(self, config: DiTConfig, looks_back: bool, looks_ahead: bool) -> None:
        super().__init__()
        self.looks_back = looks_back
        self.looks_ahead = looks_ahead
        self.attn_norm = AdaLayerNormZero(config.hidden_size)
        self.attn = BlockAttention(config)
        self.ff = FeedForward(config.hidden_size, config.ff_mult)

    def forward(self, hidden, modulation, projection, rotation, mask, past=None):
        """modulation (6, hidden): this evaluation's row of `AdaLayerNormZero.modulation`."""
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = modulation.unbind(0)
        width = hidden.shape[-1:]
        normed = F.layer_norm(hidden, width, scale_attn, shift_attn, eps=1e-6)
        attended, keys, values = self.attn(normed, projection, rotation, mask, past)
        hidden = torch.addcmul(hidden, attended, gate_attn)
        normed = F.layer_norm(hidden, width, scale_mlp, shift_mlp, eps=1e-6)
        return torch.addcmul(hidden, self.ff(normed), gate_mlp), keys, values


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


@dataclass
class DiTSteps:
    """What the DiT needs at each velocity evaluation of one integration that depends on neither
    the frames nor the codes, prepared for all evaluations at once: the time embedding's layer-norm
    modulations (per evaluation some 30 operations on a few hundred numbers, which in a short
    streaming window cost about as much as the frames themselves) and the stacked q/k/v weights."""

    modulation: torch.Tensor  # (evaluations, layers, 6, hidden): see AdaLayerNormZero.modulation
    final_modulation: torch.Tensor  # (evaluations, 2, hidden): see AdaLayerNormZeroFinal.modulation
    projections: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: BlockAttention.stacked_projection


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

    def attention_masks(self, frames: int, device: torch.device, past_frames: int = 0, dtype: torch.dtype = torch.float32
                        ) -> dict[tuple[bool, bool], torch.Tensor | None]:
        """Additive (frames, keys) masks (0 where a frame may attend, -inf elsewhere) per
        (looks_back, looks_ahead) kind of layer: what attention makes of a boolean mask at every
        call, made once per window. With `past_frames` (one block of remembered keys before the
        window), look-back layers see them as the block before the window's first."""
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
            masks[kind] = None if bool(mask.all()) else torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(~mask, -torch.inf)
        return masks

    def steps(self, times: torch.Tensor) -> DiTSteps:
        """Prepare the evaluations at flow times `times` (evaluations,)."""
        time_embeds = self.time_embed(times)
        return DiTSteps(
            modulation=torch.stack([layer.attn_norm.modulation(time_embeds) for layer in self.transformer_blocks], dim=1),
            final_modulation=self.norm_out.modulation(time_embeds),
            projections=[layer.attn.stacked_projection() for layer in self.transformer_blocks],
        )

    def rotation(self, frames: int, device: torch.device, start: int = 0) -> torch.Tensor:
        """The rotary positions of frames start.. as unit complex numbers (frames, head_dim / 2)."""
        angles = torch.arange(start, start + frames, device=device).float()[:, None] * self.inv_freq[None]
        return torch.complex(angles.cos(), angles.sin())

    def velocity(
        self,
        noisy_mel: torch.Tensor,
        steps: DiTSteps,
        evaluation: int,
        condition: DiTCondition,
        rotation: torch.Tensor,
        masks: dict[tuple[bool, bool], torch.Tensor | None],
        past: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
        remember: tuple[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] | None = None,
    ) -> torch.Tensor:
        """The predicted flow (2 * batch, frames, mel_dim) for both guidance branches, at the flow
        time of `steps`' evaluation number `evaluation`.

        past: per look-back layer, keys/values of the block before the window (streaming).
        remember: (first frame, store): put each look-back layer's keys/values of the block that
        starts at that frame into store, for the next window."""
        branches = condition.projected.shape[0]
        hidden = self.input_embed(torch.cat([noisy_mel, noisy_mel]) if noisy_mel.shape[0] != branches else noisy_mel,
                                  condition.projected)
        modulation = steps.modulation[evaluation]
        for index, layer in enumerate(self.transformer_blocks):
            layer_past = past.get(index) if past and layer.looks_back else None
            hidden, keys, values = layer(hidden, modulation[index], steps.projections[index], rotation,
                                         masks[(layer.looks_back, layer.looks_ahead)], layer_past)
            if remember is not None and layer.looks_back:
                first, store = remember
                block = slice(first, first + self.config.block_size)
                # copies: a view would keep this evaluation's whole q/k/v alive until the next window
                store[index] = (keys[:, :, block].clone(), values[:, :, block].clone())
        scale, shift = steps.final_modulation[evaluation].unbind(0)
        return self.proj_out(F.layer_norm(hidden, hidden.shape[-1:], scale, shift, eps=1e-6))
