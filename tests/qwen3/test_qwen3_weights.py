"""omni.qwen3.weights: a reference Thinker language model's weights in the published per-expert spelling
and in transformers 5's fused spelling load into omni's Thinker and give the reference's logits."""

from __future__ import annotations

import pytest
import torch

from omni.errors import CheckpointError
from omni.qwen3.config import parse_config
from omni.qwen3.thinker import Thinker
from omni.qwen3.weights import load_weights

pytestmark = pytest.mark.parity

HIDDEN, VOCAB = 48, 128


def _reference():
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeTextConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeThinkerTextModel

    config = Qwen3OmniMoeTextConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, moe_intermediate_size=24, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=12, num_experts=6, num_experts_per_tok=2,
        decoder_sparse_step=1, mlp_only_layers=[1],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 2], "interleaved": True},
    )
    config._experts_implementation = "eager"
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Qwen3OmniMoeThinkerTextModel(config).eval()
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    with torch.no_grad():
        for name, parameter in list(model.named_parameters()) + [("lm_head.weight", head.weight)]:
            if name.endswith("norm.weight"):
                parameter.copy_(1.0 + 0.2 * torch.randn_like(parameter))
            else:
                parameter.normal_(0.0, 0.3 if name.endswith("mlp.gate.weight") else 0.08)
    raw = {"model_type": "qwen3_omni_moe",
           "thinker_config": {"text_config": config.to_dict(), "vision_config": {"out_hidden_size": HIDDEN},
                              "audio_config": {"output_dim": HIDDEN}},
           "talker_config": {"text_config": {"shared_expert_intermediate_size": 16, "head_dim": 128}}}
    return model, head, parse_config(raw).thinker


def fused_state(model, head, prefix="thinker.", nested=False) -> dict[str, torch.Tensor]:
    """transformers 5's spelling (what `state_dict()` holds in memory)."""
    body = "model.language_model." if nested else "model."
    state = {f"{prefix}{body}{name}": tensor for name, tensor in model.state_dict().items()}
    state[f"{prefix}lm_head.weight"] = head.weight.detach()
    return state


def per_expert_state(fused: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The published safetensors' spelling. transformers builds its fused tensor from these with
    MergeModulelist(dim=0) then Concatenate(dim=1) over [gate_proj, up_proj] (its qwen2_moe
    conversion mapping), so expert e's gate is gate_up_proj[e, :I] and its up gate_up_proj[e, I:]."""
    state = {}
    for name, tensor in fused.items():
        if name.endswith("mlp.experts.gate_up_proj"):
            base = name[: -len("gate_up_proj")]
            gate, up = tensor.chunk(2, dim=1)
            for expert in range(tensor.shape[0]):
                state[f"{base}{expert}.gate_proj.weight"] = gate[expert]
                state[f"{base}{expert}.up_proj.weight"] = up[expert]
        elif name.endswith("mlp.experts.down_proj"):
            base = name[: -len("down_proj")]
            for expert in range(tensor.shape[0]):
                state[f"{base}{expert}.down_proj.weight"] = tensor[expert]
        else:
            state[name] = tensor
    return state


@pytest.fixture(scope="module")
def reference():
    return _reference()


def _logits(thinker, input_ids):
    positions = torch.arange(input_ids.shape[1]).view(1, 1, -1).expand(3, 1, -1)
    with torch.no_grad():
        return thinker.logits(thinker(thinker.embed(input_ids), positions))


def _reference_logits(model, head, input_ids):
    with torch.no_grad():
        return head(model(input_ids=input_ids, use_cache=False).last_hidden_state)


@pytest.mark.parametrize("spelling", ["per_expert", "fused", "fused_nested"])
def test_both_spellings_load_every_parameter_once(reference, spelling):
    model, head, config = reference
    fused = fused_state(model, head, nested=spelling == "fused_nested")
    state = per_expert_state(fused) if spelling == "per_expert" else fused
    thinker = Thinker(config, encoders=False)
    storage = {name: parameter.data_ptr() for name, parameter in thinker.named_parameters()}
    extra = {"talker.model.norm.weight": torch.ones(3)}  # outside the prefix: skipped
    report = load_weights(thinker, list(state.items()) + list(extra.items()), prefix="thinker.")
    assert report.ok and report.loaded == len(state) and report.skipped == 1
    assert {name: parameter.data_ptr() for name, parameter in thinker.named_parameters()} == storage
    if spelling == "per_expert":
        assert sum("experts.0." in name for name in state) == 3 * 2  # two sparse layers, three projections
    input_ids = torch.randint(0, VOCAB, (1, 14), generator=torch.Generator().manual_seed(1))
    assert (_logits(thinker, input_ids) - _reference_logits(model, head, input_ids)).abs().max().item() <= 1e-4


def test_spellings_fill_identical_parameters(reference):
    model, head, config = reference
    fused = fused_state(model, head)
    first, second = Thinker(config, encoders=False), Thinker(config, encoders=False)
    load_weights(first, fused.items(), prefix="thinker.")
    load_weights(second, per_expert_state(fused).items(), prefix="thinker.")
    for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters()):
        assert torch.equal(a, b), name


def test_missing_unexpected_and_duplicate_names_are_reported(reference):
    model, head, config = reference
    state = per_expert_state(fused_state(model, head))
    missing = dict(state)
    del missing["thinker.model.layers.2.mlp.experts.4.up_proj.weight"]
    del missing["thinker.model.norm.weight"]
    with pytest.raises(CheckpointError, match="experts.up_proj"):
        load_weights(Thinker(config, encoders=False), missing.items(), prefix="thinker.")
    report = load_weights(Thinker(config, encoders=False), missing.items(), prefix="thinker.", strict=False)
    assert report.missing == ["model.layers.2.mlp.experts.up_proj (experts [4])", "model.norm.weight"]

    unexpected = dict(state)
    unexpected["thinker.model.layers.0.self_attn.q_proj.bias"] = torch.zeros(48)
    unexpected["thinker.model.layers.0.mlp.experts.9.gate_proj.weight"] = torch.zeros(24, HIDDEN)  # no expert 9
    report = load_weights(Thinker(config, encoders=False), unexpected.items(), prefix="thinker.", strict=False)
    assert sorted(report.unexpected) == ["thinker.model.layers.0.mlp.experts.9.gate_proj.weight",
                                         "thinker.model.layers.0.self_attn.q_proj.bias"]

    twice = list(state.items()) + [("thinker.model.layers.0.mlp.experts.1.down_proj.weight",
                                    state["thinker.model.layers.0.mlp.experts.1.down_proj.weight"])]
    with pytest.raises(CheckpointError, match="already filled"):
        load_weights(Thinker(config, encoders=False), twice, prefix="thinker.")

    wrong = dict(state)
    wrong["thinker.model.norm.weight"] = torch.ones(HIDDEN + 1)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(Thinker(config, encoders=False), wrong.items(), prefix="thinker.")


def test_bf16_checkpoint_converts_into_the_model_dtype(reference):
    model, head, config = reference
    state = {name: tensor.to(torch.bfloat16) for name, tensor in per_expert_state(fused_state(model, head)).items()}
    thinker = Thinker(config, encoders=False)
    load_weights(thinker, state.items(), prefix="thinker.")
    assert thinker.dtype == torch.float32
    expected = state["thinker.model.layers.2.mlp.experts.3.down_proj.weight"].float()
    assert torch.equal(thinker.model.layers[2].mlp.experts.down_proj[3], expected)
