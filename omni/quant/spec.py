"""What to quantize and how: the `--quantize` option, and the `quantization_config` of a published
GPTQ or AWQ checkpoint, each parsed and checked in one place.

Both end up in one `QuantLinear` (omni.quant.linear) per Thinker decoder linear. The limits below
are the core PyTorch kernels' (`_weight_int4pack_mm_for_cpu`, `_weight_int4pack_mm`): int4 groups of
32, 64, 128 or 256 input features, a group size that divides every quantized linear's input width,
and (CPU) output widths that are multiples of 16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omni.errors import CheckpointError, InputError

MODES = ("int8", "int4")
KERNEL_GROUP_SIZES = (32, 64, 128, 256)
DEFAULT_GROUP_SIZE = 128  # the published GPTQ/AWQ checkpoints' group size
# Only these linears of the Thinker's decoder are quantized, as in the published GPTQ/AWQ files;
# embeddings, norms, the lm_head, the encoders, the Talker and the codec keep their dtype.
DECODER_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass(frozen=True)
class QuantSpec:
    """Quantize at load time: int8 per output channel, or int4 in groups of `group_size` inputs."""

    mode: str
    group_size: int = DEFAULT_GROUP_SIZE  # int4 only

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"--quantize must be one of {', '.join(MODES)} (int4:GROUP for another group "
                             f"size), got {self.mode!r}")
        if self.mode == "int4" and self.group_size not in KERNEL_GROUP_SIZES:
            raise InputError(f"int4 group size must be one of {', '.join(map(str, KERNEL_GROUP_SIZES))} (the "
                             f"limits of PyTorch's int4 kernels), got {self.group_size}")

    @property
    def bits(self) -> int:
        return 8 if self.mode == "int8" else 4

    @classmethod
    def parse(cls, text: str | QuantSpec | None) -> QuantSpec | None:
        """'int8', 'int4', 'int4:64' (int4 in groups of 64); None or 'none' for no quantization."""
        if text is None or isinstance(text, QuantSpec):
            return text
        value = text.strip().lower()
        if value in ("", "none", "no", "off"):
            return None
        mode, _, group = value.partition(":")
        if mode == "int8" and group:
            raise InputError(f"int8 is quantized per output channel and takes no group size; got {text!r}")
        if not group:
            return cls(mode)
        if not group.isdigit():
            raise InputError(f"the group size in --quantize {text!r} must be a whole number, e.g. int4:128")
        return cls(mode, int(group))

    def describe(self) -> str:
        return "int8 per output channel" if self.mode == "int8" else f"int4 in groups of {self.group_size}"


@dataclass(frozen=True)
class PublishedQuant:
    """A checkpoint's own `quantization_config`: GPTQ (v1 layout) or AWQ (GEMM layout), 4 bit."""

    method: str  # "gptq" | "awq"
    group_size: int
    desc_act: bool = False  # GPTQ act-order: g_idx is a permutation of the groups
    sym: bool = True  # GPTQ symmetric: every zero is 8 (stored as 7)
    raw: dict[str, Any] | None = None

    def describe(self) -> str:
        extra = f", act-order {self.desc_act}, sym {self.sym}" if self.method == "gptq" else ""
        return f"{self.method.upper()} 4 bit, group {self.group_size}{extra}"


def parse_quantization_config(raw: dict[str, Any], source: str) -> PublishedQuant:
    """Check a config.json `quantization_config` against what omni loads; a clear error otherwise."""
    method = str(raw.get("quant_method", "")).lower()
    if method not in ("gptq", "awq"):
        raise CheckpointError(f"{source}: quantization_config has quant_method {raw.get('quant_method')!r}; omni loads "
                              "'gptq' (GPTQ v1 layout) and 'awq' (AWQ GEMM layout) checkpoints, or quantizes full-"
                              "precision weights itself with --quantize int8|int4")
    bits = raw.get("bits", raw.get("w_bit"))
    if bits != 4:
        raise CheckpointError(f"{source}: {method} checkpoints with {bits} bits are not supported; omni loads 4-bit "
                              "ones")
    group_size = raw.get("group_size", raw.get("q_group_size"))
    if group_size not in KERNEL_GROUP_SIZES:
        raise CheckpointError(f"{source}: group_size {group_size} is not one of "
                              f"{', '.join(map(str, KERNEL_GROUP_SIZES))} (the limits of PyTorch's int4 kernels)")
    if method == "gptq":
        checkpoint_format = str(raw.get("checkpoint_format", "gptq")).lower()
        if checkpoint_format != "gptq":
            raise CheckpointError(f"{source}: GPTQ checkpoint_format {checkpoint_format!r} is not supported; omni "
                                  "reads the published v1 layout ('gptq': qzeros stored minus one)")
        pack_dtype = str(raw.get("pack_dtype", "int32")).lower()
        if pack_dtype != "int32":
            raise CheckpointError(f"{source}: GPTQ pack_dtype {pack_dtype!r} is not supported (int32 only)")
        if raw.get("lm_head"):
            raise CheckpointError(f"{source}: a quantized lm_head is not supported (only the Thinker's decoder "
                                  "linears)")
        return PublishedQuant("gptq", int(group_size), bool(raw.get("desc_act", False)), bool(raw.get("sym", True)),
                              raw)
    version = str(raw.get("version", "gemm")).lower()
    if version != "gemm":
        raise CheckpointError(f"{source}: AWQ version {version!r} is not supported; omni reads the GEMM layout")
    if not raw.get("zero_point", True):
        raise CheckpointError(f"{source}: AWQ without zero points is not supported (zero_point must be true)")
    return PublishedQuant("awq", int(group_size), raw=raw)
