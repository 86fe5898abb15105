"""Rewrite a full-precision checkpoint's Thinker decoder linears in a published 4-bit layout: GPTQ v1
(as gptqmodel writes Qwen/Qwen2.5-Omni-7B-GPTQ-Int4) or AWQ GEMM (as AutoAWQ writes
Qwen/Qwen2.5-Omni-7B-AWQ), with the `quantization_config` those files carry in config.json.

Each linear's `weight` becomes `qweight`, `qzeros`, `scales` (+ `g_idx` for GPTQ) and its bias goes
to fp16, as both libraries store it; every other tensor is left as it is. The values are
round-to-nearest (the formats' own quantizers without the calibration step, see omni.quant.gptq and
omni.quant.awq): a test checkpoint for the loader, not a calibrated model. Shards are rewritten one
at a time, so the host holds at most one shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from omni.errors import OmniError
from omni.quant import awq, gptq
from omni.quant.loader import decoder_linear_names
from omni.tools.make_checkpoint import build_once
from omni.quant.spec import KERNEL_GROUP_SIZES

METHODS = ("gptq", "awq")
_PREFERRED_GROUP_SIZES = (128, 64, 32)  # the published 128 where the widths allow it


def quantization_config(method: str, group_size: int, desc_act: bool, sym: bool) -> dict:
    """config.json's `quantization_config`, with the keys gptqmodel 2.0 / AutoAWQ 0.2.9 write."""
    if method == "gptq":
        return {"bits": 4, "group_size": group_size, "desc_act": desc_act, "sym": sym, "lm_head": False,
                "quant_method": "gptq", "checkpoint_format": "gptq", "pack_dtype": "int32",
                "meta": {"quantizer": ["omni make-checkpoint (round-to-nearest, random weights)"]}}
    return {"bits": 4, "group_size": group_size, "quant_method": "awq", "version": "gemm", "zero_point": True,
            "modules_to_not_convert": None}


def pick_group_size(in_widths: set[int], requested: int | None) -> int:
    if requested is not None:
        if requested not in KERNEL_GROUP_SIZES or any(width % requested for width in in_widths):
            raise OmniError(f"group size {requested} must be one of {', '.join(map(str, KERNEL_GROUP_SIZES))} and "
                            f"divide every decoder linear's input width ({', '.join(map(str, sorted(in_widths)))})")
        return requested
    for size in _PREFERRED_GROUP_SIZES:
        if all(width % size == 0 for width in in_widths):
            return size
    raise OmniError(f"no int4 group size of {', '.join(map(str, _PREFERRED_GROUP_SIZES))} divides the decoder's input "
                    f"widths {sorted(in_widths)}")


def _read_index(directory: Path) -> dict[str, str]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return dict(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
    from safetensors import safe_open

    with safe_open(str(directory / "model.safetensors"), framework="pt") as handle:
        return {name: "model.safetensors" for name in handle.keys()}


def quantize_checkpoint(directory: str | os.PathLike, method: str, group_size: int | None = None,
                        desc_act: bool = False, sym: bool = True, seed: int = 0) -> dict:
    """Rewrite `directory` in place in `method`'s layout; returns the quantization_config written.

    desc_act (GPTQ only): act-order, groups of scattered inputs, the order drawn from `seed` (GPTQ
    orders by the Hessian diagonal of calibration inputs, which a random checkpoint has none of)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    if method not in METHODS:
        raise OmniError(f"--quantize for make-checkpoint must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "awq" and (desc_act or not sym):
        raise OmniError("act-order and symmetric/asymmetric choices are GPTQ options; AWQ always has zero points")
    directory = Path(directory)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if "quantization_config" in config:
        raise OmniError(f"{directory} is already quantized ({config['quantization_config'].get('quant_method')})")
    layers = config["thinker_config"]["text_config"]["num_hidden_layers"]
    linears = set(decoder_linear_names(layers))
    file_of = _read_index(directory)
    shapes = {}
    for file_name in sorted(set(file_of.values())):
        with safe_open(str(directory / file_name), framework="pt") as handle:
            for name in handle.keys():
                if name.removesuffix(".weight") in linears and name.endswith(".weight"):
                    shapes[name.removesuffix(".weight")] = tuple(handle.get_slice(name).get_shape())
    if set(shapes) != linears:
        raise OmniError(f"{directory} lacks decoder linear weights: {sorted(linears - set(shapes))[:3]}")
    for path, (out_features, _) in shapes.items():
        if out_features % 8:
            raise OmniError(f"{path}: output width {out_features} is not a multiple of 8, which 4-bit packing needs")
    group = pick_group_size({in_features for _, in_features in shapes.values()}, group_size)
    generator = torch.Generator().manual_seed(seed)

    new_map: dict[str, str] = {}
    total_bytes = 0
    for file_name in sorted(set(file_of.values())):
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(directory / file_name), framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                path, _, suffix = name.rpartition(".")
                if path in linears and suffix == "weight":
                    tensors.update(_packed(path, tensor, method, group, desc_act, sym, generator))
                elif path in linears and suffix == "bias":
                    tensors[name] = tensor.to(torch.float16)  # both libraries store the bias in fp16
                else:
                    tensors[name] = tensor
        scratch = directory / f"{file_name}.quantizing"
        save_file(tensors, str(scratch), metadata={"format": "pt"})
        scratch.replace(directory / file_name)
        new_map.update({name: file_name for name in tensors})
        total_bytes += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        raw = json.loads(index.read_text(encoding="utf-8"))
        raw["metadata"] = {**raw.get("metadata", {}), "total_size": total_bytes}
        raw["weight_map"] = dict(sorted(new_map.items()))
        index.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    section = quantization_config(method, group, desc_act, sym)
    config["quantization_config"] = section
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return section


def _packed(path: str, weight: torch.Tensor, method: str, group_size: int, desc_act: bool, sym: bool,
            generator: torch.Generator) -> dict[str, torch.Tensor]:
    if method == "awq":
        codes, zeros, scales = awq.quantize_rtn(weight, group_size)
        packed = awq.pack(codes, zeros, scales)
    else:
        order = torch.randperm(weight.shape[1], generator=generator) if desc_act else None
        codes, zeros, scales, g_idx = gptq.quantize_rtn(weight, group_size, sym=sym, input_order=order)
        packed = gptq.pack(codes, zeros, scales, g_idx)
    return {f"{path}.{key}": value for key, value in packed.items()}


def cached_quantized_checkpoint(preset: str, method: str, desc_act: bool = False, group_size: int | None = None,
                                cache_dir: str | os.PathLike | None = None) -> Path:
    """A `method` copy of the cached `preset` checkpoint (tests and benchmarks), rebuilt when the base
    checkpoint or the packing code changes."""
    from omni.tools.make_checkpoint import cached_checkpoint

    base = cached_checkpoint(preset, cache_dir)
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256(base.name.encode())
    for module in ("tools/quantized_checkpoint.py", "quant/gptq.py", "quant/awq.py"):
        digest.update((package / module).read_bytes())
    suffix = f"{method}{'-act-order' if desc_act else ''}{f'-g{group_size}' if group_size else ''}"
    target = base.with_name(f"{preset}-{suffix}-{digest.hexdigest()[:12]}")
    def build(scratch: Path) -> None:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(base, scratch, symlinks=True)
        (scratch / "complete").unlink(missing_ok=True)
        quantize_checkpoint(scratch, method, group_size=group_size, desc_act=desc_act)

    return build_once(target, build)
