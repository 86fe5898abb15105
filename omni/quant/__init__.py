"""Low-memory weights for the Thinker's decoder: int8/int4 quantized while loading, and the published
GPTQ (v1) and AWQ (GEMM) 4-bit checkpoints, all run by one `QuantLinear` on PyTorch's own kernels.

- `spec`: the `--quantize` option and a checkpoint's `quantization_config`, checked;
- `codes`: integer codes of a weight, made and reversed in plain float arithmetic (the reference);
- `linear`: `QuantLinear`, packed for the CPU or CUDA kernels;
- `gptq`, `awq`: the published layouts, packed and unpacked;
- `loader`: QuantLinears placed on the meta model and filled tensor by tensor while loading;
- `footprint`: weight bytes and peak memory.
"""

from omni.quant.linear import QuantLinear
from omni.quant.spec import PublishedQuant, QuantSpec

__all__ = ["PublishedQuant", "QuantLinear", "QuantSpec"]
