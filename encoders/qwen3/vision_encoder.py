"""The Qwen3-VL vision transformer of Qwen3-Omni (`thinker.visual.*`).

Patches of 2 frames x 16 x 16 pixels arrive ordered so that each 2x2 block of patches the merger
later fuses is contiguous (the processor's layout). Each patch gets its embedding plus an absolute
position taken from a learned square table (`pos_embed`, 48 x 48 for the published model), resampled
bilinearly (corners aligned) to the image's patch grid, so any resolution reuses the one table. Blocks
(LayerNorm, 2-D rotary attention over a whole frame, GELU-tanh MLP) follow; unlike Qwen2.5-VL there
are no attention windows. The merger fuses each 2x2 block into one token of the Thinker's width;
"deepstack" mergers do the same to the hidden states after a few early blocks, and the Thinker adds
those to its own hidden states at its first layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from omni.encoders.segment_attention import segment_attention
from omni.layers import activation, rotate_half
from omni.qwen3.config import VisionEncoderConfig


class PatchEmbed(nn.Module):
    def __init__(self, config: VisionEncoderConfig) -> None:
        super().__init__()
        kernel = (config.temporal_patch_size, config.patch_size, config.patch_size)
        # Stored as the checkpoint's Conv3d; with stride == kernel it is one matrix product per patch.
        self.proj = nn.Conv3d(config.in_channels, config.hidden_size, kernel_size=kernel, stride=kernel, bias=True)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight
        return F.linear(pixel_values.to(weight.dtype), weight.reshape(weight.shape[0], -1), self.proj.bias)


class VisionAttention(nn.Module):
    def __init__(self, config: VisionEncoderConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_size // config.num_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=True)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, hidden: torch.Tensor, cu_seqlens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        seq = hidden.shape[0]
        q, k, v = self.qkv(hidden).reshape(seq, 3, self.num_heads, self.head_dim).unbind(1)
        # The rotation runs in fp32 whatever the weights' dtype (as the reference does).
        q32, k32 = q.float(), k.float()
        q = ((q32 * cos) + (rotate_half(q32) * sin)).to(v.dtype)
        k = ((k32 * cos) + (rotate_half(k32) * sin)).to(v.dtype)
        out = segment_attention(q, k, v, cu_seqlens, scale=self.head_dim**-0.5)
        return self.proj(out.reshape(seq, -1))


class VisionMLP(nn.Module):
    def __init__(self, config: VisionEncoderConfig) -> None:
        super().__init__()
        self.linear_fc1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=True)
        self.linear_fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=True)
        self.act = activation(config.hidden_act)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(self.act(self.linear_fc1(hidden)))


class VisionBlock(nn.Module):
    def __init__(self, config: VisionEncoderConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=1e-6)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=1e-6)
        self.attn = VisionAttention(config)
        self.mlp = VisionMLP(config)

    def forward(self, hidden, cu_seqlens, cos, sin):
        hidden = hidden + self.attn(self.norm1(hidden), cu_seqlens, cos, sin)
        return hidden + self.mlp(self.norm2(hidden))


class PatchMerger(nn.Module):
    """Fuses each 2x2 block of patches into one Thinker-width token. The final merger normalises each patch
    before the fusion; the deepstack mergers (`postshuffle_norm`) normalise the fused 4 * hidden vector."""

    def __init__(self, config: VisionEncoderConfig, postshuffle_norm: bool) -> None:
        super().__init__()
        self.merged_width = config.hidden_size * config.spatial_merge_size**2
        self.postshuffle_norm = postshuffle_norm
        self.ln_q = nn.LayerNorm(self.merged_width if postshuffle_norm else config.hidden_size, eps=1e-6)
        # nn.Sequential keeps the checkpoint's names (mlp.0, mlp.2); the GELU here is the exact (erf) one.
        self.mlp = nn.Sequential(
            nn.Linear(self.merged_width, self.merged_width),
            nn.GELU(),
            nn.Linear(self.merged_width, config.out_hidden_size),
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.postshuffle_norm:
            return self.mlp(self.ln_q(hidden.reshape(-1, self.merged_width)))
        return self.mlp(self.ln_q(hidden).reshape(-1, self.merged_width))


class VisionEncoder(nn.Module):
    def __init__(self, config: VisionEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.table_side = int(config.num_position_embeddings**0.5)
        if self.table_side**2 != config.num_position_embeddings:
            raise ValueError(f"num_position_embeddings={config.num_position_embeddings} is not a square")
        self.merger_list = nn.ModuleList(
            PatchMerger(config, postshuffle_norm=True) for _ in config.deepstack_visual_indexes
        )
        self.patch_embed = PatchEmbed(config)
        self.pos_embed = nn.Embedding(config.num_position_embeddings, config.hidden_size)
        self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(config.depth))
        self.merger = PatchMerger(config, postshuffle_norm=False)
        self.register_buffer("inv_freq", self._inverse_frequencies(), persistent=False)

    def _inverse_frequencies(self, device=None) -> torch.Tensor:
        # Half the head dim per axis (rows, columns), a frequency per pair of channels.
        axis_dim = (self.config.hidden_size // self.config.num_heads) // 2
        steps = torch.arange(0, axis_dim, 2, dtype=torch.float, device=device) / axis_dim
        return 1.0 / (self.config.rope_theta**steps)

    def reset_buffers(self) -> None:
        """Recompute the non-persistent rotary frequencies (after building the module on the meta device)."""
        self.inv_freq = self._inverse_frequencies(device=self.pos_embed.weight.device)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """pixel_values: (patches, channels * temporal_patch * patch * patch) as the processor lays them out;
        grid_thw: (items, 3). Returns the merged tokens (patches / merge_unit, out_hidden_size) and one
        tensor of the same shape per deepstack index, in `deepstack_visual_indexes` order."""
        grids = [tuple(int(size) for size in grid) for grid in grid_thw.tolist()]
        hidden = self.patch_embed(pixel_values)
        hidden = hidden + self._absolute_positions(grids).to(hidden.dtype)

        rows, cols = merge_order_positions(grids, self.config.spatial_merge_size, hidden.device)
        inv_freq = self.inv_freq.to(hidden.device)
        angles = torch.cat([rows[:, None].float() * inv_freq, cols[:, None].float() * inv_freq], dim=-1)
        angles = torch.cat([angles, angles], dim=-1).unsqueeze(-2)  # (patches, 1, head_dim): one per head
        cos, sin = angles.cos(), angles.sin()

        frame_patches = [h * w for t, h, w in grids for _ in range(t)]
        cu_seqlens = F.pad(torch.tensor(frame_patches, dtype=torch.long).cumsum(0), (1, 0)).to(hidden.device)
        deepstack = []
        for index, block in enumerate(self.blocks):
            hidden = block(hidden, cu_seqlens, cos, sin)
            if index in self.config.deepstack_visual_indexes:
                deepstack.append(self.merger_list[self.config.deepstack_visual_indexes.index(index)](hidden))
        return self.merger(hidden), deepstack

    def _absolute_positions(self, grids: list[tuple[int, int, int]]) -> torch.Tensor:
        """(patches, hidden) learned positions: the square table resized to each item's (h, w) patch grid by
        bilinear interpolation with corners aligned (table corners land on the grid's corner patches),
        repeated over the item's frames, in the processor's merge-block order."""
        side, merge = self.table_side, self.config.spatial_merge_size
        weight = self.pos_embed.weight
        table = weight.T.reshape(1, -1, side, side).float()
        resized: dict[tuple[int, int], torch.Tensor] = {}
        parts = []
        for t, h, w in grids:
            if (h, w) not in resized:
                grid = F.interpolate(table, size=(h, w), mode="bilinear", align_corners=True)[0]  # (hidden, h, w)
                blocks = grid.reshape(-1, h // merge, merge, w // merge, merge).permute(1, 3, 2, 4, 0)
                resized[(h, w)] = blocks.reshape(h * w, -1).to(weight.dtype)
            parts.append(resized[(h, w)].repeat(t, 1))
        return torch.cat(parts)


def merge_order_positions(
    grids: list[tuple[int, int, int]], merge: int, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) patch coordinates of every patch in the processor's merge-block order, frame after frame."""
    rows, cols = [], []
    for t, h, w in grids:
        row = torch.arange(h, device=device)[:, None].expand(h, w)
        col = torch.arange(w, device=device)[None, :].expand(h, w)
        block = (h // merge, merge, w // merge, merge)
        rows.append(row.reshape(block).transpose(1, 2).flatten().repeat(t))
        cols.append(col.reshape(block).transpose(1, 2).flatten().repeat(t))
    return torch.cat(rows), torch.cat(cols)
