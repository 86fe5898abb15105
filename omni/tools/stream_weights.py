"""Random weights for a Qwen2.5-Omni checkpoint, built where they fit and written as they are made.

A 7B-shape model is ~10.7 B parameters: 43 GB in fp32, more than the host of a one-GPU machine should
hold next to the GPU's own copy. So the three submodels (Thinker, Talker, Token2Wav) are built one at
a time, each directly on `device` (the GPU) in its storage dtype, and their tensors go to safetensors
shards on the way out: the host holds at most one shard (or one tensor, where a tensor is larger than
a shard), the device at most one submodel. The files are the ones `save_pretrained` writes (the same
tensor names, `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json`, or one
`model.safetensors`), so that omni and the transformers reference both load them.
"""

from __future__ import annotations

import gc
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from omni.errors import OmniError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def size_in_bytes(text: str | int) -> int:
    """'4GB' -> 4e9 bytes, as transformers' `max_shard_size` reads it (KiB/MiB/GiB are powers of 2)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)\s*", text, re.IGNORECASE)
    if not match:
        raise OmniError(f"shard size {text!r} is not a size such as '500MB' or '4GB'")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


@dataclass
class ShardWriter:
    """Collects tensors (from any device) into host-side shards of at most `max_shard_bytes` and writes
    each shard as soon as it is full. `peak_held_bytes` is the most it held at once: the bound the
    tests check."""

    target: Path
    max_shard_bytes: int
    pending: dict[str, torch.Tensor] = field(default_factory=dict)
    pending_bytes: int = 0
    peak_held_bytes: int = 0
    total_bytes: int = 0
    shard_files: list[Path] = field(default_factory=list)
    weight_map: dict[str, int] = field(default_factory=dict)  # tensor name -> shard number
    _seen_storage: set[tuple] = field(default_factory=set)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        # A tied weight appears under two names with one storage; save_pretrained keeps the first.
        key = (str(tensor.device), tensor.data_ptr(), tuple(tensor.shape)) if tensor.numel() else None
        if key is not None and key in self._seen_storage:
            return
        if key is not None:
            self._seen_storage.add(key)
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + nbytes > self.max_shard_bytes:
            self.flush()
        # Always a host copy, also from a CPU model: that is what a GPU build holds, so a CPU test of
        # this bound measures the same thing.
        self.pending[name] = tensor.detach().to("cpu", copy=True).contiguous()
        self.pending_bytes += nbytes
        self.peak_held_bytes = max(self.peak_held_bytes, self.pending_bytes)

    def start_part(self) -> None:
        """Ties only join tensors of one submodel; a freed submodel's addresses are reused by the next."""
        self._seen_storage.clear()

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        path = self.target / f"shard-{len(self.shard_files) + 1:05d}.part"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        for name in self.pending:
            self.weight_map[name] = len(self.shard_files)
        self.shard_files.append(path)
        self.total_bytes += self.pending_bytes
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[Path]:
        """Write what is left; name the shards as save_pretrained does; the index where there are several."""
        self.flush()
        count = len(self.shard_files)
        if count == 1:
            names = ["model.safetensors"]
        else:
            names = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        final = []
        for path, name in zip(self.shard_files, names):
            path.rename(self.target / name)
            final.append(self.target / name)
        if count > 1:
            index = {"metadata": {"total_size": self.total_bytes},
                     "weight_map": {tensor: names[shard] for tensor, shard in sorted(self.weight_map.items())}}
            (self.target / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return final


def _submodels(config, weights_dtype: torch.dtype):
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import (
        Qwen2_5OmniTalkerForConditionalGeneration,
        Qwen2_5OmniThinkerForConditionalGeneration,
        Qwen2_5OmniToken2WavModel,
    )

    # Qwen2_5OmniForConditionalGeneration holds exactly these three, under these names; its
    # token2wav is always fp32 (enable_talker calls .float()).
    return [
        ("thinker", Qwen2_5OmniThinkerForConditionalGeneration, config.thinker_config, weights_dtype),
        ("talker", Qwen2_5OmniTalkerForConditionalGeneration, config.talker_config, weights_dtype),
        ("token2wav", Qwen2_5OmniToken2WavModel, config.token2wav_config, torch.float32),
    ]


def _checkpoint_names(config):
    """The tensor names as save_pretrained writes them: transformers 5 renames some modules inside the
    model (thinker.model.language_model.layers) and reverts to the published names on saving
    (thinker.model.layers); the same reversion, asked of a weightless (meta) copy of the whole model."""
    from transformers import Qwen2_5OmniForConditionalGeneration

    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4: the modules carry the published names already
        return lambda key: key
    with torch.device("meta"):
        whole = Qwen2_5OmniForConditionalGeneration(config)

    def name(key: str) -> str:
        renamed = list(revert_weight_conversion(whole, {key: torch.empty(0, device="meta")}))
        if len(renamed) != 1:
            raise OmniError(f"transformers maps the weight {key} to {renamed}; expected one name")
        return renamed[0]

    return name


def write_random_weights(config, target: Path, device: str, weights_dtype: str, max_shard_size: str | int,
                         seed: int, fix_vocoder_init) -> ShardWriter:
    """Build each submodel of `config` on `device` with random weights and stream it into shards."""
    if weights_dtype not in DTYPES:
        raise OmniError(f"weights dtype {weights_dtype!r} is not one of {sorted(DTYPES)}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OmniError(f"--device {device} was asked for, but PyTorch sees no CUDA device here")
    writer = ShardWriter(target, size_in_bytes(max_shard_size))
    checkpoint_name = _checkpoint_names(config)
    for offset, (prefix, model_class, sub_config, dtype) in enumerate(_submodels(config, DTYPES[weights_dtype])):
        writer.start_part()
        torch.manual_seed(seed + offset)
        with torch.device(device):
            try:
                model = model_class._from_config(sub_config, dtype=dtype).eval()
            except TypeError:  # transformers 4 spells it torch_dtype
                model = model_class._from_config(sub_config, torch_dtype=dtype).eval()
        if prefix == "token2wav":
            fix_vocoder_init(model)
        for name, tensor in model.state_dict().items():
            writer.add(checkpoint_name(f"{prefix}.{name}"), tensor)
        del model, tensor
        gc.collect()  # the reference modules hold reference cycles: free this submodel before the next
        if device.type == "cuda":
            torch.cuda.empty_cache()
    writer.close()
    return writer
