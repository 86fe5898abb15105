"""Our GPTQ v1 and AWQ GEMM packers against the libraries that write the published checkpoints.

gptqmodel (which wrote Qwen/Qwen2.5-Omni-7B-GPTQ-Int4) and AutoAWQ (which wrote -AWQ) are not omni
dependencies and need CUDA-era extras to install whole, so these tests skip where they cannot be
imported. To run them from the PyPI source archives, without installing either into the project:
    pip download --no-deps gptqmodel==7.7.0 autoawq==0.2.9   # unpack both
    pip install --no-deps --target REFSITE accelerate pypcre logbar device-smi tokenicer threadpoolctl defuser
    PYTHONPATH=gptqmodel-7.7.0:autoawq-0.2.9:REFSITE pytest tests/omni/quant/test_reference_packers.py
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest
import torch

from omni.quant import awq, gptq
from omni.quant.codes import dequantize_int4


def _autoawq_gemm():
    """AutoAWQ's WQLinear_GEMM without running `awq/__init__` (it imports its model zoo, which needs
    transformers 4.x): the package is registered empty and only the linear module is imported."""
    if "awq" not in sys.modules:
        spec = importlib.util.find_spec("awq")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("AutoAWQ is not importable here (see this file's docstring)")
        package = types.ModuleType("awq")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["awq"] = package
    try:
        return importlib.import_module("awq.modules.linear.gemm").WQLinear_GEMM
    except ImportError as exc:
        pytest.skip(f"AutoAWQ's linear module does not import here: {exc}")


@pytest.mark.parametrize("group_size", [32, 128])
def test_awq_packing_matches_autoawq(group_size):
    reference_class = _autoawq_gemm()
    in_features, out_features = 256, 64
    weight = torch.randn(out_features, in_features) * 0.02
    codes, zeros, scales = awq.quantize_rtn(weight, group_size)
    ours = awq.pack(codes, zeros, scales)

    # AutoAWQ packs a linear that holds the fake-quantized weight, with scales and zeros [groups, out]
    group_of = torch.arange(in_features) // group_size
    linear = torch.nn.Linear(in_features, out_features, bias=True)
    with torch.no_grad():
        linear.weight.copy_(((codes - zeros[group_of]).float() * scales.float()[group_of]).t())
    reference = reference_class.from_linear(linear, 4, group_size, scales=scales.float(), zeros=zeros.float())
    assert torch.equal(ours["qweight"], reference.qweight)
    assert torch.equal(ours["qzeros"], reference.qzeros)
    assert torch.equal(ours["scales"], reference.scales)

    # and AutoAWQ's own dequantization of our tensors gives our weights
    from awq.utils.packing_utils import dequantize_gemm

    theirs = dequantize_gemm(ours["qweight"], ours["qzeros"], ours["scales"], 4, group_size).float()
    ours_float = dequantize_int4(awq.to_int4(ours, in_features, out_features, group_size, "layer"))
    assert torch.equal(theirs.t(), ours_float.half().float())


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_v1_packing_matches_gptqmodel(sym, act_order):
    pytest.importorskip("gptqmodel", reason="gptqmodel is not importable here (see this file's docstring)")
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear
    from gptqmodel.utils.model import convert_gptq_v1_to_v2_format_module, convert_gptq_v2_to_v1_format_module

    in_features, out_features, group_size = 256, 64, 32
    weight = torch.randn(out_features, in_features) * 0.02
    order = torch.randperm(in_features, generator=torch.Generator().manual_seed(9)) if act_order else None
    codes, zeros, scales, g_idx = gptq.quantize_rtn(weight, group_size, sym=sym, input_order=order)
    if not sym:
        zeros[0, :3] = 0  # a v1 zero of 0 borrows from its neighbour: the case the two must agree on
    ours = gptq.pack(codes, zeros, scales, g_idx)

    def reference_linear():
        return TorchLinear(bits=4, group_size=group_size, sym=sym, desc_act=act_order, in_features=in_features,
                           out_features=out_features, bias=False, pack_dtype=torch.int32)

    # gptqmodel packs (v2 zeros) from the fake-quantized weight and scales/zeros [out, groups], then
    # converts to the v1 checkpoint format on saving
    linear = torch.nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        linear.weight.copy_(((codes - zeros[g_idx.long()]).float() * scales.float()[g_idx.long()]).t())
    packer = reference_linear()
    packer.pack_original(linear, scales.t().float(), zeros.t().float(), g_idx=g_idx.to(torch.int32))
    convert_gptq_v2_to_v1_format_module(packer, quantize_config=types.SimpleNamespace(bits=4, pack_dtype=torch.int32))
    assert torch.equal(ours["qweight"], packer.qweight)
    assert torch.equal(ours["qzeros"], packer.qzeros)
    assert torch.equal(ours["scales"], packer.scales)
    assert torch.equal(ours["g_idx"], packer.g_idx.to(torch.int32))

    # gptqmodel's loader (v1 -> v2, then its dequantization) reads our tensors as our loader does
    loader = reference_linear()
    for key in ("qweight", "qzeros", "scales", "g_idx"):
        getattr(loader, key).copy_(ours[key])
    convert_gptq_v1_to_v2_format_module(loader, bits=4, pack_dtype=torch.int32)
    if hasattr(loader, "post_init"):
        loader.post_init()
    theirs = loader.dequantize_weight().float()
    ours_float = dequantize_int4(gptq.to_int4(ours, in_features, out_features, group_size, "layer"))
    assert torch.equal(theirs.t(), ours_float.half().float())
