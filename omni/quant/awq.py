"""The AWQ GEMM checkpoint layout (AutoAWQ `version: gemm`, 4 bit, zero point), read and written
without an AWQ library.

Per linear of K inputs and N outputs, group size g (w[n, k] = (q[k, n] - z[k // g, n]) * s[k // g, n]):

- `qweight` int32 [K, N/8]: the eight outputs 8c..8c+7 of input k in word qweight[k, c], in nibble
  order [0, 2, 4, 6, 1, 3, 5, 7] (bits 4j hold output 8c + ORDER[j]), the order AutoAWQ's
  `WQLinear_GEMM.from_linear` packs and its CUDA kernel unpacks;
- `qzeros` int32 [K/g, N/8]: the zero points 0..15, same order, stored as they are (no minus one);
- `scales` fp16 [K/g, N]; `bias` fp16 [N] where the linear has one; no g_idx.

`quantize_rtn` is AWQ's per-group min-max quantizer (AutoAWQ `pseudo_quantize_tensor` with zero
point) without the activation-aware scale search, which needs calibration activations: the layout is
exactly the published one, the values round-to-nearest.
"""

from __future__ import annotations

import torch

from omni.errors import CheckpointError
from omni.quant.codes import Int4Codes, int4_from_zero_points
from omni.quant.gptq import _to_int32

PACK = 8
ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # bits 4j of a word hold column 8c + ORDER[j]
TENSORS = ("qweight", "qzeros", "scales")


def pack_columns(values: torch.Tensor) -> torch.Tensor:
    """[R, N] ints 0..15 -> int32 [R, N/8] in AWQ's nibble order."""
    rows, cols = values.shape
    grouped = values.to(torch.int64).reshape(rows, cols // PACK, PACK)[..., list(ORDER)]
    shifts = 4 * torch.arange(PACK, dtype=torch.int64)
    return _to_int32((grouped << shifts).sum(dim=2))


def unpack_columns(words: torch.Tensor) -> torch.Tensor:
    """int32 [R, N/8] -> int32 [R, N] (the inverse of pack_columns)."""
    shifts = 4 * torch.arange(PACK, dtype=torch.int32)
    nibbles = (words.unsqueeze(2) >> shifts) & 0xF  # nibble j holds column ORDER[j]
    values = torch.empty_like(nibbles)
    values[..., list(ORDER)] = nibbles
    return values.reshape(words.shape[0], -1)


def pack(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor) -> dict[str, torch.Tensor]:
    """The GEMM tensors of one linear from codes [K, N], zeros [G, N] (both 0..15) and scales [G, N]."""
    return {"qweight": pack_columns(codes), "qzeros": pack_columns(zeros),
            "scales": scales.to(torch.float16).contiguous()}


def unpack(qweight: torch.Tensor, qzeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return unpack_columns(qweight), unpack_columns(qzeros)


def quantize_rtn(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes [K, N], zeros [G, N], scales fp16 [G, N]) of weight [N, K]: scale = (max - min) / 15,
    zero = clamp(-round(min / scale), 0, 15), code = clamp(round(w / scale) + zero, 0, 15)."""
    out_features, in_features = weight.shape
    groups = weight.to(torch.float32).reshape(out_features, in_features // group_size, group_size)
    low, high = groups.amin(dim=2), groups.amax(dim=2)
    scales = ((high - low).clamp(min=1e-5) / 15).to(torch.float16)
    scales32 = scales.to(torch.float32)
    zeros = (-torch.round(low / scales32)).clamp(0, 15)
    codes = torch.clamp(torch.round(groups / scales32[..., None]) + zeros[..., None], 0, 15)
    codes = codes.reshape(out_features, in_features).to(torch.int32)
    return codes.t().contiguous(), zeros.t().to(torch.int32).contiguous(), scales.t().contiguous()


def to_int4(tensors: dict[str, torch.Tensor], in_features: int, out_features: int, group_size: int,
            name: str) -> Int4Codes:
    groups = in_features // group_size
    expected = {"qweight": ((in_features, out_features // PACK), torch.int32),
                "qzeros": ((groups, out_features // PACK), torch.int32),
                "scales": ((groups, out_features), None)}
    for key, (shape, dtype) in expected.items():
        tensor = tensors[key]
        if tuple(tensor.shape) != shape or (dtype is not None and tensor.dtype != dtype):
            raise CheckpointError(f"{name}.{key} is {tensor.dtype} {tuple(tensor.shape)}; an AWQ GEMM linear of "
                                  f"{in_features} -> {out_features} in groups of {group_size} has "
                                  f"{dtype or 'a float'} {shape}")
    codes, zeros = unpack(tensors["qweight"], tensors["qzeros"])
    group_of = torch.arange(in_features) // group_size
    return int4_from_zero_points(codes, zeros, tensors["scales"], group_of, group_size)
