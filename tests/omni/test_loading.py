"""Checkpoint loading: strict names and shapes, sharding, dtypes, memory, and error messages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from omni.errors import AudioOutputUnavailable, CheckpointError, InputError
from omni.loading import load_model

REPO = Path(__file__).resolve().parents[2]


def _copy_checkpoint(source: Path, target: Path) -> Path:
    """A writable copy whose weight file(s) can be edited (other files are linked)."""
    target.mkdir()
    for path in source.iterdir():
        if path.suffix == ".safetensors" or path.name.endswith(".index.json"):
            shutil.copy(path, target / path.name)
        else:
            (target / path.name).symlink_to(path)
    return target


def _edit_single_file(directory: Path, edit) -> None:
    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_every_thinker_tensor_lands_where_the_checkpoint_names_it(tiny_checkpoint, tiny_text_model):
    stored = load_file(tiny_checkpoint / "model.safetensors")
    ours = tiny_text_model.model.state_dict()
    thinker_names = {name for name in stored if name.startswith("thinker.")}
    assert thinker_names == set(ours)
    for name in ("thinker.model.layers.1.self_attn.q_proj.bias", "thinker.lm_head.weight",
                 "thinker.visual.merger.mlp.2.weight", "thinker.audio_tower.layers.0.self_attn.k_proj.weight"):
        assert torch.equal(ours[name], stored[name]), name


def test_missing_key_is_named(tiny_checkpoint, tmp_path):
    copy = _copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    _edit_single_file(copy, lambda t: t.pop("thinker.model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"1 missing: thinker\.model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(copy, audio_output=False)


def test_unexpected_key_is_named(tiny_checkpoint, tmp_path):
    copy = _copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    _edit_single_file(copy, lambda t: t.update({"thinker.model.layers.9.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"1 unexpected: thinker\.model\.layers\.9\.extra\.weight"):
        load_model(copy, audio_output=False)


def test_foreign_prefix_is_unexpected_even_without_audio(tiny_checkpoint, tmp_path):
    copy = _copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    _edit_single_file(copy, lambda t: t.update({"vision_tower.proj.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected: vision_tower\.proj\.weight"):
        load_model(copy, audio_output=False)


def test_shape_mismatch_is_named(tiny_checkpoint, tmp_path):
    copy = _copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    _edit_single_file(copy, lambda t: t.update({"thinker.model.norm.weight": torch.ones(65)}))
    with pytest.raises(CheckpointError, match=r"thinker\.model\.norm\.weight .*shape \(65,\).*\(64,\)"):
        load_model(copy, audio_output=False)


def test_sharded_checkpoint_loads_every_shard(small_checkpoint):
    index = json.loads((small_checkpoint / "model.safetensors.index.json").read_text())
    thinker_files = {file for name, file in index["weight_map"].items() if name.startswith("thinker.")}
    assert len(set(index["weight_map"].values())) > 1 and len(thinker_files) > 1
    loaded = load_model(small_checkpoint, dtype="fp32", audio_output=False)
    state = loaded.model.state_dict()
    for file in sorted(thinker_files):
        stored = load_file(small_checkpoint / file)
        name = next(n for n in sorted(stored) if n.startswith("thinker."))
        assert torch.equal(state[name], stored[name]), name


def test_missing_shard_file_is_named(small_checkpoint, tmp_path):
    copy = _copy_checkpoint(small_checkpoint, tmp_path / "ckpt")
    (copy / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00003.safetensors.*incomplete download"):
        load_model(copy, audio_output=False)


@pytest.mark.parametrize("dtype, expected", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)])
def test_dtype_choice(tiny_checkpoint, dtype, expected):
    loaded = load_model(tiny_checkpoint, dtype=dtype, audio_output=False)
    assert {p.dtype for p in loaded.model.parameters()} == {expected}
    stored = load_file(tiny_checkpoint / "model.safetensors")["thinker.model.embed_tokens.weight"]
    assert torch.equal(loaded.model.thinker.model.embed_tokens.weight, stored.to(expected))
    # the rope tables stay fp32 whatever the weights are
    assert loaded.model.thinker.model.inv_freq.dtype == torch.float32


def test_bf16_thinker_tracks_fp32(tiny_checkpoint, tiny_text_model):
    bf16 = load_model(tiny_checkpoint, dtype="bf16", audio_output=False)
    ids = torch.tensor([[151644, 872, 198, 9707, 1879, 151645, 198]])
    positions = torch.arange(ids.shape[1]).expand(3, 1, -1)
    with torch.no_grad():
        reference = tiny_text_model.model.thinker.lm_head(
            tiny_text_model.model.thinker(tiny_text_model.model.thinker.embed(ids), positions)
        )
        low = bf16.model.thinker.lm_head(bf16.model.thinker(bf16.model.thinker.embed(ids), positions)).float()
    scale = reference.abs().max()
    assert (low - reference).abs().max() < 0.05 * scale


def test_unknown_dtype_is_rejected(tiny_checkpoint):
    with pytest.raises(InputError, match="dtype must be one of auto, bf16, fp16, fp32; got 'int8'"):
        load_model(tiny_checkpoint, dtype="int8", audio_output=False)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_directory_without_weights(tiny_checkpoint, tmp_path):
    copy = tmp_path / "ckpt"
    copy.mkdir()
    (copy / "config.json").symlink_to(tiny_checkpoint / "config.json")
    (copy / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"neither model.safetensors.index.json nor model.safetensors .*pytorch_model.bin.*safetensors only"):
        load_model(copy)


def test_wrong_model_type_file(tiny_checkpoint, tmp_path):
    copy = _copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    raw = json.loads((tiny_checkpoint / "config.json").read_text())
    raw["model_type"] = "qwen2_5_vl"
    (copy / "config.json").unlink()
    (copy / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="model_type='qwen2_5_vl'"):
        load_model(copy)


def test_missing_speakers_fail_only_when_audio_is_asked_for(tiny_checkpoint, tmp_path, caplog):
    copy = _copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    (copy / "spk_dict.pt").unlink()
    with pytest.raises(AudioOutputUnavailable, match=r"spk_dict\.pt \(the voices\) is missing"):
        load_model(copy, audio_output=True)
    with caplog.at_level("WARNING"):
        loaded = load_model(copy)  # audio_output=None: text replies, with a warning
    assert not loaded.audio_output and loaded.speakers is None
    assert "spk_dict.pt" in caplog.text


def test_hub_id_without_network_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="not a local directory and downloading it from the hub failed"):
        load_model("Qwen/Qwen2.5-Omni-7B")


MEMORY_PROBE = r"""
import sys, threading, time, torch
def anon():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('RssAnon'):
                return int(line.split()[1]) * 1024
peak = [0]
running = [True]
def poll():
    while running[0]:
        peak[0] = max(peak[0], anon())
        time.sleep(0.0005)
from omni.loading import load_model
import omni.loading  # noqa
before = anon()
thread = threading.Thread(target=poll); thread.start()
loaded = load_model(sys.argv[1], dtype=sys.argv[2], audio_output=False)
running[0] = False; thread.join()
params = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
print(params, peak[0] - before)
"""


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_peak_memory_stays_near_one_copy(small_checkpoint, dtype):
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(small_checkpoint), dtype],
        capture_output=True, text=True, check=True, cwd=REPO,
    )
    params, peak = (int(v) for v in out.stdout.split())
    # Fixed costs besides the weights: the Rust tokenizer (~90 MB) and torch's meta-device machinery
    # (~80 MB). Reading everything first and copying after would add another full copy on top.
    fixed = 256 * 2**20
    assert peak <= 1.1 * params + fixed, f"peak anonymous memory {peak / 2**20:.0f} MiB for {params / 2**20:.0f} MiB of weights"


# ------------------------------------------------------------------------------------------------
# The chat template: read where transformers reads it, compiled at load, carried by the tokenizer.

PUBLISHED = json.loads((REPO / "tests" / "data" / "qwen2_5_omni_chat_template.json").read_text(encoding="utf-8"))[
    "chat_template"]
TEMPLATE_FILES = ("chat_template.json", "chat_template.jinja", "tokenizer_config.json", "processor_config.json")


def _with_templates(tiny_checkpoint: Path, target: Path, jinja=None, legacy_json=None, tokenizer_config=None,
                    processor_config=None, tokenizer_edit=None) -> Path:
    """The tiny checkpoint's files with the chat template placed as asked (None: not there)."""
    target.mkdir()
    for path in tiny_checkpoint.iterdir():
        if path.name not in TEMPLATE_FILES:
            (target / path.name).symlink_to(path)
    tokenizer = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text(encoding="utf-8"))
    processor = json.loads((tiny_checkpoint / "processor_config.json").read_text(encoding="utf-8"))
    if tokenizer_config is not None:
        tokenizer["chat_template"] = tokenizer_config
    if processor_config is not None:
        processor["chat_template"] = processor_config
    if tokenizer_edit is not None:
        tokenizer_edit(tokenizer)
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    (target / "processor_config.json").write_text(json.dumps(processor), encoding="utf-8")
    if jinja is not None:
        (target / "chat_template.jinja").write_text(jinja, encoding="utf-8")
    if legacy_json is not None:
        text = legacy_json if isinstance(legacy_json, str) else json.dumps(legacy_json)
        (target / "chat_template.json").write_text(text, encoding="utf-8")
    return target


def _transformers_template(directory: Path) -> str | None:
    """The template transformers' processor renders, or (without one) its tokenizer's."""
    from transformers import Qwen2_5OmniProcessor

    processor = Qwen2_5OmniProcessor.from_pretrained(directory)
    template = processor.chat_template
    if template is None and processor.tokenizer.chat_template is not None:
        template = processor.tokenizer.get_chat_template()
    return template["default"] if isinstance(template, dict) else template


def test_the_test_checkpoint_carries_the_published_template(tiny_checkpoint, tiny_text_model):
    # as the hub repos ship it: the processor's legacy chat_template.json, holding the published text
    assert json.loads((tiny_checkpoint / "chat_template.json").read_text(encoding="utf-8")) == {
        "chat_template": PUBLISHED}
    assert not (tiny_checkpoint / "chat_template.jinja").exists()
    template = tiny_text_model.tokenizer.chat_template
    assert template.source == PUBLISHED and "chat_template.json" in template.origin
    assert _transformers_template(tiny_checkpoint) == PUBLISHED


LAYOUTS = {
    "tokenizer_config_only": dict(tokenizer_config="T {{ messages | length }}"),
    "jinja_file_before_tokenizer_config": dict(jinja="J {{ messages | length }}", tokenizer_config="T"),
    "legacy_json_before_jinja_file": dict(legacy_json={"chat_template": "L {{ messages | length }}"}, jinja="J"),
    "processor_config_first": dict(processor_config="P {{ messages | length }}", legacy_json={"chat_template": "L"},
                                   jinja="J", tokenizer_config="T"),
    "named_templates_use_default": dict(tokenizer_config=[
        {"name": "tool_use", "template": "U"}, {"name": "default", "template": "D {{ messages | length }}"}]),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_template_is_read_where_transformers_reads_it(tiny_checkpoint, tmp_path, layout):
    from omni.tokenizer import Tokenizer

    directory = _with_templates(tiny_checkpoint, tmp_path / "ckpt", **LAYOUTS[layout])
    expected = _transformers_template(directory)
    assert expected is not None and expected.endswith("{{ messages | length }}")
    assert Tokenizer.from_checkpoint(directory).chat_template.source == expected


def test_a_checkpoint_without_a_template_gets_the_builtin_format(tiny_checkpoint, tmp_path, caplog):
    from omni.chat import AUDIO_SYSTEM_PROMPT
    from omni.config import load_config
    from omni.prompt import prepare_prompt
    from omni.tokenizer import Tokenizer

    directory = _with_templates(tiny_checkpoint, tmp_path / "ckpt")
    assert _transformers_template(directory) is None
    with caplog.at_level("WARNING"):
        bare = Tokenizer.from_checkpoint(directory)
    assert bare.chat_template is None and "ships no chat template" in caplog.text
    config = load_config(tiny_checkpoint).thinker
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": [{"type": "text", "text": "Bye"}]}]
    ids = [prepare_prompt(tokenizer, config, conversation, pad_token_id=151643, system_prompt=AUDIO_SYSTEM_PROMPT
                          ).input_ids for tokenizer in (bare, Tokenizer.from_checkpoint(tiny_checkpoint))]
    assert torch.equal(ids[0], ids[1])


@pytest.mark.parametrize("layout, message", [
    (dict(jinja="{% for %}"), r"chat_template\.jinja is not a valid Jinja chat template \(line 1"),
    (dict(legacy_json="{not json"), r"chat_template\.json is not valid JSON"),
    (dict(legacy_json={"template": "x"}), r"chat_template\.json has no 'chat_template' entry"),
    (dict(tokenizer_config=5), r"tokenizer_config\.json's 'chat_template' is neither a template text"),
    (dict(tokenizer_config=[{"name": "tool_use", "template": "U"}]), r"with a 'default' one"),
])
def test_a_broken_template_fails_at_load_naming_the_file(tiny_checkpoint, tmp_path, layout, message):
    directory = _with_templates(tiny_checkpoint, tmp_path / "ckpt", **layout)
    with pytest.raises(CheckpointError, match=message):
        load_model(directory, audio_output=False)


def _drop_added_tokens_decoder(config):
    config.pop("added_tokens_decoder")


@pytest.mark.parametrize("edit", [None, _drop_added_tokens_decoder])
def test_template_variables_are_transformers_special_tokens_map(tiny_checkpoint, tmp_path, edit):
    """Without added_tokens_decoder transformers reads special_tokens_map.json too (and lets it win)."""
    from transformers import AutoTokenizer

    from omni.tokenizer import Tokenizer

    directory = _with_templates(tiny_checkpoint, tmp_path / "ckpt", legacy_json={"chat_template": "x"},
                                tokenizer_edit=edit)
    (directory / "special_tokens_map.json").unlink()
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": {"content": "<|endoftext|>", "special": True}}))
    expected = AutoTokenizer.from_pretrained(directory).special_tokens_map
    assert Tokenizer.from_checkpoint(directory).chat_template.variables == expected
    assert ("bos_token" in expected) == (edit is not None)
