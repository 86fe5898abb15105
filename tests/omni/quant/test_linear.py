"""QuantLinear on PyTorch's int8/int4 kernels against a plain dequantize-then-matmul."""

from __future__ import annotations

import pytest
import torch

from omni.errors import InputError, OmniError
from omni.quant.codes import (
    Int4Codes,
    dequantize_int4,
    dequantize_int8,
    int4_from_zero_points,
    quantize_int4,
    quantize_int8,
)
from omni.quant.linear import DENSE_ROWS, QuantLinear, kernel_dtype
from omni.quant.spec import QuantSpec

CPU = torch.device("cpu")


def _linear(in_features: int, out_features: int, bias: bool, dtype: torch.dtype) -> torch.nn.Linear:
    linear = torch.nn.Linear(in_features, out_features, bias=bias).to(dtype)
    torch.nn.init.normal_(linear.weight, std=0.02)
    if bias:
        torch.nn.init.normal_(linear.bias, std=0.02)
    return linear


def _reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """fp64 product of x (as given, in its dtype) and the dequantized weight; and the error scale of a
    bf16/fp16 product: sum |x| |w| per output, the bound rounding each weight and output scales with."""
    x64, w64 = x.to(torch.float64), weight.to(torch.float64)
    out = x64 @ w64.t() + (0 if bias is None else bias.to(torch.float64))
    return out, x64.abs() @ w64.abs().t()


def _tolerance(compute: torch.dtype) -> float:
    """fp32: summation order only; bf16/fp16: a few units of that dtype's rounding (of the inputs,
    the weights as the kernel holds them, and the output) on each term's size."""
    return 1e-5 if compute == torch.float32 else 4 * torch.finfo(compute).eps


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch", [1, 5, 30])  # 3, 15 rows: the int8 kernel; 90 rows: the codes converted
def test_int8_matches_dequantize_then_matmul(dtype, batch):
    linear = _linear(256, 96, bias=True, dtype=dtype)
    codes = quantize_int8(linear.weight, kernel_dtype("cpu", 8, dtype))
    layer = QuantLinear.like(linear, bits=8)
    layer.bias = linear.bias
    layer.set_int8(codes, dtype, CPU)
    x = torch.randn(batch, 3, 256).to(dtype)
    out = layer(x)
    assert out.shape == (batch, 3, 96) and out.dtype == dtype
    expected, scale = _reference(x.reshape(-1, 256), dequantize_int8(codes), linear.bias)
    error = (out.reshape(-1, 96).to(torch.float64) - expected).abs()
    # on the CPU the kernel computes in bf16; DENSE_ROWS rows or more multiply in the model's dtype
    compute = dtype if batch * 3 >= DENSE_ROWS else torch.bfloat16
    assert (error <= _tolerance(compute) * (scale + 1e-3)).all(), error.max()


def test_int8_codes_are_the_nearest_int8_of_each_weight():
    weight = torch.randn(64, 128)
    codes = quantize_int8(weight, torch.float32)
    assert codes.codes.dtype == torch.int8
    assert codes.codes.abs().amax(dim=1).eq(127).all()  # the largest weight of a row maps to +-127
    error = (dequantize_int8(codes) - weight).abs()
    assert (error <= codes.scales[:, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
def test_int4_matches_dequantize_then_matmul(dtype, group_size):
    linear = _linear(512, 48, bias=False, dtype=dtype)
    codes = quantize_int4(linear.weight, group_size, kernel_dtype("cpu", 4, dtype))
    layer = QuantLinear.like(linear, bits=4, group_size=group_size)
    layer.set_int4(codes, dtype, CPU)
    x = torch.randn(3, 512).to(dtype)
    out = layer(x)
    assert out.dtype == dtype
    expected, scale = _reference(x, dequantize_int4(codes), None)
    error = (out.to(torch.float64) - expected).abs()
    assert (error <= _tolerance(torch.bfloat16) * (scale + 1e-3)).all(), error.max()  # the CPU kernel runs bf16


def test_int4_codes_stay_within_half_a_step_of_each_weight():
    weight = torch.randn(32, 256)
    codes = quantize_int4(weight, 64, torch.float32)
    assert int(codes.codes.max()) <= 15 and codes.codes.dtype == torch.uint8
    step = codes.scales.repeat_interleave(64, dim=1)
    assert ((dequantize_int4(codes) - weight).abs() <= step / 2 + 1e-6).all()


def test_int4_with_an_input_permutation_reads_the_inputs_in_that_order():
    """Act-order GPTQ: groups are sets of scattered input features; the layer gathers them first."""
    in_features, out_features, group_size = 256, 32, 64
    generator = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 16, (in_features, out_features), generator=generator, dtype=torch.int32)
    zeros = torch.randint(1, 16, (in_features // group_size, out_features), generator=generator)
    scales = (torch.rand(in_features // group_size, out_features, generator=generator) * 0.01 + 0.001).half()
    group_of = torch.randperm(in_features, generator=generator) // group_size
    int4 = int4_from_zero_points(codes, zeros, scales, group_of, group_size)
    assert int4.input_order is not None
    # the reference: w[n, k] = (q[k, n] - z[g(k), n]) * s[g(k), n], straight from the published formula
    weight = ((codes - zeros[group_of]).to(torch.float32) * scales[group_of].to(torch.float32)).t()
    assert torch.equal(dequantize_int4(int4), weight)
    layer = QuantLinear(in_features, out_features, bias=False, bits=4, group_size=group_size)
    layer.set_int4(int4, torch.float32, CPU)
    x = torch.randn(2, in_features)
    # the reference with the scales and offsets rounded to bf16, as the CPU kernel holds them
    int4.scales, int4.offsets = int4.scales.bfloat16().float(), int4.offsets.bfloat16().float()
    expected, scale = _reference(x, dequantize_int4(int4), None)
    assert ((layer(x).to(torch.float64) - expected).abs() <= _tolerance(torch.bfloat16) * (scale + 1e-3)).all()


def test_int4_group_size_that_does_not_divide_the_width_is_refused():
    layer = QuantLinear(96, 32, bias=False, bits=4, group_size=64)
    codes = Int4Codes(torch.zeros(32, 96, dtype=torch.uint8), torch.ones(32, 1), torch.zeros(32, 1), 64)
    with pytest.raises(OmniError, match="group size 64 does not divide the input width 96"):
        layer.set_int4(codes, torch.float32, CPU)


def test_int4_output_width_the_cpu_kernel_cannot_take_is_refused():
    layer = QuantLinear(64, 24, bias=False, bits=4, group_size=32)
    codes = quantize_int4(torch.randn(24, 64), 32, torch.float32)
    with pytest.raises(OmniError, match="output width 24 is not a multiple of 16"):
        layer.set_int4(codes, torch.float32, CPU)


@pytest.mark.parametrize("text, message", [
    ("int3", "must be one of int8, int4"),
    ("int4:48", "group size must be one of 32, 64, 128, 256"),
    ("int4:big", "must be a whole number"),
    ("int8:128", "takes no group size"),
])
def test_bad_quantize_options_name_the_problem(text, message):
    with pytest.raises(InputError, match=message):
        QuantSpec.parse(text)


def test_quantize_options_parse():
    assert QuantSpec.parse("int8") == QuantSpec("int8")
    assert QuantSpec.parse("INT4") == QuantSpec("int4", 128)
    assert QuantSpec.parse("int4:32") == QuantSpec("int4", 32)
    assert QuantSpec.parse("none") is None and QuantSpec.parse(None) is None


def test_matrices_taller_than_one_row_block_are_quantized_whole():
    """quantize_* work in blocks of ROW_BLOCK rows; every block must match the one-shot formula."""
    from omni.quant.codes import ROW_BLOCK

    weight = torch.randn(2 * ROW_BLOCK + 37, 64)
    int8 = quantize_int8(weight, torch.bfloat16)
    scales = (weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float16).tiny).to(torch.bfloat16)
    assert torch.equal(int8.scales, scales)
    assert torch.equal(int8.codes, torch.round(weight / scales.float()[:, None]).clamp(-128, 127).to(torch.int8))
    int4 = quantize_int4(weight, 32, torch.float32)
    groups = weight.reshape(-1, 2, 32)
    assert torch.equal(int4.scales, (groups.amax(2) - groups.amin(2)) / 15)
    assert ((dequantize_int4(int4) - weight).abs() <= int4.scales.repeat_interleave(32, dim=1) / 2 + 1e-6).all()
