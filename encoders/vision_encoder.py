"""The Qwen2.5-VL style vision transformer of Qwen2.5-Omni (`thinker.visual.*`).

Patches of 2 frames x 14 x 14 pixels are embedded, ordered so that each 2x2 block of patches that
the merger later fuses is contiguous, then regrouped into windows of `window_size` pixels. Most
blocks attend inside a window; the blocks named by `fullatt_block_indexes` attend over a whole frame.
A 2-D rotary embedding (row, column) rotates queries and keys. The merger fuses each 2x2 block into
one token of the Thinker's width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from omni.encoders.segment_attention import segment_attention
from omni.config import VisionEncoderConfig
from omni.layers import GatedMLP, RMSNorm, rotate_half


class PatchEmbed(nn.Module):
    def __init__(self, config: VisionEncoderConfig) -> None:
        super().__init__()
        kernel = (config.temporal_patch_size, config.patch_size, config.patch_size)
        # Stored as the checkpoint's Conv3d; with stride == kernel it is one matrix product per patch.
        self.proj = nn.Conv3d(config.in_channels, config.hidden_size, kernel_size=kernel, stride=kernel, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight
        return F.linear(pixel_values.to(weight.dtype), weight.reshape(weight.shape[0], -1))


class VisionAttention(nn.Module):
    def __init__(self, config: VisionEncoderConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_size // config.num_heads
        self.q = nn.Linear(config.hidden_size, config.hidden_size, bias=True)
        self.k = nn.Linear(config.hidden_size, config.hidden_size, bias=True)
        self.v = nn.Linear(config.hidden_size, config.hidden_size, bias=True)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor, cu_seqlens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        seq = hidden.shape[0]
        q = self.q(hidden).reshape(seq, self.num_heads, self.head_dim)
        k = self.k(hidden).reshape(seq, self.num_heads, self.head_dim)
        v = self.v(hidden).reshape(seq, self.num_heads, self.head_dim)
        # The rotation runs in fp32 whatever the weights' dtype (as the reference does).
        cos, sin = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()
        q32, k32 = q.float(), k.float()
        q = ((q32 * cos) + (rotate_half(q32) * sin)).to(v.dtype)
        k = ((k32 * cos) + (rotate_half(k32) * sin)).to(v.dtype)
        out = segment_attention(q, k, v, cu_seqlens, scale=self.head_dim**-0.5)
        return self.proj(out.reshape(seq, -1))


class VisionBlock(nn.Module):
    def __init__(self, config: VisionEncoderConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(config.hidden_size, eps=1e-6)
        self.norm2 = RMSNorm(config.hidden_size, eps=1e-6)
        self.attn = VisionAttention(config)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act, bias=True)

    def forward(self, hidden, cu_seqlens, cos, sin):
        hidden = hidden + self.attn(self.norm1(hidden), cu_seqlens, cos, sin)
        return hidden + self.mlp(self.norm2(hidden))


class PatchMerger(nn.Module):
    def __init__(self, config: VisionEncoderConfig) -> None:
        super().__init__()
        self.merged_width = config.hidden_size * config.spatial_merge_size**2
        self.ln_q = RMSNorm(config.hidden_size, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(self.merged_width, self.merged_width),
            nn.GELU(),
            nn.Linear(self.merged_width, config.out_hidden_size),
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(hidden).view(-1, self.merged_width))


class VisionEncoder(nn.Module):
    def __init__(self, config: VisionEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.merge_unit = config.spatial_merge_size**2
        self.patch_embed = PatchEmbed(config)
        self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(config.depth))
        self.merger = PatchMerger(config)
        self.register_buffer("inv_freq", self._inverse_frequencies(), persistent=False)

    def _inverse_frequencies(self, device=None) -> torch.Tensor:
        spatial_dim = (self.config.hidden_size // self.config.num_heads) // 2
        steps = torch.arange(0, spatial_dim, 2, dtype=torch.float, device=device) / spatial_dim
        return 1.0 / (self.config.rope_theta**steps)

    def reset_buffers(self) -> None:
        self.inv_freq = self._inverse_frequencies(device=self.merger.ln_q.weight.device)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values: (patches, channels * temporal_patch * patch * patch) as the processor lays
        them out; grid_thw: (items, 3). Returns (patches / merge_unit, out_hidden_size)."""
        layout = vision_layout(grid_thw, self.config)
        hidden = self.patch_embed(pixel_values)
        hidden = self._to_window_order(hidden, layout.window_index)

        freqs = layout.rope_positions[..., None].float() * self.inv_freq.to(hidden.device)  # (seq, 2, dim/4)
        angles = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1)
        angles = self._to_window_order(torch.cat([angles, angles], dim=-1), layout.window_index)
        cos, sin = angles.cos(), angles.sin()

        full = layout.frame_cu_seqlens.to(hidden.device)
        windowed = layout.window_cu_seqlens.to(hidden.device)
        for index, block in enumerate(self.blocks):
            hidden = block(hidden, full if index in self.config.fullatt_block_indexes else windowed, cos, sin)
        merged = self.merger(hidden)
        return merged[torch.argsort(layout.window_index.to(merged.device))]

    def _to_window_order(self, tensor: torch.Tensor, window_index: torch.Tensor) -> torch.Tensor:
        seq = tensor.shape[0]
        grouped = tensor.reshape(seq // self.merge_unit, self.merge_unit, -1)
        return grouped[window_index.to(tensor.device)].reshape(seq, -1)


class VisionLayout:
    """Index bookkeeping of one vision forward pass (pure integer work, on the CPU)."""

    def __init__(self, rope_positions, frame_cu_seqlens, window_index, window_cu_seqlens) -> None:
        self.rope_positions = rope_positions  # (patches, 2): row, column of each patch
        self.frame_cu_seqlens = frame_cu_seqlens  # full-attention segments: one per frame
        self.window_index = window_index  # merged-token order after windowing
        self.window_cu_seqlens = window_cu_seqlens  # window-attention segments, in patches


def vision_layout(grid_thw: torch.Tensor, config: VisionEncoderConfig) -> VisionLayout:
    merge = config.spatial_merge_size
    window_merged = config.window_size // merge // config.patch_size  # window side in merged tokens
    positions, frame_lengths, window_index, window_lengths = [], [], [], []
    merged_offset = 0
    for t, h, w in grid_thw.tolist():
        t, h, w = int(t), int(h), int(w)
        rows = torch.arange(h)[:, None].expand(h, w)
        cols = torch.arange(w)[None, :].expand(h, w)
        block = (h // merge, merge, w // merge, merge)
        rows = rows.reshape(block).transpose(1, 2).flatten()
        cols = cols.reshape(block).transpose(1, 2).flatten()
        positions.append(torch.stack([rows, cols], dim=-1).repeat(t, 1))
        frame_lengths.extend([h * w] * t)

        merged_h, merged_w = h // merge, w // merge
        index = torch.arange(t * merged_h * merged_w).reshape(t, merged_h, merged_w)
        pad_h = window_merged - merged_h % window_merged
        pad_w = window_merged - merged_w % window_merged
        windows_h, windows_w = (merged_h + pad_h) // window_merged, (merged_w + pad_w) // window_merged
        padded = F.pad(index, (0, pad_w, 0, pad_h), value=-100)
        padded = padded.reshape(t, windows_h, window_merged, windows_w, window_merged)
        padded = padded.permute(0, 1, 3, 2, 4).reshape(t, windows_h * windows_w, -1)
        window_lengths.extend(((padded != -100).sum(-1).reshape(-1) * merge * merge).tolist())
        flat = padded.reshape(-1)
        window_index.append(flat[flat != -100] + merged_offset)
        merged_offset += t * merged_h * merged_w

    def cumulative(lengths):
        return F.pad(torch.tensor(lengths, dtype=torch.int64).cumsum(0), (1, 0))

    return VisionLayout(
        rope_positions=torch.cat(positions),
        frame_cu_seqlens=cumulative(frame_lengths),
        window_index=torch.cat(window_index),
        window_cu_seqlens=cumulative([length for length in window_lengths if length > 0]),
    )
