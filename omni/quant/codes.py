"""Integer codes of a weight matrix, and the plain float arithmetic that makes and reverses them.

Every source of quantized weights (load-time int8/int4, GPTQ, AWQ) is brought to one of two forms
before it is packed for a kernel; the `dequantize` functions here are the reference the kernel
tests compare against (a plain dequantize-then-matmul).

- `Int8Codes`: weight[n, k] = codes[n, k] * scales[n] (symmetric, per output channel).
- `Int4Codes`: weight[n, input_order[j]] = (codes[n, j] - 8) * scales[n, j // g] + offsets[n, j // g],
  the form PyTorch's int4 kernels (tinygemm) compute with: unsigned 4-bit codes around 8 and a float
  offset per group. A published integer zero point z maps to offset (8 - z) * scale exactly, and an
  act-order (GPTQ desc_act) checkpoint becomes contiguous groups after permuting the input
  features (`input_order`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INT4_MID = 8  # tinygemm's codes are unsigned 0..15 around 8
# Rows quantized at a time: the float32 temporaries stay near ROW_BLOCK x in_features x 12 bytes (48 MiB
# at 7B's widest input) instead of three float32 copies of the whole matrix.
ROW_BLOCK = 1024


@dataclass
class Int8Codes:
    codes: torch.Tensor  # int8 [out, in]
    scales: torch.Tensor  # float [out]


@dataclass
class Int4Codes:
    codes: torch.Tensor  # uint8 [out, in], values 0..15, columns in kernel order
    scales: torch.Tensor  # float [out, in // group_size]
    offsets: torch.Tensor  # float [out, in // group_size]
    group_size: int
    input_order: torch.Tensor | None = None  # int64 [in]: kernel column j reads input feature input_order[j]

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    @property
    def in_features(self) -> int:
        return self.codes.shape[1]


def quantize_int8(weight: torch.Tensor, scale_dtype: torch.dtype) -> Int8Codes:
    """Symmetric per-output-channel int8: scale = max|w| / 127, codes = round(w / scale). The codes
    are made with the scale as stored (in `scale_dtype`), so codes * stored scale is the weight's
    nearest int8 value."""
    codes = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scales = torch.empty(weight.shape[0], dtype=scale_dtype, device=weight.device)
    for start in range(0, weight.shape[0], ROW_BLOCK):
        rows = weight[start : start + ROW_BLOCK].to(torch.float32)
        block_scales = (rows.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float16).tiny).to(scale_dtype)
        codes[start : start + ROW_BLOCK] = torch.round(rows / block_scales.to(torch.float32)[:, None]).clamp_(-128, 127)
        scales[start : start + ROW_BLOCK] = block_scales
    return Int8Codes(codes, scales)


def dequantize_int8(codes: Int8Codes) -> torch.Tensor:
    return codes.codes.to(torch.float32) * codes.scales.to(torch.float32)[:, None]


def quantize_int4(weight: torch.Tensor, group_size: int, scale_dtype: torch.dtype) -> Int4Codes:
    """Asymmetric min-max int4 per group of `group_size` input features, with a float offset (no
    rounded zero point): scale = (max - min) / 15, codes = round((w - min) / scale). Scales and
    offsets are rounded to `scale_dtype` first and the codes made from the rounded ones."""
    out_features, in_features = weight.shape
    groups_per_row = in_features // group_size
    codes = torch.empty(weight.shape, dtype=torch.uint8, device=weight.device)
    scales = torch.empty(out_features, groups_per_row, dtype=scale_dtype, device=weight.device)
    offsets = torch.empty_like(scales)
    for start in range(0, out_features, ROW_BLOCK):
        groups = weight[start : start + ROW_BLOCK].to(torch.float32).reshape(-1, groups_per_row, group_size)
        low, high = groups.amin(dim=2), groups.amax(dim=2)
        block_scales = ((high - low) / 15.0).clamp(min=torch.finfo(torch.float16).tiny).to(scale_dtype)
        block_offsets = (low + INT4_MID * block_scales.to(torch.float32)).to(scale_dtype)
        low = block_offsets.to(torch.float32) - INT4_MID * block_scales.to(torch.float32)
        block_codes = torch.round((groups - low[..., None]) / block_scales.to(torch.float32)[..., None]).clamp_(0, 15)
        codes[start : start + ROW_BLOCK] = block_codes.reshape(-1, in_features)
        scales[start : start + ROW_BLOCK] = block_scales
        offsets[start : start + ROW_BLOCK] = block_offsets
    return Int4Codes(codes, scales, offsets, group_size)


def dequantize_int4(codes: Int4Codes) -> torch.Tensor:
    """The float weight [out, in] in the original input order."""
    out_features, in_features = codes.codes.shape
    grouped = codes.codes.to(torch.float32).reshape(out_features, -1, codes.group_size) - INT4_MID
    weight = grouped * codes.scales.to(torch.float32)[..., None] + codes.offsets.to(torch.float32)[..., None]
    weight = weight.reshape(out_features, in_features)
    if codes.input_order is None:
        return weight
    original = torch.empty_like(weight)
    original[:, codes.input_order] = weight
    return original


def int4_from_zero_points(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, group_of: torch.Tensor,
                          group_size: int) -> Int4Codes:
    """The kernel form of w[n, k] = (codes[k, n] - zeros[group_of[k], n]) * scales[group_of[k], n], the
    layout GPTQ and AWQ share once unpacked (codes [in, out], zeros and scales [groups, out]).

    `group_of` (GPTQ's g_idx) must give every group exactly `group_size` members; when it is not
    k // group_size (act-order) the input features are reordered so that groups are contiguous.
    Offsets (8 - z) * s are computed in float32, exact for fp16 scales and integer z in 0..16."""
    in_features = codes.shape[0]
    contiguous = torch.arange(in_features, device=group_of.device) // group_size
    if torch.equal(group_of.to(torch.int64), contiguous):
        order = None
        kernel_codes = codes.t()
    else:
        order = torch.argsort(group_of.to(torch.int64), stable=True)
        kernel_codes = codes.index_select(0, order).t()
    scales32 = scales.to(torch.float32)
    offsets = (INT4_MID - zeros.to(torch.float32)) * scales32
    return Int4Codes(kernel_codes.to(torch.uint8).contiguous(), scales32.t().contiguous(), offsets.t().contiguous(),
                     group_size, order)
