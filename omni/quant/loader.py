"""Quantized linears while a checkpoint loads: placed on the meta model before any memory is taken,
filled tensor by tensor as the checkpoint is read.

The Thinker's decoder linears become `QuantLinear`s before the model is materialised, so their
full-precision weights are never allocated. Each checkpoint tensor that belongs to one of them is
handed to `take()` as it is read: a full-precision `weight` is quantized at once (int8 or int4, on
the target device) and dropped; a GPTQ/AWQ linear's packed tensors are held until its last one
arrives (a few int4-sized tensors), then repacked for the kernel. At no point is more than one
linear's full-precision weight alive, so loading peaks near the quantized model's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from omni.errors import CheckpointError, OmniError
from omni.quant import awq, gptq
from omni.quant.codes import quantize_int4, quantize_int8
from omni.quant.linear import QuantLinear, check_int4_shape, kernel_dtype
from omni.quant.spec import DECODER_LINEARS, PublishedQuant, QuantSpec

_PACKED_TENSORS = {"gptq": gptq.TENSORS, "awq": awq.TENSORS}


def decoder_linear_names(num_layers: int) -> list[str]:
    """The module paths of the Thinker's decoder linears, the ones quantization touches."""
    return [f"thinker.model.layers.{layer}.{linear}" for layer in range(num_layers) for linear in DECODER_LINEARS]


def choose(requested: QuantSpec | None, published: PublishedQuant | None, directory
           ) -> QuantSpec | PublishedQuant | None:
    """What the load quantizes with: the checkpoint's own format, or the requested mode, not both."""
    if published is not None and requested is not None:
        raise OmniError(f"{directory} is already quantized ({published.describe()}); load it without --quantize "
                        f"{requested.mode}")
    return published or requested


@dataclass
class QuantizedLinears:
    source: QuantSpec | PublishedQuant
    dtype: torch.dtype
    device: torch.device
    modules: dict[str, QuantLinear] = field(default_factory=dict)
    _pending: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def install(cls, model: nn.Module, source: QuantSpec | PublishedQuant, dtype: torch.dtype,
                device: torch.device) -> QuantizedLinears:
        """Swap the decoder linears of `model` (still on the meta device) for unfilled QuantLinears.
        Shape limits are checked here, before any weight is read."""
        installed = cls(source, dtype, device)
        group_size = None if isinstance(source, QuantSpec) and source.mode == "int8" else source.group_size
        bits = 8 if group_size is None else 4
        for path in decoder_linear_names(len(model.thinker.model.layers)):
            parent_path, _, child = path.rpartition(".")
            parent = model.get_submodule(parent_path)
            linear = getattr(parent, child)
            if bits == 4:
                check_int4_shape(linear.out_features, linear.in_features, group_size, device.type, name=path)
            layer = QuantLinear.like(linear, bits=bits, group_size=group_size)
            setattr(parent, child, layer)
            installed.modules[path] = layer
        return installed

    @property
    def method(self) -> str:
        return self.source.mode if isinstance(self.source, QuantSpec) else self.source.method

    def describe(self) -> str:
        return self.source.describe()

    def checkpoint_names(self) -> set[str]:
        """The tensor names the checkpoint must hold for these linears (bias aside: a parameter)."""
        suffixes = ("weight",) if isinstance(self.source, QuantSpec) else _PACKED_TENSORS[self.source.method]
        return {f"{path}.{suffix}" for path in self.modules for suffix in suffixes}

    def owns(self, name: str) -> bool:
        path, _, suffix = name.rpartition(".")
        return path in self.modules and suffix != "bias"

    def take(self, name: str, tensor: torch.Tensor) -> None:
        path, _, suffix = name.rpartition(".")
        layer = self.modules[path]
        if isinstance(self.source, QuantSpec):
            self._quantize(path, layer, tensor)
            return
        pending = self._pending.setdefault(path, {})
        pending[suffix] = tensor
        if len(pending) == len(_PACKED_TENSORS[self.source.method]):
            del self._pending[path]
            codes = (gptq if self.source.method == "gptq" else awq).to_int4(
                pending, layer.in_features, layer.out_features, self.source.group_size, path)
            layer.set_int4(codes, self.dtype, self.device)

    def _quantize(self, path: str, layer: QuantLinear, weight: torch.Tensor) -> None:
        if tuple(weight.shape) != (layer.out_features, layer.in_features):
            raise CheckpointError(f"{path}.weight has shape {tuple(weight.shape)}, but config.json makes it "
                                  f"{(layer.out_features, layer.in_features)}")
        weight = weight.to(self.device)
        # codes made with the scales as the kernel will hold them
        scale_dtype = kernel_dtype(self.device.type, layer.bits, self.dtype)
        if self.source.mode == "int8":
            layer.set_int8(quantize_int8(weight, scale_dtype), self.dtype, self.device)
        else:
            layer.set_int4(quantize_int4(weight, self.source.group_size, scale_dtype), self.dtype, self.device)

    def finish(self) -> None:
        unfilled = sorted(path for path, layer in self.modules.items() if layer.packed_weight is None)
        if unfilled:
            raise CheckpointError(f"{len(unfilled)} quantized linears were not filled (first: {unfilled[0]})")

    @property
    def weight_bytes(self) -> int:
        return sum(layer.weight_bytes for layer in self.modules.values())
