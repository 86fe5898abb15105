"""GPTQ v1 / AWQ GEMM checkpoints as `omni make-checkpoint --quantize` writes them (the published
layouts), read back from the files and loaded into QuantLinears."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from omni.errors import CheckpointError, OmniError
from omni.loading import load_model
from omni.quant.linear import QuantLinear
from omni.quant.loader import decoder_linear_names
from omni.tools.quantized_checkpoint import cached_quantized_checkpoint

# (method, act-order, group size): tiny's widths are 64 and 128, so the default group is 64 (the
# largest of 128/64/32 dividing both); act-order in groups of 32 puts every linear's inputs in
# several scattered groups
KINDS = [("gptq", False, None), ("gptq", True, 32), ("awq", False, None)]


def _tensors(directory) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            tensors.update({name: handle.get_tensor(name) for name in handle.keys()})
    return tensors


def _nibbles(words: torch.Tensor) -> torch.Tensor:
    """[..., W] int32 -> [..., W, 8]: nibble j of each word (bits 4j..4j+3), low to high."""
    return torch.stack([(words >> (4 * j)) & 0xF for j in range(8)], dim=-1)


def _dequantize_from_the_description(method: str, entry: dict[str, torch.Tensor]) -> torch.Tensor:
    """The float weight [out, in] of one linear, written straight from the format descriptions
    (independent of omni.quant): see the section "Quantized Qwen2.5-Omni checkpoints" of the notes."""
    scales = entry["scales"].to(torch.float32)
    if method == "gptq":
        codes = _nibbles(entry["qweight"]).permute(0, 2, 1).reshape(-1, entry["qweight"].shape[1])  # [K, N]
        # v1: each qzeros word holds (z - 1) per nibble, as a whole word minus 0x11111111
        words = entry["qzeros"].to(torch.int64) + 0x11111111
        zeros = _nibbles(words).reshape(words.shape[0], -1)
        group_of = entry["g_idx"].long()
    else:
        order = [0, 2, 4, 6, 1, 3, 5, 7]  # nibble j holds output column 8c + order[j]
        nibbles = _nibbles(entry["qweight"])
        codes = torch.empty_like(nibbles)
        codes[..., order] = nibbles
        codes = codes.reshape(entry["qweight"].shape[0], -1)
        zero_nibbles = _nibbles(entry["qzeros"])
        zeros = torch.empty_like(zero_nibbles)
        zeros[..., order] = zero_nibbles
        zeros = zeros.reshape(entry["qzeros"].shape[0], -1)
        group_of = torch.arange(codes.shape[0]) // (codes.shape[0] // scales.shape[0])
    return ((codes - zeros[group_of]).to(torch.float32) * scales[group_of]).t()


@pytest.fixture(scope="module", params=KINDS, ids=["gptq", "gptq-act-order", "awq"])
def published(request, tiny_checkpoint):
    method, desc_act, group_size = request.param
    return method, desc_act, cached_quantized_checkpoint("tiny", method, desc_act=desc_act, group_size=group_size)


def test_the_files_hold_the_published_layout(published, tiny_checkpoint):
    method, desc_act, directory = published
    config = json.loads((directory / "config.json").read_text())
    section = config["quantization_config"]
    assert section["quant_method"] == method and section["bits"] == 4
    group = 32 if desc_act else 64
    assert section["group_size"] == group
    if method == "gptq":
        assert section["desc_act"] is desc_act and section["sym"] is True and section["checkpoint_format"] == "gptq"
    else:
        assert section["version"] == "gemm" and section["zero_point"] is True

    base, tensors = _tensors(tiny_checkpoint), _tensors(directory)
    linears = decoder_linear_names(config["thinker_config"]["text_config"]["num_hidden_layers"])
    packed_names = {"gptq": ("qweight", "qzeros", "scales", "g_idx"), "awq": ("qweight", "qzeros", "scales")}[method]
    for path in linears:
        out_features, in_features = base[f"{path}.weight"].shape
        groups = in_features // group
        assert f"{path}.weight" not in tensors
        if method == "gptq":
            shapes = {"qweight": (in_features // 8, out_features), "qzeros": (groups, out_features // 8),
                      "scales": (groups, out_features), "g_idx": (in_features,)}
        else:
            shapes = {"qweight": (in_features, out_features // 8), "qzeros": (groups, out_features // 8),
                      "scales": (groups, out_features)}
        for key in packed_names:
            assert tuple(tensors[f"{path}.{key}"].shape) == shapes[key], (path, key)
        assert tensors[f"{path}.qweight"].dtype == tensors[f"{path}.qzeros"].dtype == torch.int32
        assert tensors[f"{path}.scales"].dtype == torch.float16
        if f"{path}.bias" in base:
            assert tensors[f"{path}.bias"].dtype == torch.float16
        if method == "gptq":
            g_idx = tensors[f"{path}.g_idx"].long()
            assert tensors[f"{path}.g_idx"].dtype == torch.int32
            assert torch.equal(torch.bincount(g_idx), torch.full((groups,), group))
            assert torch.equal(g_idx, torch.arange(in_features) // group) is not desc_act
            assert (tensors[f"{path}.qzeros"] == 0x77777777).all()  # sym: zero 8, stored as 7
        # the file's weight, decoded from the format description, is the base weight rounded to 4 bits
        entry = {key: tensors[f"{path}.{key}"] for key in packed_names}
        weight = base[f"{path}.weight"].to(torch.float32)
        restored = _dequantize_from_the_description(method, entry)
        step = entry["scales"].to(torch.float32).max()
        assert (restored - weight).abs().max() <= step * (0.5 + 8 * 2.0**-11)
    untouched = [name for name in base if name.rpartition(".")[0] not in set(linears)]
    assert untouched and all(torch.equal(base[name], tensors[name]) for name in untouched)
    assert set(tensors) == set(untouched) | {f"{p}.{k}" for p in linears for k in packed_names} | {
        f"{p}.bias" for p in linears if f"{p}.bias" in base}


def test_loading_gives_quantlinears_that_compute_the_files_weights(published, tiny_checkpoint, forced_logits):
    """The loaded model against a plain one holding the weights decoded from the files."""
    method, _, directory = published
    quantized = load_model(directory, dtype="fp32", audio_output=False)
    assert quantized.quantization.startswith(method.upper())
    layers = decoder_linear_names(quantized.config.thinker.text.num_layers)
    assert all(isinstance(quantized.model.get_submodule(p), QuantLinear) for p in layers)

    plain = load_model(tiny_checkpoint, dtype="fp32", audio_output=False)
    tensors = _tensors(directory)
    packed_names = ("qweight", "qzeros", "scales") + (("g_idx",) if method == "gptq" else ())
    with torch.no_grad():
        for path in layers:
            linear = plain.model.get_submodule(path)
            entry = {key: tensors[f"{path}.{key}"] for key in packed_names}
            linear.weight.copy_(_dequantize_from_the_description(method, entry))
            if linear.bias is not None:  # the file's bias is fp16
                linear.bias.copy_(tensors[f"{path}.bias"].to(torch.float32))
    cosine = torch.nn.functional.cosine_similarity(forced_logits(quantized), forced_logits(plain), dim=-1)
    assert cosine.min() >= 0.9999, f"{method}: min cosine {cosine.min():.7f}"


def test_a_missing_packed_tensor_is_named(published, tmp_path):
    _, _, directory = published
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy, symlinks=True)
    path = copy / "model.safetensors"
    tensors = load_file(path)
    del tensors["thinker.model.layers.1.mlp.down_proj.qzeros"]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"1 missing: thinker.model.layers.1.mlp.down_proj.qzeros"):
        load_model(copy, dtype="fp32", audio_output=False)


def test_an_unknown_quantization_config_is_refused(tiny_checkpoint, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, copy, symlinks=True)
    config = json.loads((copy / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="quant_method 'bitsandbytes'; omni loads 'gptq'"):
        load_model(copy, dtype="fp32", audio_output=False)
    config["quantization_config"] = {"quant_method": "gptq", "bits": 8, "group_size": 128}
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="gptq checkpoints with 8 bits are not supported"):
        load_model(copy, dtype="fp32", audio_output=False)


def test_quantizing_an_already_quantized_checkpoint_is_refused(published):
    _, _, directory = published
    with pytest.raises(OmniError, match="is already quantized .*; load it without --quantize int8"):
        load_model(directory, dtype="fp32", audio_output=False, quantize="int8")
