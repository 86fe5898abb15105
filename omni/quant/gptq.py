"""The GPTQ v1 checkpoint layout (gptqmodel/auto-gptq `checkpoint_format: gptq`, 4 bit, int32 words),
read and written without a GPTQ library.

Per linear of K inputs and N outputs, group size g (w[n, k] = (q[k, n] - z[g_idx[k], n]) * s[g_idx[k], n]):

- `qweight` int32 [K/8, N]: input k = 8r + j of column n in word qweight[r, n], bits 4j..4j+3;
- `qzeros` int32 [K/g, N/8]: output n = 8c + j of group i in word qzeros[i, c], bits 4j..4j+3, holding
  z - 1 (v1). gptqmodel subtracts 0x11111111 from each whole word (and adds it back on loading), so a
  zero of 0 borrows from the next nibble and the round trip is still exact: we do the same;
- `scales` fp16 [K/g, N];
- `g_idx` int32 [K]: the group of each input; k // g, or with act-order (desc_act) the group in
  the order GPTQ quantized the inputs, so that each group is a scattered set of g inputs;
- `bias` fp16 [N] where the linear has one (q/k/v in Qwen2).

`quantize_rtn` is GPTQ's own per-group quantizer (gptqmodel `Quantizer.find_params`) without the
error-compensating update, which needs calibration activations a random checkpoint does not have:
the layout is exactly the published one, the values round-to-nearest.
"""

from __future__ import annotations

import torch

from omni.errors import CheckpointError
from omni.quant.codes import Int4Codes, int4_from_zero_points

PACK = 8  # 4-bit values per int32 word
V1_OFFSET = 0x11111111  # what v1 subtracts from every qzeros word: one from each nibble
TENSORS = ("qweight", "qzeros", "scales", "g_idx")


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2**32) as the int32 words with the same bits."""
    words = words & 0xFFFFFFFF
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_rows(values: torch.Tensor) -> torch.Tensor:
    """[K, N] ints 0..15 -> int32 [K/8, N]: row 8r + j in bits 4j of word row r."""
    rows, cols = values.shape
    grouped = values.to(torch.int64).reshape(rows // PACK, PACK, cols)
    shifts = (4 * torch.arange(PACK, dtype=torch.int64)).reshape(1, PACK, 1)
    return _to_int32((grouped << shifts).sum(dim=1))


def unpack_rows(words: torch.Tensor) -> torch.Tensor:
    """int32 [K/8, N] -> int32 [K, N] (the inverse of pack_rows)."""
    shifts = (4 * torch.arange(PACK, dtype=torch.int32)).reshape(1, PACK, 1)
    values = (words.unsqueeze(1) >> shifts) & 0xF
    return values.reshape(-1, words.shape[1])


def pack_columns(values: torch.Tensor) -> torch.Tensor:
    """[G, N] ints 0..15 -> int32 [G, N/8]: column 8c + j in bits 4j of word column c."""
    rows, cols = values.shape
    grouped = values.to(torch.int64).reshape(rows, cols // PACK, PACK)
    shifts = 4 * torch.arange(PACK, dtype=torch.int64)
    return _to_int32((grouped << shifts).sum(dim=2))


def unpack_columns(words: torch.Tensor) -> torch.Tensor:
    shifts = 4 * torch.arange(PACK, dtype=torch.int32)
    return ((words.unsqueeze(2) >> shifts) & 0xF).reshape(words.shape[0], -1)


def pack(codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor
         ) -> dict[str, torch.Tensor]:
    """The v1 tensors of one linear from codes [K, N] (0..15), zeros [G, N] (0..15), scales [G, N]
    and g_idx [K]."""
    v2_zeros = pack_columns(zeros).to(torch.int64)
    return {
        "qweight": pack_rows(codes),
        "qzeros": _to_int32(v2_zeros - V1_OFFSET),
        "scales": scales.to(torch.float16).contiguous(),
        "g_idx": g_idx.to(torch.int32).contiguous(),
    }


def unpack(qweight: torch.Tensor, qzeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [K, N], zeros [G, N]) of v1 tensors, as gptqmodel reads them (v1 -> v2 by adding
    0x11111111 to every qzeros word)."""
    v2_zeros = _to_int32(qzeros.to(torch.int64) + V1_OFFSET)
    return unpack_rows(qweight), unpack_columns(v2_zeros)


def quantize_rtn(weight: torch.Tensor, group_size: int, sym: bool, input_order: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes [K, N], zeros [G, N], scales fp16 [G, N], g_idx [K]) of weight [N, K].

    `input_order` (act-order): the order in which GPTQ visits the inputs (by decreasing Hessian
    diagonal in the real algorithm); group i is then inputs input_order[i*g : (i+1)*g]."""
    out_features, in_features = weight.shape
    order = torch.arange(in_features) if input_order is None else input_order.to(torch.int64)
    g_idx = torch.empty(in_features, dtype=torch.int32)
    g_idx[order] = (torch.arange(in_features) // group_size).to(torch.int32)
    # groups [N, G, g] of the inputs in visiting order
    groups = weight.to(torch.float32)[:, order].reshape(out_features, in_features // group_size, group_size)
    low = groups.amin(dim=2).clamp(max=0)
    high = groups.amax(dim=2).clamp(min=0)
    if sym:
        high = torch.maximum(low.abs(), high)
        low = torch.where(low < 0, -high, low)
    empty = (low == 0) & (high == 0)
    low, high = torch.where(empty, -1.0, low), torch.where(empty, 1.0, high)
    scales = ((high - low) / 15).to(torch.float16)
    scales32 = scales.to(torch.float32)
    zeros = torch.full_like(low, 8.0) if sym else torch.round(-low / scales32).clamp(0, 15)
    codes = torch.clamp(torch.round(groups / scales32[..., None]) + zeros[..., None], 0, 15)
    codes_in_order = codes.reshape(out_features, in_features).to(torch.int32)
    codes_original = torch.empty_like(codes_in_order)
    codes_original[:, order] = codes_in_order
    return codes_original.t().contiguous(), zeros.t().to(torch.int32).contiguous(), scales.t().contiguous(), g_idx


def to_int4(tensors: dict[str, torch.Tensor], in_features: int, out_features: int, group_size: int,
            name: str) -> Int4Codes:
    """Check one linear's v1 tensors against its shape and bring them to the kernel form."""
    groups = in_features // group_size
    expected = {"qweight": ((in_features // PACK, out_features), torch.int32),
                "qzeros": ((groups, out_features // PACK), torch.int32),
                "scales": ((groups, out_features), None),
                "g_idx": ((in_features,), None)}
    for key, (shape, dtype) in expected.items():
        tensor = tensors[key]
        if tuple(tensor.shape) != shape or (dtype is not None and tensor.dtype != dtype):
            raise CheckpointError(f"{name}.{key} is {tensor.dtype} {tuple(tensor.shape)}; a GPTQ v1 linear of "
                                  f"{in_features} -> {out_features} in groups of {group_size} has "
                                  f"{dtype or 'a float/int'} {shape}")
    g_idx = tensors["g_idx"].to(torch.int64)
    counts = torch.bincount(g_idx.clamp(min=0), minlength=groups)
    if int(g_idx.min()) < 0 or int(g_idx.max()) >= groups or not bool((counts == group_size).all()):
        raise CheckpointError(f"{name}.g_idx does not put exactly {group_size} inputs in each of {groups} groups; omni "
                              "loads GPTQ act-order only in that form (gptqmodel's, static_groups or not)")
    codes, zeros = unpack(tensors["qweight"], tensors["qzeros"])
    return int4_from_zero_points(codes, zeros, tensors["scales"], g_idx, group_size)
