"""Attention restricted to contiguous segments of a packed sequence (a block-diagonal mask).

The vision encoder attends within windows or frames and the audio encoder within fixed chunks;
both describe the segments by cumulative lengths `cu_seqlens` (0, l0, l0+l1, ...). Equal-length
segments run as one batched attention call; otherwise segments are padded to the longest and the
padding keys are masked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segment_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, scale: float
) -> torch.Tensor:
    """q, k, v: (seq, heads, head_dim) packed; returns (seq, heads, head_dim)."""
    seq, heads, head_dim = q.shape
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    lengths = [length for length in lengths if length > 0]
    if len(set(lengths)) == 1:
        count, length = len(lengths), lengths[0]
        def split(t):
            return t.reshape(count, length, heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), scale=scale)
        return out.transpose(1, 2).reshape(seq, heads, head_dim)

    count, longest = len(lengths), max(lengths)
    starts = torch.tensor([0] + lengths[:-1], device=q.device).cumsum(0)
    offsets = torch.arange(longest, device=q.device)
    valid = offsets[None, :] < torch.tensor(lengths, device=q.device)[:, None]  # (count, longest)
    index = (starts[:, None] + offsets[None, :]).clamp(max=seq - 1)

    def gather(t):
        return t[index].transpose(1, 2)  # (count, heads, longest, head_dim)

    mask = valid[:, None, None, :]
    out = F.scaled_dot_product_attention(gather(q), gather(k), gather(v), attn_mask=mask, scale=scale)
    out = out.transpose(1, 2)  # (count, longest, heads, head_dim)
    return out[valid]
