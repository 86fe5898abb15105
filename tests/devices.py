"""The device/dtype cases the parity tests run beyond their CPU fp32 cases, and the rules they judge
reduced precision by.

CUDA cases are collected everywhere and skipped with a visible reason where PyTorch sees no GPU, so
`pytest -ra` lists what a CPU-only run did not check. fp32 on CUDA keeps the CPU tolerances (TF32 off:
TF32 matmuls are 10-bit-mantissa arithmetic, not fp32). In bf16/fp16 two correct implementations differ
by their own rounding, so omni is judged against the fp32 result, next to the reference in the same
dtype: omni may be at most twice as far from fp32 as the reference is (`REDUCED_PRECISION_FACTOR`).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

CUDA_REASON = "no CUDA device here (torch.cuda.is_available() is False); these cases run on a GPU machine"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
REDUCED_PRECISION_FACTOR = 2.0

# (device, dtype) beyond the CPU fp32 the existing tests cover.
LLM_CASES = [
    pytest.param("cpu", "bf16", id="cpu-bf16"),
    pytest.param("cuda", "fp32", id="cuda-fp32", marks=needs_cuda),
    pytest.param("cuda", "bf16", id="cuda-bf16", marks=needs_cuda),
    pytest.param("cuda", "fp16", id="cuda-fp16", marks=needs_cuda),
]
# omni runs the codec in fp32 on every device (there is no reduced-precision codec to compare)
CODEC_CASES = [pytest.param("cuda", id="cuda-fp32", marks=needs_cuda)]


@contextlib.contextmanager
def strict_fp32():
    """TF32 off for the duration (CUDA fp32 cases compare at the CPU tolerance)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def assert_no_worse_than_reference(actual: torch.Tensor, reference_same_dtype: torch.Tensor, fp32: torch.Tensor,
                                   what: str) -> None:
    """omni's reduced-precision result is at most REDUCED_PRECISION_FACTOR x as far from the fp32 result
    as the reference's own result in that dtype."""
    ours = (actual.float().cpu() - fp32.float().cpu()).abs().max().item()
    theirs = (reference_same_dtype.float().cpu() - fp32.float().cpu()).abs().max().item()
    assert theirs > 0, f"{what}: the reduced-precision reference equals fp32 exactly; the dtype did not apply"
    assert ours <= REDUCED_PRECISION_FACTOR * theirs, (
        f"{what}: omni is {ours:.3g} from fp32, the reference in the same dtype {theirs:.3g}")
