"""make_checkpoint's device build (omni.tools.stream_weights): the files it writes are the ones
save_pretrained writes, both implementations load them, and the host holds one shard at a time."""

from __future__ import annotations

import ctypes
import json
import os
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open

from omni.tools.make_checkpoint import make_checkpoint
from omni.tools.presets import PRESETS
from omni.tools.stream_weights import ShardWriter, size_in_bytes


def _tensors(directory) -> dict[str, tuple[tuple[int, ...], str]]:
    found = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), "pt") as shard:
            for name in shard.keys():
                found[name] = (tuple(shard.get_slice(name).get_shape()), shard.get_slice(name).get_dtype())
    return found


def test_size_in_bytes_reads_transformers_units():
    assert size_in_bytes("4GB") == 4 * 10**9
    assert size_in_bytes("500MB") == 500 * 10**6
    assert size_in_bytes("2GiB") == 2 * 2**30
    assert size_in_bytes(1234) == 1234
    with pytest.raises(Exception, match="not a size"):
        size_in_bytes("four gigs")


@pytest.mark.slow
def test_streamed_tiny_checkpoint_has_save_pretrained_names_and_loads_in_both(tmp_path, tiny_checkpoint):
    from transformers import Qwen2_5OmniForConditionalGeneration

    from omni.loading import load_model

    streamed = make_checkpoint(tmp_path / "streamed", "tiny", device="cpu", max_shard_size="4MB")
    assert _tensors(streamed) == _tensors(tiny_checkpoint)  # names, shapes, dtypes
    index = json.loads((streamed / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 1 and all((streamed / name).is_file() for name in files)
    assert not list(streamed.glob("*.part"))

    # transformers initialises a weight it does not find at random, silently: every weight it holds
    # after loading must be the file's
    from safetensors.torch import load_file
    from transformers.core_model_loading import revert_weight_conversion

    reference = Qwen2_5OmniForConditionalGeneration.from_pretrained(streamed, dtype=torch.float32)
    held = revert_weight_conversion(reference, dict(reference.state_dict()))
    written = {}
    for path in streamed.glob("*.safetensors"):
        written.update(load_file(str(path)))
    assert set(held) == set(written)
    assert all(torch.equal(held[name], written[name]) for name in written)
    load_model(streamed, dtype="fp32", audio_output=True)  # omni loads strictly: raises on any mismatch


@pytest.mark.slow
def test_bf16_preset_keeps_the_codec_in_fp32(tmp_path):
    streamed = make_checkpoint(tmp_path / "bf16", "tiny", weights_dtype="bf16", max_shard_size="8MB")
    dtypes = {name.split(".")[0]: dtype for name, (_, dtype) in _tensors(streamed).items()}
    assert dtypes == {"thinker": "BF16", "talker": "BF16", "token2wav": "F32"}
    assert json.loads((streamed / "config.json").read_text())["dtype"] == "bfloat16"


def _resident_bytes() -> int:
    """Live host memory: glibc keeps freed heap pages resident until trimmed, which would count
    memory already given back."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc to read the resident memory")
def test_host_memory_while_writing_is_bounded_by_a_shard(tmp_path, monkeypatch):
    """Many mid-sized tensors (a 32-layer stack at `small` widths, a short vocabulary) so that the whole
    model is far larger than one shard: a writer that kept what it wrote would grow by a model."""
    small = PRESETS["small"]
    text = dict(small.thinker["text_config"], vocab_size=4096, num_hidden_layers=32)
    spec = replace(small, name="deep-small", thinker=dict(small.thinker, text_config=text),
                   talker=dict(small.talker, num_hidden_layers=16))
    shard_bytes = size_in_bytes("4MB")

    # (kind, resident bytes): "start" before a submodel is built, "built" at its first tensor, "flush"
    # with a full shard held
    samples: list[tuple[str, int]] = []
    writers: list[ShardWriter] = []
    original_add, original_flush, original_start = ShardWriter.add, ShardWriter.flush, ShardWriter.start_part

    def start_part(self):
        samples.append(("start", _resident_bytes()))  # the previous submodel written and freed
        original_start(self)

    def add(self, name, tensor):
        if samples and samples[-1][0] == "start":
            samples.append(("built", _resident_bytes()))
        if self not in writers:
            writers.append(self)
        original_add(self, name, tensor)

    def flush(self):
        samples.append(("flush", _resident_bytes()))  # the pending shard is held here, before writing
        original_flush(self)

    monkeypatch.setattr(ShardWriter, "add", add)
    monkeypatch.setattr(ShardWriter, "flush", flush)
    monkeypatch.setattr(ShardWriter, "start_part", start_part)
    out = make_checkpoint(tmp_path / "deep", spec, device="cpu", weights_dtype="fp32", max_shard_size=shard_bytes)

    writer = writers[0]
    tensors = _tensors(out)
    largest = max(torch.Size(shape).numel() * 4 for shape, _ in tensors.values())
    model_bytes = sum(torch.Size(shape).numel() * 4 for shape, _ in tensors.values())
    assert writer.peak_held_bytes <= max(shard_bytes, largest)
    assert model_bytes > 20 * max(shard_bytes, largest)  # the test's premise

    growth, built = 0, None
    for kind, rss in samples:
        if kind == "built":
            built = rss
        elif kind == "flush" and built is not None:
            growth = max(growth, rss - built)
    starts = [rss for kind, rss in samples if kind == "start"]
    carried = max(starts) - starts[0]  # what a finished submodel left behind on the host
    # one shard held, plus allocator slack; a writer holding every copy would grow by ~model_bytes
    bound = max(shard_bytes, largest) + 48 * 10**6
    assert bound < model_bytes / 2  # the test's premise
    assert growth < bound, (growth, model_bytes)
    assert carried < bound, (carried, model_bytes)


def test_cuda_device_without_cuda_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal is for machines without it")
    with pytest.raises(Exception, match="no CUDA device"):
        make_checkpoint(tmp_path / "gpu", "tiny", device="cuda")


def test_presets_at_real_sizes_parse_in_omni_and_reference():
    """The 3b / 7b shapes are what the cited config.json files say; omni's parser and the reference
    config class read the same widths from them."""
    from transformers import Qwen2_5OmniConfig

    from omni.config import parse_config

    seven = PRESETS["7b"]
    config = Qwen2_5OmniConfig(thinker_config=seven.thinker, talker_config=seven.talker,
                               token2wav_config={"dit_config": seven.dit, "bigvgan_config": seven.bigvgan})
    parsed = parse_config(config.to_dict())
    assert (parsed.thinker.text.hidden_size, parsed.thinker.text.num_layers, parsed.thinker.text.vocab_size) == (3584, 28, 152064)
    assert (parsed.talker.decoder.hidden_size, parsed.talker.decoder.head_dim, parsed.talker.decoder.embedding_size) == (896, 128, 3584)
    wide, full = PRESETS["3b-wide"], PRESETS["3b"]
    for section in ("text_config", "vision_config", "audio_config"):
        a, b = wide.thinker[section], full.thinker[section]
        assert {k: v for k, v in a.items() if "layers" not in k and k not in ("depth", "fullatt_block_indexes")} == \
            {k: v for k, v in b.items() if "layers" not in k and k not in ("depth", "fullatt_block_indexes")}
    assert full.thinker["text_config"]["hidden_size"] == 2048 and full.talker["embedding_size"] == 2048
    assert wide.thinker["text_config"]["num_hidden_layers"] < full.thinker["text_config"]["num_hidden_layers"]



@pytest.mark.slow
def test_cli_builds_on_a_device_with_shards(tmp_path):
    import subprocess
    import sys

    target = tmp_path / "cli"
    result = subprocess.run([sys.executable, "-m", "omni.cli", "make-checkpoint", str(target), "--preset", "tiny",
                             "--device", "cpu", "--max-shard-size", "8MB"], capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    index = json.loads((target / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert json.loads((target / "omni-make-checkpoint.json").read_text())["preset"] == "tiny"
