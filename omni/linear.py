"""`Linear`: `nn.Linear` whose product with a few rows runs fast on the CPU; the decoders' projections use it.

A decoding step multiplies one row (or a few: one per conversation in a batched step) by every weight
matrix, so it is a read of the weights and little else. PyTorch's CPU `F.linear` with so few rows
reads them at 15-19 GB/s on a 2-core AMD EPYC with AVX-512, where a plain sum over the same tensor
reads 25-28 GB/s. Asked as one batched product over `blocks` slices of the weight instead (one slice
per torch thread, a free view of the weight: no copy, no new layout), each thread streams its own
slice and the read runs at nearly the sum's speed:
- a row-major weight (every decoder projection) is sliced along its output features: each output is
  still one dot product over all inputs;
- a column-major weight (the Thinkers' vocabulary projection, omni.lm_head) is sliced along its input
  features, and the slices' partial products are added: fp32 rounding of a different order.
Measured on that machine, 2 threads, fp32, ms per product (`F.linear` -> split; medians of 3-5 runs
taking turns; the machine's memory speed varies by some 20% from minute to minute):
    11008 x 2048 (3B gate/up), 1 / 4 / 128 rows         4.6 -> 2.8    13.1 -> 5.8    48.4 -> 42.0
    2048 x 11008 (3B down), 1 / 4 rows                  4.1 -> 2.9     9.2 -> 5.7
    2048 x 2048 (3B q/o), 1 / 4 rows                    0.43 -> 0.19   1.36 -> 0.64
    4864 x 896 (3B Talker gate/up), 1 row               1.15 -> 0.43
    151936 x 2048 (3B vocabulary, column-major), 1 / 4 rows   60.4 -> 45.4   172 -> 103
    151936 x 256 (`small` vocabulary, column-major), 1 row    11.2 -> 7.1
Smaller matrices (under `SPLIT_MIN_WEIGHTS`, which stay in the caches) lose 10-20 us a product to the
batched call's overhead, and past `SPLIT_MAX_ROWS` rows (a prefill) both ways cost the same: there, and
off the CPU (cuBLAS), and with one thread, `F.linear` is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SPLIT_MAX_ROWS = 128
SPLIT_MIN_WEIGHTS = 1 << 21  # 8 MB in fp32: 2048 x 2048 gains, 1536 x 1024 loses


def split_blocks(features: int) -> int:
    """How many slices `features` (output features of a row-major weight, input features of a
    column-major one) are split into: one per torch thread, fewer where they do not divide evenly."""
    blocks = min(torch.get_num_threads(), features)
    while blocks > 1 and features % blocks:
        blocks -= 1
    return blocks


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, split over slices of the weight where that is faster (module docstring)."""
    out_features, in_features = weight.shape
    rows = x.numel() // in_features if in_features else 0
    if (x.device.type != "cpu" or rows == 0 or rows > SPLIT_MAX_ROWS or weight.numel() < SPLIT_MIN_WEIGHTS
            or x.dtype != weight.dtype):
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, in_features)
    if weight.is_contiguous():  # row-major: slices of the output features
        blocks = split_blocks(out_features)
        if blocks == 1:
            return F.linear(x, weight, bias)
        sliced = weight.view(blocks, out_features // blocks, in_features).transpose(1, 2)
        out = torch.matmul(flat, sliced).transpose(0, 1)  # (rows, blocks, out_features / blocks)
    elif weight.t().is_contiguous():  # column-major: slices of the input features, partial products added
        blocks = split_blocks(in_features)
        if blocks == 1:
            return F.linear(x, weight, bias)
        sliced = weight.t().view(blocks, in_features // blocks, out_features)
        out = torch.matmul(flat.view(rows, blocks, in_features // blocks).transpose(0, 1), sliced).sum(0)
    else:
        return F.linear(x, weight, bias)
    out = out.reshape(*x.shape[:-1], out_features)
    return out if bias is None else out + bias


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, names and state dict) computed by `linear` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
