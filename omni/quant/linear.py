"""`QuantLinear`: a weight-only int8 or int4 linear on PyTorch's own kernels, on CPU and CUDA.

- int8, per output channel: `aten._weight_int8pack_mm(x, int8 [out, in], scales [out])` (CPU and CUDA).
- int4, group-wise: `aten._weight_int4pack_mm_for_cpu` on the CPU (weight packed by
  `_convert_weight_to_int4pack_for_cpu` from int32 codes [out, in]) and tinygemm
  `aten._weight_int4pack_mm` on CUDA (bf16 only, sm80+; weight packed by `_convert_weight_to_int4pack`
  from uint8 [out, in/2] holding two codes a byte, the even input in the high nibble, as torchao's
  tensor-core layout passes it). Both take scales and offsets as one [in/group, out, 2] tensor and
  compute (code - 8) * scale + offset.

Which dtype the kernels run in (`kernel_dtype`): bf16 on the CPU whatever the model's dtype, because
there PyTorch 2.14's int8/int4 kernels are fast only for bf16 (one row through a 2048 -> 11008 linear
on a 2-core AVX-512 EPYC: int8 0.7-0.9 ms and int4 0.6 ms in bf16, against 9.4 / 19.6 ms in fp32 and
16.6 / 22.7 ms in fp16, and 2.2 ms for the plain bf16 product); scales are stored and codes made in
bf16 there, and fp32/fp16 activations are rounded to bf16 for the product. On CUDA, tinygemm is bf16
only and int8 keeps the model's dtype. The CPU kernels are matrix-vector loops whose time grows with
the rows: from 8 (int8) or 16 (int4) rows on they lose to the plain bf16 product (64 rows: int8 27 ms,
int4 17 ms, plain 8.5 ms), so an int8 layer given `DENSE_ROWS` rows or more (a prefill) multiplies by its codes
converted to the activations' dtype instead (27 ms at 64 rows, 45 ms against 104 at 256); int4's
packed layout cannot be converted back cheaply, and its prefill stays on the kernel.

The packed layouts are the kernels' own (the CPU one even depends on the CPU's vector width), so a
QuantLinear is packed for one device type when it is built and refuses to run on another.
Its buffers are not part of the state dict: the checkpoint's names stay those of the source
(`weight` of a full-precision file, `qweight`/`qzeros`/`scales`/`g_idx` of a GPTQ one), and only
`bias` (kept in the model's dtype) is a parameter.
"""

from __future__ import annotations

import torch
from torch import nn

from omni.errors import OmniError
from omni.quant.codes import Int4Codes, Int8Codes

_CUDA_INNER_K_TILES = (8, 4, 2)
DENSE_ROWS = 64  # int8 on the CPU: from this many rows on, convert the codes and use the plain product


def kernel_dtype(device_type: str, bits: int, model_dtype: torch.dtype) -> torch.dtype:
    """The dtype a QuantLinear's kernel computes in, and its scales are stored in (see the module doc)."""
    if device_type == "cpu" or bits == 4:
        return torch.bfloat16
    return model_dtype


class QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, bits: int, group_size: int | None = None,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        if bits not in (4, 8):
            raise OmniError(f"QuantLinear holds 8- or 4-bit weights, not {bits}-bit")
        self.in_features = in_features
        self.out_features = out_features
        self.bits = bits
        self.group_size = group_size
        self.packed_for: str | None = None  # the device type the buffers are packed for
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device)) if bias else None
        self.register_buffer("packed_weight", None, persistent=False)
        self.register_buffer("scales", None, persistent=False)
        self.register_buffer("input_order", None, persistent=False)

    @classmethod
    def like(cls, linear: nn.Linear, bits: int, group_size: int | None = None) -> QuantLinear:
        """An unfilled QuantLinear of `linear`'s shape (bias in its dtype, on its device: meta while loading)."""
        return cls(linear.in_features, linear.out_features, linear.bias is not None, bits, group_size,
                   dtype=linear.weight.dtype, device=linear.weight.device)

    # ------------------------------------------------------------------------------------------
    # Packing

    def set_int8(self, codes: Int8Codes, dtype: torch.dtype, device: torch.device) -> None:
        """Pack int8 codes for `device`; `dtype` is the model's (the scales go to kernel_dtype)."""
        self._check_shape(codes.codes.shape)
        device = torch.device(device)
        self.packed_weight = codes.codes.to(device=device, dtype=torch.int8).contiguous()
        self.scales = codes.scales.to(device=device, dtype=kernel_dtype(device.type, 8, dtype)).contiguous()
        self.packed_for = device.type

    def set_int4(self, codes: Int4Codes, dtype: torch.dtype, device: torch.device) -> None:
        self._check_shape(codes.codes.shape)
        device = torch.device(device)
        check_int4_shape(self.out_features, self.in_features, codes.group_size, device.type, name="")
        dtype = kernel_dtype(device.type, 4, dtype)
        if device.type == "cuda":
            pairs = codes.codes.to(device=device, dtype=torch.uint8)
            packed_input = ((pairs[:, 0::2] << 4) | pairs[:, 1::2]).contiguous()
            inner_k_tiles = next(t for t in _CUDA_INNER_K_TILES if self.in_features % (16 * t) == 0)
            self.packed_weight = torch.ops.aten._convert_weight_to_int4pack(packed_input, inner_k_tiles)
        else:
            self.packed_weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                codes.codes.to(device=device, dtype=torch.int32).contiguous(), 1)
        # [out, groups] x 2 -> [groups, out, 2], the kernels' order
        self.scales = torch.stack([codes.scales, codes.offsets], dim=-1).transpose(0, 1).to(
            device=device, dtype=dtype).contiguous()
        self.input_order = None if codes.input_order is None else codes.input_order.to(device).contiguous()
        self.group_size = codes.group_size
        self.packed_for = device.type

    def _check_shape(self, shape: torch.Size) -> None:
        if tuple(shape) != (self.out_features, self.in_features):
            raise OmniError(f"quantized codes of shape {tuple(shape)} do not fit a {self.in_features} -> "
                            f"{self.out_features} linear")

    # ------------------------------------------------------------------------------------------

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.device.type != self.packed_for:
            raise OmniError(f"this QuantLinear was packed for {self.packed_for}, and PyTorch's int{self.bits} layouts "
                            f"differ by device: load the model with device={hidden.device.type!r} instead of moving it")
        shape = hidden.shape
        rows = hidden.reshape(-1, shape[-1])
        if self.input_order is not None:
            rows = rows.index_select(1, self.input_order)
        if self.bits == 8 and self.packed_for == "cpu" and rows.shape[0] >= DENSE_ROWS:
            out = torch.nn.functional.linear(rows, self.packed_weight.to(rows.dtype)) * self.scales.to(rows.dtype)
        else:
            rows = rows.to(self.scales.dtype).contiguous()
            if self.bits == 8:
                out = torch.ops.aten._weight_int8pack_mm(rows, self.packed_weight, self.scales)
            elif self.packed_for == "cuda":
                out = torch.ops.aten._weight_int4pack_mm(rows, self.packed_weight, self.group_size, self.scales)
            else:
                out = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.packed_weight, self.group_size,
                                                                 self.scales)
            out = out.to(hidden.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the packed weight and its scales (and act-order permutation): what quantizing saves to."""
        return sum(t.numel() * t.element_size() for t in (self.packed_weight, self.scales, self.input_order)
                   if t is not None)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        order = ", act_order=True" if self.input_order is not None else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"int{self.bits}{group}{order}, packed_for={self.packed_for}")


def check_int4_shape(out_features: int, in_features: int, group_size: int, device_type: str, name: str) -> None:
    """The int4 kernels' shape limits, as an OmniError naming the linear and the limit."""
    where = f"{name}: " if name else ""
    if in_features % group_size:
        raise OmniError(f"{where}int4 group size {group_size} does not divide the input width {in_features}; choose a "
                        f"group size that divides every quantized linear's input width (e.g. int4:32)")
    multiple = 8 if device_type == "cuda" else 16
    if out_features % multiple:
        raise OmniError(f"{where}output width {out_features} is not a multiple of {multiple}, which PyTorch's int4 "
                        f"kernel on {device_type} needs; use --quantize int8 for this model")
    if device_type == "cuda" and in_features % 32:
        raise OmniError(f"{where}input width {in_features} is not a multiple of 32, which PyTorch's CUDA int4 "
                        f"kernel needs; use --quantize int8 for this model")
