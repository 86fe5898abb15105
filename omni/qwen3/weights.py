"""Map Qwen3-Omni checkpoint tensors onto omni's parameters, in place.

Names are one to one with omni's module tree except the MoE experts, which omni stacks per projection
(`...mlp.experts.gate_proj` (E, I, H), `up_proj` (E, I, H), `down_proj` (E, H, I)):
- the published safetensors name each expert: `...mlp.experts.E.{gate,up,down}_proj.weight` fills
  slice E of the stacked parameter;
- transformers 5 saves them fused: `...mlp.experts.gate_up_proj` (E, 2I, H) — the first I rows of
  each expert are the gate (the reference splits its product with `.chunk(2)`, gate first) — and
  `...mlp.experts.down_proj` (E, H, I).
Transformers 5 also nests the Thinker's parts under `model.` in memory (`model.language_model.*`,
`model.audio_tower.*`, `model.visual.*`); those spellings map to `model.*`, `audio_tower.*`,
`visual.*`.

Every tensor is copied into the existing parameter storage (converting dtype), so loading needs no
second copy of the model; every parameter (every expert slice) must be filled exactly once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from omni.errors import CheckpointError

_PER_EXPERT = re.compile(r"^(?P<prefix>.*\.experts)\.(?P<expert>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight$")
_FUSED_GATE_UP = re.compile(r"^(?P<prefix>.*\.experts)\.gate_up_proj$")
# transformers 5's in-memory Thinker layout -> the published one (which omni's tree follows)
_NESTED = (
    (re.compile(r"^((?:thinker\.)?)model\.language_model\."), r"\1model."),
    (re.compile(r"^((?:thinker\.)?)model\.audio_tower\."), r"\1audio_tower."),
    (re.compile(r"^((?:thinker\.)?)model\.visual\."), r"\1visual."),
)


@dataclass
class LoadReport:
    loaded: int = 0  # tensors copied
    skipped: int = 0  # tensors outside `prefix`
    missing: list[str] = field(default_factory=list)  # parameters (or expert slices) nothing filled
    unexpected: list[str] = field(default_factory=list)  # checkpoint names with no parameter

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected


def canonical_name(name: str) -> str:
    for pattern, replacement in _NESTED:
        name = pattern.sub(replacement, name)
    return name


def load_weights(
    module: nn.Module,
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    prefix: str = "",
    strict: bool = True,
) -> LoadReport:
    """Copy checkpoint tensors into `module`'s parameters and persistent buffers.

    Names starting with `prefix` (e.g. "thinker.") are loaded with the prefix removed; others are
    skipped (counted, not unexpected). strict: raise CheckpointError listing the missing and
    unexpected names (and on any tensor given twice or of the wrong shape) instead of only
    reporting them."""
    targets: dict[str, torch.Tensor] = dict(module.named_parameters())
    targets.update((name, buffer) for name, buffer in module.named_buffers()
                   if _is_persistent(module, name))
    # name -> filled flags; expert stacks track one flag per expert
    filled = {name: torch.zeros(tensor.shape[0] if _is_expert_stack(name) else 1, dtype=torch.bool)
              for name, tensor in targets.items()}
    report = LoadReport()
    errors: list[str] = []

    def fill(target_name: str, rows: slice | int | None, source: torch.Tensor, source_name: str) -> None:
        target = targets[target_name]
        destination = target.data if rows is None else target.data[rows]
        if destination.shape != source.shape:
            errors.append(f"{source_name}: shape {tuple(source.shape)} does not fit {target_name} "
                          f"{'' if rows is None else f'[{rows}] '}{tuple(destination.shape)}")
            return
        flags = filled[target_name]
        index = slice(None) if rows is None else (rows if isinstance(rows, int) else slice(None))
        if bool(flags[index].any()):
            errors.append(f"{source_name}: {target_name} was already filled by another tensor")
            return
        with torch.no_grad():
            destination.copy_(source)
        flags[index] = True

    for raw_name, tensor in named_tensors:
        if not raw_name.startswith(prefix):
            report.skipped += 1
            continue
        name = canonical_name(raw_name[len(prefix):])
        report.loaded += 1
        if (match := _PER_EXPERT.match(name)) is not None:
            target = f"{match['prefix']}.{match['proj']}"
            expert = int(match["expert"])
            if target in targets and _is_expert_stack(target) and expert < targets[target].shape[0]:
                fill(target, expert, tensor, raw_name)
                continue
        elif (match := _FUSED_GATE_UP.match(name)) is not None:
            gate, up = f"{match['prefix']}.gate_proj", f"{match['prefix']}.up_proj"
            if gate in targets and up in targets:
                intermediate = targets[gate].shape[1]
                if tensor.dim() != 3 or tensor.shape[1] != 2 * intermediate:
                    errors.append(f"{raw_name}: shape {tuple(tensor.shape)} is not (experts, 2 x {intermediate}, hidden)")
                    continue
                fill(gate, None, tensor[:, :intermediate], raw_name)
                fill(up, None, tensor[:, intermediate:], raw_name)
                continue
        elif name in targets:
            fill(name, None, tensor, raw_name)
            continue
        report.unexpected.append(raw_name)
        report.loaded -= 1

    for name, flags in filled.items():
        if not bool(flags.all()):
            if flags.numel() > 1:
                absent = (~flags).nonzero().flatten().tolist()
                report.missing.append(f"{name} (experts {absent[:8]}{'...' if len(absent) > 8 else ''})")
            else:
                report.missing.append(name)
    if strict and (errors or not report.ok):
        lines = errors + [f"missing: {name}" for name in report.missing[:20]]
        lines += [f"unexpected: {name}" for name in report.unexpected[:20]]
        raise CheckpointError(f"the checkpoint does not fit the model ({len(errors)} errors, {len(report.missing)} "
                              f"missing, {len(report.unexpected)} unexpected):\n  " + "\n  ".join(lines))
    if errors:
        raise CheckpointError("\n".join(errors))
    return report


def _is_expert_stack(name: str) -> bool:
    return re.search(r"\.experts\.(gate_proj|up_proj|down_proj)$", name) is not None


def _is_persistent(module: nn.Module, name: str) -> bool:
    owner_name, _, buffer_name = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    return buffer_name not in owner._non_persistent_buffers_set
