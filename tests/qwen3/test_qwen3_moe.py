"""SparseMoE against transformers' Qwen3-Omni sparse MoE blocks (eager expert loop), fp32."""

from __future__ import annotations

import pytest
import torch

from omni import moe as moe_module
from omni.moe import SparseMoE


@pytest.mark.parametrize("tokens, grouped_mm, expected", [
    (1, True, "forward_grouped"), (3, True, "forward_grouped"), (4, True, "forward_padded"),
    (40, True, "forward_padded"), (1, False, "forward_gathered"), (40, False, "forward_padded"),
])
def test_cpu_dispatch(tokens, grouped_mm, expected, monkeypatch):
    """On the CPU: the grouped product below as many (token, expert) pairs as experts, the padded
    bmm from there (16 experts, top 4 here), the gathered bmm where torch._grouped_mm is missing."""
    block = SparseMoE(32, 24, 16, 4, True)
    monkeypatch.setattr(moe_module, "_HAS_GROUPED_MM", grouped_mm)
    called = []
    for name in ("forward_gathered", "forward_grouped", "forward_padded"):
        original = getattr(block.experts, name)
        monkeypatch.setattr(block.experts, name, lambda *args, _name=name, _f=original: called.append(_name) or _f(*args))
    with torch.no_grad():
        block(torch.randn(1, tokens, 32))
    assert called == [expected]

pytestmark = pytest.mark.parity


def _text_config(num_experts=8, top_k=2, norm_topk_prob=True, shared=None):
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import (
        Qwen3OmniMoeTalkerTextConfig,
        Qwen3OmniMoeTextConfig,
    )

    common = dict(hidden_size=32, intermediate_size=48, moe_intermediate_size=24, num_experts=num_experts,
                  num_experts_per_tok=top_k, norm_topk_prob=norm_topk_prob, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, hidden_act="silu")
    if shared is None:
        config = Qwen3OmniMoeTextConfig(**common)
    else:
        config = Qwen3OmniMoeTalkerTextConfig(**common)
        config.shared_expert_intermediate_size = shared
    config._experts_implementation = "eager"
    return config


def _reference_block(config, shared: bool):
    from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe as ref

    block = ref.Qwen3OmniMoeTalkerTextSparseMoeBlock(config) if shared else ref.Qwen3OmniMoeThinkerTextSparseMoeBlock(config)
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.normal_(0.0, 0.3)
    return block.eval()


def _copy(reference, omni_block: SparseMoE) -> None:
    intermediate = reference.experts.down_proj.shape[-1]
    with torch.no_grad():
        omni_block.gate.weight.copy_(reference.gate.weight)
        # transformers fuses [gate; up] along the output rows: the first I rows are the gate
        omni_block.experts.gate_proj.copy_(reference.experts.gate_up_proj[:, :intermediate])
        omni_block.experts.up_proj.copy_(reference.experts.gate_up_proj[:, intermediate:])
        omni_block.experts.down_proj.copy_(reference.experts.down_proj)
        if omni_block.shared_expert is not None:
            for name in ("gate_proj", "up_proj", "down_proj"):
                getattr(omni_block.shared_expert, name).weight.copy_(getattr(reference.shared_expert, name).weight)
            omni_block.shared_expert_gate.weight.copy_(reference.shared_expert_gate.weight)


@pytest.mark.parametrize("tokens", [1, 3, 40])
@pytest.mark.parametrize("norm_topk_prob", [True, False])
@pytest.mark.parametrize("shared", [False, True])
def test_sparse_moe_matches_reference(tokens, norm_topk_prob, shared):
    torch.manual_seed(tokens)
    config = _text_config(norm_topk_prob=norm_topk_prob, shared=16 if shared else None)
    reference = _reference_block(config, shared)
    block = SparseMoE(32, 24, 8, 2, norm_topk_prob, 16 if shared else 0)
    _copy(reference, block)
    hidden = torch.randn(2, tokens, 32)
    with torch.no_grad():
        expected = reference(hidden)
        got = block(hidden)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())


@pytest.mark.parametrize("path", ["forward_gathered", "forward_grouped", "forward_padded"])
@pytest.mark.parametrize("tokens", [1, 9])
def test_each_expert_path_matches_reference(path, tokens):
    """Every expert path for the same tokens, so none is only exercised at the sizes where the
    dispatch picks it."""
    torch.manual_seed(7)
    config = _text_config(num_experts=16, top_k=4)
    reference = _reference_block(config, shared=False)
    block = SparseMoE(32, 24, 16, 4, True)
    _copy(reference, block)
    hidden = torch.randn(1, tokens, 32)
    with torch.no_grad():
        expected = reference(hidden)
        flat = hidden.reshape(-1, 32)
        index, weight = block.route(flat)
        got = getattr(block.experts, path)(flat, index, weight).view_as(hidden)
    assert (got - expected).abs().max().item() <= 1e-5 * max(1.0, expected.abs().max().item())


def test_routing_matches_reference_router():
    torch.manual_seed(3)
    config = _text_config(num_experts=16, top_k=4)
    reference = _reference_block(config, shared=False)
    block = SparseMoE(32, 24, 16, 4, True)
    _copy(reference, block)
    hidden = torch.randn(20, 32)
    with torch.no_grad():
        _, ref_weight, ref_index = reference.gate(hidden)
        index, weight = block.route(hidden)
    assert torch.equal(index, ref_index)
    assert torch.allclose(weight, ref_weight, atol=1e-7, rtol=0)


def test_bf16_close_to_fp32():
    """bf16 weights and activations stay near the fp32 result on every path."""
    torch.manual_seed(5)
    block = SparseMoE(64, 32, 8, 2, True).eval()
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.normal_(0.0, 0.2)
    for tokens in (1, 30):
        hidden = torch.randn(1, tokens, 64)
        with torch.no_grad():
            exact = block.float()(hidden)
            low = block.to(torch.bfloat16)(hidden.bfloat16()).float()
        # a near-tie may route differently in bf16, so compare on average
        assert (low - exact).abs().mean().item() < 0.05 * exact.abs().mean().item()
