"""GPTQ v1 and AWQ GEMM packing: exact round trips, and the bit layout the format descriptions give."""

from __future__ import annotations

import pytest
import torch

from omni.errors import CheckpointError
from omni.quant import awq, gptq
from omni.quant.codes import dequantize_int4

# Half a step, plus what storing the scale in fp16 moves the farthest code (8 steps from the zero)
HALF_STEP_FP16_SCALE = 0.5 + 8 * 2.0**-11


def _random_codes(in_features: int, out_features: int, group_size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (in_features, out_features), generator=generator, dtype=torch.int32)
    zeros = torch.randint(0, 16, (in_features // group_size, out_features), generator=generator, dtype=torch.int32)
    scales = (torch.rand(in_features // group_size, out_features, generator=generator) * 0.02 + 1e-3).half()
    return codes, zeros, scales


def _published_weight(codes, zeros, scales, group_of) -> torch.Tensor:
    """w[n, k] = (q[k, n] - z[g(k), n]) * s[g(k), n], the formula both formats document, in fp32."""
    return ((codes - zeros[group_of]).to(torch.float32) * scales[group_of].to(torch.float32)).t()


# --- GPTQ v1 ------------------------------------------------------------------------------------


def test_gptq_qweight_holds_input_8r_plus_j_in_bits_4j():
    codes = (torch.arange(16) % 16).to(torch.int32)[:, None].repeat(1, 8)  # input k has code k
    words = gptq.pack_rows(codes)
    assert words.shape == (2, 8) and words.dtype == torch.int32
    assert words[0, 0].item() == 0x76543210
    assert words[1, 0].item() == 0xFEDCBA98 - 2**32  # same bits, as a signed int32


def test_gptq_v1_stores_each_zero_minus_one():
    zeros = torch.full((2, 16), 8, dtype=torch.int32)  # symmetric GPTQ: every zero is 8
    packed = gptq.pack(torch.zeros(64, 16, dtype=torch.int32), zeros, torch.ones(2, 16), torch.arange(64) // 32)
    assert packed["qzeros"].shape == (2, 2)
    assert (packed["qzeros"] == 0x77777777).all()
    assert packed["scales"].dtype == torch.float16 and packed["g_idx"].dtype == torch.int32


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_unpacking_gives_exactly_what_was_packed(act_order):
    in_features, out_features, group_size = 256, 64, 32
    codes, zeros, scales = _random_codes(in_features, out_features, group_size, seed=2)
    zeros[0, :8] = 0  # a zero of 0 borrows across nibbles in v1; the round trip must still be exact
    order = torch.randperm(in_features, generator=torch.Generator().manual_seed(3)) if act_order else None
    g_idx = torch.arange(in_features) // group_size
    if order is not None:
        g_idx = torch.empty_like(g_idx)
        g_idx[order] = torch.arange(in_features) // group_size
    packed = gptq.pack(codes, zeros, scales, g_idx)
    assert packed["qweight"].shape == (in_features // 8, out_features)
    assert packed["qzeros"].shape == (in_features // group_size, out_features // 8)
    unpacked_codes, unpacked_zeros = gptq.unpack(packed["qweight"], packed["qzeros"])
    assert torch.equal(unpacked_codes, codes) and torch.equal(unpacked_zeros, zeros)

    int4 = gptq.to_int4(packed, in_features, out_features, group_size, "layer")
    assert (int4.input_order is not None) == act_order
    assert torch.equal(dequantize_int4(int4), _published_weight(codes, zeros, scales, g_idx))


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_round_to_nearest_stays_within_half_a_step(sym, act_order):
    weight = torch.randn(32, 128) * 0.02
    order = torch.randperm(128, generator=torch.Generator().manual_seed(4)) if act_order else None
    codes, zeros, scales, g_idx = gptq.quantize_rtn(weight, 32, sym=sym, input_order=order)
    if sym:
        assert (zeros == 8).all()
    if act_order:
        assert not torch.equal(g_idx.long(), torch.arange(128) // 32)
        assert torch.equal(torch.bincount(g_idx.long()), torch.full((4,), 32))
    restored = _published_weight(codes, zeros, scales, g_idx.long())
    step = scales.to(torch.float32)[g_idx.long()].t()
    assert ((restored - weight).abs() <= step * HALF_STEP_FP16_SCALE).all()


def test_gptq_g_idx_with_unequal_groups_is_refused():
    codes, zeros, scales = _random_codes(64, 16, 32, seed=5)
    g_idx = torch.zeros(64, dtype=torch.int64)  # every input in group 0
    packed = gptq.pack(codes, zeros, scales, g_idx)
    with pytest.raises(CheckpointError, match="exactly 32 inputs in each of 2 groups"):
        gptq.to_int4(packed, 64, 16, 32, "model.layers.0.mlp.up_proj")


def test_gptq_tensor_of_the_wrong_shape_is_named():
    codes, zeros, scales = _random_codes(64, 16, 32, seed=6)
    packed = gptq.pack(codes, zeros, scales, torch.arange(64) // 32)
    with pytest.raises(CheckpointError, match=r"up_proj.qweight is torch.int32 \(8, 16\); .* torch.int32 \(16, 16\)"):
        gptq.to_int4(packed, 128, 16, 32, "up_proj")


# --- AWQ GEMM -----------------------------------------------------------------------------------


def test_awq_packs_outputs_in_nibble_order_0_2_4_6_1_3_5_7():
    values = torch.arange(8, dtype=torch.int32)[None, :]  # output column c has value c
    word = awq.pack_columns(values)
    # bits 4j hold column ORDER[j]: nibbles (low to high) 0, 2, 4, 6, 1, 3, 5, 7
    assert word.item() == 0x75316420


@pytest.mark.parametrize("group_size", [32, 128])
def test_awq_unpacking_gives_exactly_what_was_packed(group_size):
    in_features, out_features = 256, 48
    codes, zeros, scales = _random_codes(in_features, out_features, group_size, seed=7)
    packed = awq.pack(codes, zeros, scales)
    assert packed["qweight"].shape == (in_features, out_features // 8)
    assert packed["qzeros"].shape == (in_features // group_size, out_features // 8)
    unpacked_codes, unpacked_zeros = awq.unpack(packed["qweight"], packed["qzeros"])
    assert torch.equal(unpacked_codes, codes) and torch.equal(unpacked_zeros, zeros)
    int4 = awq.to_int4(packed, in_features, out_features, group_size, "layer")
    group_of = torch.arange(in_features) // group_size
    assert torch.equal(dequantize_int4(int4), _published_weight(codes, zeros, scales, group_of))


def test_awq_round_to_nearest_stays_within_half_a_step():
    weight = torch.randn(16, 128) * 0.02
    codes, zeros, scales = awq.quantize_rtn(weight, 64)
    group_of = torch.arange(128) // 64
    restored = _published_weight(codes, zeros, scales, group_of)
    step = scales.to(torch.float32)[group_of].t()
    assert ((restored - weight).abs() <= step * HALF_STEP_FP16_SCALE).all()
