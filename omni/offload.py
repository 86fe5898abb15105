"""Stages that do not sit in device memory while idle: `--offload encoders|talker|all`.

An offloaded stage keeps its weights in host memory (pinned on CUDA, so the copy in runs at full
PCIe speed and without a staging copy) and copies them to the device while at least one user holds
it; when the last user lets go, its parameters and buffers point at the host copies again and the
device copies are freed. Weights and buffers are read-only at inference, so nothing is copied back.

The stages:
- `vision` (thinker.visual) and `audio` (thinker.audio_tower), with `encoders` or `all`: held for
  each call of the tower (forward hooks), so a prompt without images never moves the vision tower;
- `speech` (talker and token2wav), with `talker` or `all`: held by a spoken reply from its Talker's
  start until the reply ends (the serving engine and the session's unbatched path take the hold):
  the Talker steps once per code and the codec once per chunk, too often to move per call. Text
  replies never move it.

Users are counted (`acquire` / `release`, under one lock): the engine loop, its codec workers and the
encoder pool may hold a stage at once, and it leaves the device only when none does. The parameter
each stage's `device` property reads (Talker: codec_head.weight; Token2Wav: the DiT's
proj_out.weight) stays on the device, so code that asks a stage where it runs (a KV cache, a
sampler's masks, a voice's conditioning made before the hold) gets the execution device whether or
not the stage is resident.

On a CPU the device's memory is the host's: there is nothing to move, and `load_model` records a
note instead of installing stages. `install(..., copy_on_same_device=True)` still runs the whole
mechanism there (the device copies are separate CPU tensors), which is how the tests check it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from omni.errors import InputError

log = logging.getLogger(__name__)

MODES = ("encoders", "talker", "all")
_STAGES_OF_MODE = {"encoders": ("vision", "audio"), "talker": ("speech",), "all": ("vision", "audio", "speech")}
# stage -> (its module paths in OmniModel, parameters kept on the device: what `.device` reads)
STAGE_MODULES = {
    "vision": (("thinker.visual",), ()),
    "audio": (("thinker.audio_tower",), ()),
    "speech": (("talker", "token2wav"), ("talker.codec_head.weight", "token2wav.code2wav_dit_model.proj_out.weight")),
}
CPU_NOTE = ("--offload has no effect on a CPU device: the device's memory is the host's, so the stages stay where "
            "they are")


def parse_mode(offload: str | None) -> str | None:
    if offload is None or offload in ("", "none"):
        return None
    if offload not in MODES:
        raise InputError(f"offload must be one of {', '.join(MODES)} (or none), got {offload!r}")
    return offload


def stage_names(mode: str | None, audio_output: bool) -> tuple[str, ...]:
    if mode is None:
        return ()
    return tuple(s for s in _STAGES_OF_MODE[mode] if s != "speech" or audio_output)


def host_module_paths(mode: str | None, audio_output: bool) -> tuple[str, ...]:
    """The module paths an offload mode keeps in host memory (the loader builds them there)."""
    return tuple(path for stage in stage_names(mode, audio_output) for path in STAGE_MODULES[stage][0])


@dataclass
class _Slot:
    """One parameter or buffer of a stage: where it is registered and its host copy."""

    module: nn.Module
    name: str
    is_parameter: bool
    host: torch.Tensor

    def attach(self, tensor: torch.Tensor) -> None:
        if self.is_parameter:
            self.module._parameters[self.name].data = tensor
        else:
            self.module._buffers[self.name] = tensor

    def attached(self) -> torch.Tensor:
        return self.module._parameters[self.name] if self.is_parameter else self.module._buffers[self.name]


class OffloadedStage:
    """Modules whose weights live in host memory and are copied to `device` while held."""

    def __init__(self, name: str, modules: dict[str, nn.Module], device: torch.device,
                 keep_on_device: dict[str, nn.Parameter] | None = None) -> None:
        self.name = name
        self.device = torch.device(device)
        self.modules = dict(modules)  # path -> module
        self._lock = threading.Lock()
        self._users = 0
        self.moves_in = 0  # times the stage was copied to the device
        self.moves_out = 0
        kept = {id(p) for p in (keep_on_device or {}).values()}
        pin = self.device.type == "cuda"
        self._slots: list[_Slot] = []
        host_of: dict[int, torch.Tensor] = {}  # a tensor registered twice gets one host copy
        with torch.inference_mode(False), torch.no_grad():
            for parameter in (keep_on_device or {}).values():
                parameter.data = parameter.data.to(self.device)
            for module in modules.values():
                for owner in module.modules():
                    for table, is_parameter in ((owner._parameters, True), (owner._buffers, False)):
                        for key, tensor in table.items():
                            if tensor is None or id(tensor) in kept:
                                continue
                            host = host_of.get(id(tensor))
                            if host is None:
                                host = tensor.detach().to("cpu")
                                host = host_of[id(tensor)] = host.pin_memory() if pin else host
                            slot = _Slot(owner, key, is_parameter, host)
                            slot.attach(host)
                            self._slots.append(slot)
        self.host_bytes = sum(t.untyped_storage().nbytes() for t in host_of.values())
        self._hooks: list = []

    @property
    def users(self) -> int:
        return self._users

    @property
    def resident(self) -> bool:
        return self._users > 0

    def acquire(self) -> None:
        """One more user: copy the stage to the device if it is not there."""
        with self._lock:
            if self._users == 0:
                self._move(to_device=True)
            self._users += 1

    def release(self) -> None:
        """One user fewer: the last one sends the stage back to host memory."""
        with self._lock:
            if self._users <= 0:
                raise RuntimeError(f"offloaded stage {self.name} released more often than acquired")
            self._users -= 1
            if self._users == 0:
                self._move(to_device=False)

    @contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def hold_each_call(self, module: nn.Module) -> None:
        """Hold the stage for every call of `module` (a tower whose forward is its only entry). The
        hold is taken by the first forward pre-hook, so hooks added later see the stage resident;
        it is let go by a forward hook that runs even when the call raised (`always_call`), and only
        by calls whose hold succeeded (a failed copy in leaves nothing to let go)."""
        held = threading.local()  # per thread: calls of `module` in progress that hold the stage

        def take(_module, _args):
            self.acquire()
            held.depth = getattr(held, "depth", 0) + 1

        def let_go(_module, _args, _output):
            if getattr(held, "depth", 0) > 0:
                held.depth -= 1
                self.release()

        self._hooks += [module.register_forward_pre_hook(take, prepend=True),
                        module.register_forward_hook(let_go, always_call=True)]

    def tensors_on_device(self) -> bool:
        """Whether every offloaded tensor is the device copy now (else every one is the host copy)."""
        return all(slot.attached().data_ptr() != slot.host.data_ptr() for slot in self._slots)

    def host_tensor_ptrs(self) -> set[int]:
        return {slot.host.data_ptr() for slot in self._slots}

    def _move(self, to_device: bool) -> None:
        """Under the lock. In: fresh device copies (copy=True, so a CPU 'device' gets its own);
        out: the host copies again, freeing the device ones."""
        with torch.inference_mode(False), torch.no_grad():
            if to_device:
                copies: dict[int, torch.Tensor] = {}
                try:
                    for slot in self._slots:
                        copy = copies.get(id(slot.host))
                        if copy is None:
                            copy = copies[id(slot.host)] = slot.host.to(
                                self.device, non_blocking=slot.host.is_pinned(), copy=True)
                        slot.attach(copy)
                except BaseException:  # out of device memory half way: leave it all on the host
                    for slot in self._slots:
                        slot.attach(slot.host)
                    raise
                self.moves_in += 1
            else:
                for slot in self._slots:
                    slot.attach(slot.host)
                self.moves_out += 1


@dataclass
class Offload:
    """What a loaded model keeps in host memory while idle (`LoadedModel.offload`)."""

    mode: str
    device: torch.device
    stages: dict[str, OffloadedStage] = field(default_factory=dict)
    note: str | None = None  # why the mode does less than it says (a CPU device, no Talker loaded)

    def stage(self, name: str) -> OffloadedStage | None:
        return self.stages.get(name)

    def acquire(self, name: str) -> None:
        """Hold stage `name` (nothing when it is not offloaded) until `release(name)`."""
        stage = self.stages.get(name)
        if stage is not None:
            stage.acquire()

    def release(self, name: str) -> None:
        stage = self.stages.get(name)
        if stage is not None:
            stage.release()

    @contextmanager
    def held(self, name: str) -> Iterator[None]:
        """Hold stage `name` for the block (nothing when it is not offloaded)."""
        stage = self.stages.get(name)
        if stage is None:
            yield
            return
        with stage.held():
            yield

    def describe(self) -> str:
        if not self.stages:
            return f"offload {self.mode}: {self.note or 'nothing to offload'}"
        parts = [f"{name} {stage.host_bytes / 2**20:.0f} MiB (moved in {stage.moves_in}x)"
                 for name, stage in self.stages.items()]
        text = f"offload {self.mode}: in host memory while idle: {', '.join(parts)}"
        return text + (f"; {self.note}" if self.note else "")


def install(model: nn.Module, mode: str | None, device: torch.device | str, audio_output: bool,
            copy_on_same_device: bool = False) -> Offload | None:
    """Offload `model`'s stages for `mode` (the model's tensors may be anywhere: they are moved to
    host memory here, pinned on CUDA). On a CPU device this only records a note, unless
    `copy_on_same_device` (tests: the whole mechanism with separate CPU copies)."""
    mode = parse_mode(mode)
    if mode is None:
        return None
    device = torch.device(device)
    if device.type == "cpu" and not copy_on_same_device:
        return Offload(mode, device, note=CPU_NOTE)
    offload = Offload(mode, device)
    if mode in ("talker", "all") and not audio_output:
        offload.note = "no Talker or codec is loaded (text only), so only the encoders can be offloaded"
    names = stage_names(mode, audio_output)
    _check_not_shared(model, [path for name in names for path in STAGE_MODULES[name][0]])
    for name in names:
        paths, kept = STAGE_MODULES[name]
        stage = OffloadedStage(name, {p: model.get_submodule(p) for p in paths}, device,
                               {p: model.get_parameter(p) for p in kept})
        if name in ("vision", "audio"):
            for path in paths:
                stage.hold_each_call(model.get_submodule(path))
        offload.stages[name] = stage
        log.info("offloaded %s: %.0f MiB in host memory", name, stage.host_bytes / 2**20)
    return offload


def _check_not_shared(model: nn.Module, paths: list[str]) -> None:
    """A tensor an offloaded stage shares with a module that stays (a tied weight) would leave the
    device under that module's feet: refuse."""
    inside = {id(t) for p in paths for t in list(model.get_submodule(p).parameters()) + list(model.get_submodule(p).buffers())}
    offloaded = {id(model.get_submodule(p)) for p in paths}

    def outside(module: nn.Module):
        if id(module) in offloaded:
            return
        yield from module.parameters(recurse=False)
        yield from module.buffers(recurse=False)
        for child in module.children():
            yield from outside(child)

    shared = [t for t in outside(model) if id(t) in inside]
    if shared:
        raise InputError(f"cannot offload {', '.join(paths)}: {len(shared)} of their tensors are shared with modules "
                         "that stay on the device")
