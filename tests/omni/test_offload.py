"""--offload: stages kept in host memory and copied to the device only while held.

There is no second device here, so the mechanism runs with separate CPU copies as its "device"
(`install(..., copy_on_same_device=True)`): every check is on the bookkeeping (which tensors each
module computes with, who holds a stage, when it moves) and on outputs, which must be those of the
same model without offload, bit for bit."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from omni.talker.generate import TalkerOptions
from torch import nn

from omni.errors import InputError
from omni.events import AudioChunk, ReplyDone
from omni.offload import (
    CPU_NOTE,
    OffloadedStage,
    host_module_paths,
    install,
    parse_mode,
    stage_names,
)
from omni.sampling import SamplingParams
from omni.session import OmniSession
from omni.speech import SpeechOptions
from omni.tools.media_factory import build_media

GREEDY = SamplingParams(do_sample=False)
CPU = torch.device("cpu")


def _speech():
    return SpeechOptions(talker=TalkerOptions(sampling=SamplingParams(do_sample=False), max_codes=40), seed=5)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return build_media(tmp_path_factory.mktemp("offload-media"))


def _load(tiny_checkpoint, offload=None):
    from omni.loading import load_model

    loaded = load_model(tiny_checkpoint, dtype="fp32", audio_output=True)
    if offload:
        loaded.offload = install(loaded.model, offload, CPU, audio_output=True, copy_on_same_device=True)
    return loaded


@pytest.fixture(scope="module")
def plain(tiny_checkpoint):
    return _load(tiny_checkpoint)


@pytest.fixture(scope="module")
def offloaded(tiny_checkpoint):
    return _load(tiny_checkpoint, "all")


class _ComputeSpy:
    """Records, for every call of a module of an offloaded stage, whether the tensors it owns were
    the device copies at that moment (never the host copies: that is what a CUDA run would need)."""

    def __init__(self, offload) -> None:
        self.calls = {name: 0 for name in offload.stages}
        self.on_host: list[str] = []
        self.handles = []
        for name, stage in offload.stages.items():
            host = stage.host_tensor_ptrs()
            for path, root in stage.modules.items():
                for module_name, module in root.named_modules():
                    if next(iter(module.parameters(recurse=False)), None) is None and \
                            next(iter(module.buffers(recurse=False)), None) is None:
                        continue
                    self.handles.append(module.register_forward_pre_hook(
                        self._hook(name, f"{path}.{module_name}", host)))

    def _hook(self, stage, label, host):
        def check(module, args):
            self.calls[stage] += 1
            # read at call time: a move swaps a parameter's data but replaces a buffer's tensor
            own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
            if any(t.data_ptr() in host for t in own):
                self.on_host.append(label)
        return check

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _reply(loaded, message, engine, speak=True):
    session = OmniSession(loaded, sampling=GREEDY, engine=engine)
    events = list(session.stream(message, return_audio=speak, max_new_tokens=12, speech=_speech() if speak else None))
    done = events[-1]
    assert isinstance(done, ReplyDone)
    chunks = [e.samples for e in events if isinstance(e, AudioChunk)]
    return done, np.concatenate(chunks) if chunks else None


# -- the mode and the loader ---------------------------------------------------------------------


def test_modes_name_their_stages_and_reject_anything_else():
    assert parse_mode(None) is None and parse_mode("none") is None
    assert stage_names("encoders", True) == ("vision", "audio")
    assert stage_names("talker", True) == ("speech",) and stage_names("talker", False) == ()
    assert stage_names("all", True) == ("vision", "audio", "speech")
    assert host_module_paths("all", True) == ("thinker.visual", "thinker.audio_tower", "talker", "token2wav")
    with pytest.raises(InputError, match="encoders, talker, all"):
        parse_mode("thinker")


def test_on_a_cpu_the_loader_notes_that_offload_does_nothing(tiny_checkpoint):
    from omni.loading import load_model

    loaded = load_model(tiny_checkpoint, dtype="fp32", audio_output=False, offload="encoders")
    assert loaded.offload.mode == "encoders" and loaded.offload.stages == {} and loaded.offload.note == CPU_NOTE
    assert "no effect on a CPU" in loaded.offload.describe()
    with pytest.raises(InputError):
        load_model(tiny_checkpoint, dtype="fp32", audio_output=False, offload="vision")


def test_the_loader_builds_offloaded_stages_in_host_memory_and_the_rest_on_the_device(tiny_checkpoint):
    """`meta` stands in for the device: the offloaded modules must be real host tensors, every other
    tensor on the device (no offloaded weight ever lands on it)."""
    from omni.config import load_config
    from omni.loading import _materialize
    from omni.model import OmniModel

    with torch.device("meta"):
        model = OmniModel(load_config(tiny_checkpoint), audio_output=True)
    paths = host_module_paths("all", True)
    _materialize(model, torch.device("meta"), {id(model.get_submodule(p)) for p in paths})
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        expected = "cpu" if name.startswith(tuple(p + "." for p in paths)) else "meta"
        assert tensor.device.type == expected, name
    assert any(n.startswith("thinker.model.") for n, _ in model.named_parameters())


# -- the stage's bookkeeping ---------------------------------------------------------------------


def _tower():
    torch.manual_seed(0)
    tower = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 8)).requires_grad_(False)
    tower.register_buffer("scale", torch.full((8,), 0.5))
    return tower


def test_a_stage_is_on_the_device_exactly_while_someone_holds_it():
    tower = _tower()
    inputs = torch.randn(4, 16)
    expected = tower(inputs) * tower.scale
    stage = OffloadedStage("tower", {"tower": tower}, CPU)
    host = stage.host_tensor_ptrs()
    assert len(host) == 7 and not stage.resident and not stage.tensors_on_device()
    stage.acquire()
    assert stage.resident and stage.tensors_on_device() and stage.moves_in == 1
    assert all(t.data_ptr() not in host for t in list(tower.parameters()) + list(tower.buffers()))
    stage.acquire()  # a second user: no second copy
    assert stage.moves_in == 1 and stage.users == 2
    torch.testing.assert_close(tower(inputs) * tower.scale, expected, rtol=0, atol=0)
    stage.release()
    assert stage.tensors_on_device() and stage.moves_out == 0  # the other user still computes
    stage.release()
    assert not stage.resident and not stage.tensors_on_device() and stage.moves_out == 1
    assert {t.data_ptr() for t in list(tower.parameters()) + list(tower.buffers())} == host
    with pytest.raises(RuntimeError, match="released more often"):
        stage.release()


def test_kept_parameters_stay_on_the_device_and_a_failed_move_leaves_everything_on_the_host():
    tower = _tower()
    kept = tower[3].weight
    stage = OffloadedStage("tower", {"tower": tower}, CPU, keep_on_device={"3.weight": kept})
    kept_ptr = kept.data_ptr()
    assert kept_ptr not in stage.host_tensor_ptrs() and len(stage.host_tensor_ptrs()) == 6
    with stage.held():
        assert kept.data_ptr() == kept_ptr
    assert kept.data_ptr() == kept_ptr

    class Full(Exception):
        pass

    slots = stage._slots
    original = slots[3].host
    broken = original.clone()
    broken.to = lambda *a, **k: (_ for _ in ()).throw(Full())  # the 4th copy runs out of memory
    slots[3].host = broken
    with pytest.raises(Full):
        stage.acquire()
    slots[3].host = original
    assert stage.users == 0 and not stage.tensors_on_device()
    with stage.held():
        assert stage.tensors_on_device()


def test_concurrent_users_never_see_the_stage_leave():
    """Eight threads hold and compute in random overlaps (the engine loop, codec workers, encoder
    pool): the stage never moves out from under one of them, and its last user sends it home."""
    tower = _tower()
    inputs = torch.randn(4, 16)
    expected = tower(inputs)
    stage = OffloadedStage("tower", {"tower": tower}, CPU)
    host = stage.host_tensor_ptrs()
    problems = []

    def user(seed):
        rng = np.random.default_rng(seed)
        for _ in range(40):
            with stage.held():
                before = {t.data_ptr() for t in tower.parameters()}
                if before & host:
                    problems.append("computed with host copies")
                time.sleep(float(rng.uniform(0, 0.001)))
                if not torch.equal(tower(inputs), expected):
                    problems.append("wrong output")
                if {t.data_ptr() for t in tower.parameters()} != before:
                    problems.append("moved while held")

    threads = [threading.Thread(target=user, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert problems == []
    assert stage.users == 0 and not stage.tensors_on_device() and stage.moves_in == stage.moves_out >= 1


# -- whole replies --------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", [True, False], ids=["engine", "alone"])
def test_replies_with_offload_equal_replies_without_and_compute_only_on_device_copies(plain, offloaded, media,
                                                                                     engine):
    message = [{"role": "user", "content": [{"type": "image", "image": str(media.image_png)},
                                            {"type": "audio", "audio": str(media.speech)},
                                            {"type": "text", "text": "What do you see and hear?"}]}]
    expected, expected_audio = _reply(plain, message, engine)
    offload = offloaded.offload
    spy = _ComputeSpy(offload)
    before = {name: stage.moves_in for name, stage in offload.stages.items()}
    try:
        done, audio = _reply(offloaded, message, engine)
    finally:
        spy.remove()
    assert done.text == expected.text and done.codec_codes == expected.codec_codes and len(done.codec_codes) > 0
    np.testing.assert_array_equal(audio, expected_audio)
    assert sorted(set(spy.on_host)) == []  # no module of an offloaded stage ever computed with its host copies
    assert all(count > 0 for count in spy.calls.values()), spy.calls
    for name, stage in offload.stages.items():
        assert stage.users == 0 and not stage.tensors_on_device(), name  # all back in host memory
        assert stage.moves_in > before[name], name
    # the Talker and codec moved in once for the whole spoken reply, not per step or chunk
    assert offload.stages["speech"].moves_in == before["speech"] + 1


def test_a_text_reply_never_moves_the_talker_and_concurrent_spoken_replies_share_it(offloaded):
    speech = offloaded.offload.stages["speech"]
    before = speech.moves_in
    _, audio = _reply(offloaded, "Hello", engine=True, speak=False)
    assert audio is None and speech.moves_in == before and not speech.resident

    results = []

    def spoken(prompt):
        results.append(_reply(offloaded, prompt, engine=True))

    threads = [threading.Thread(target=spoken, args=(p,)) for p in ("One", "Two", "Three")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and all(len(done.codec_codes) > 0 for done, _ in results)
    assert speech.users == 0 and not speech.tensors_on_device()
    assert before < speech.moves_in <= before + 3  # overlapping replies shared one copy


def test_a_failed_reply_lets_go_of_the_talker(offloaded, monkeypatch):
    speech = offloaded.offload.stages["speech"]
    from omni.talker.generate import TalkerStream

    def broken(self, *args, **kwargs):
        raise RuntimeError("talker exploded")

    monkeypatch.setattr(TalkerStream, "start", broken)
    session = OmniSession(offloaded, sampling=GREEDY)
    with pytest.raises(RuntimeError, match="talker exploded"):
        list(session.stream("Hello", return_audio=True, max_new_tokens=6, speech=_speech()))
    assert speech.users == 0 and not speech.tensors_on_device()


def test_a_tower_is_held_for_each_call_even_one_that_raises():
    tower = _tower()
    stage = OffloadedStage("tower", {"tower": tower}, CPU)
    stage.hold_each_call(tower)
    seen = []
    tower[0].register_forward_pre_hook(lambda m, a: seen.append(stage.users))
    inputs = torch.randn(2, 16)
    tower(inputs)
    assert seen == [1] and stage.users == 0 and stage.moves_in == stage.moves_out == 1
    with pytest.raises(RuntimeError):
        tower(torch.randn(2, 3))  # wrong width: the call raises inside
    assert stage.users == 0 and not stage.tensors_on_device()
    stage._slots[0].host.to = None  # the next copy in fails: nothing held, nothing to let go
    with pytest.raises(TypeError):
        tower(inputs)
    assert stage.users == 0


def test_the_spy_sees_a_call_that_does_not_hold_its_stage(offloaded):
    """The check above can fail: a module of the Talker called with no hold computes with host copies."""
    spy = _ComputeSpy(offloaded.offload)
    try:
        talker = offloaded.model.talker
        talker.thinker_to_talker_proj(torch.zeros(1, talker.thinker_to_talker_proj.in_features))
    finally:
        spy.remove()
    assert spy.on_host == ["talker.thinker_to_talker_proj"]
