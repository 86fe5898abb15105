"""Qwen3-Omni Thinker language model against transformers' Qwen3OmniMoeThinkerTextModel (+ lm_head),
fp32, small sizes, weights copied through omni.qwen3.weights."""

from __future__ import annotations

import pytest
import torch

from omni.qwen3.config import parse_config
from omni.qwen3.thinker import Thinker
from omni.qwen3.weights import load_weights

pytestmark = pytest.mark.parity

HIDDEN, VOCAB, LAYERS = 64, 256, 4


def reference_text_config(attn="sdpa"):
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeTextConfig

    config = Qwen3OmniMoeTextConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8,
        num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[2],
        rms_norm_eps=1e-6,
        # 8 frequency pairs: interleaved T H W T H W T T
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2],
                         "interleaved": True},
    )
    config._experts_implementation = "eager"
    config._attn_implementation = attn
    return config


def omni_thinker_config(reference_config):
    raw = {
        "model_type": "qwen3_omni_moe",
        "thinker_config": {"text_config": reference_config.to_dict(), "vision_config": {"out_hidden_size": HIDDEN},
                           "audio_config": {"output_dim": HIDDEN}},
        "talker_config": {"text_config": {"shared_expert_intermediate_size": 16, "head_dim": 128}},
    }
    return parse_config(raw).thinker


class ReferenceThinker(torch.nn.Module):
    """The reference's Thinker language model: text model + lm_head (the published tree's names)."""

    def __init__(self, config):
        super().__init__()
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeThinkerTextModel

        self.model = Qwen3OmniMoeThinkerTextModel(config)
        self.lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    config = reference_text_config()
    reference = ReferenceThinker(config).eval()
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(1.0 + 0.2 * torch.randn_like(parameter))
            elif name.endswith("mlp.gate.weight"):
                parameter.normal_(0.0, 0.5)  # spread the router so different tokens pick different experts
            else:
                parameter.normal_(0.0, 0.08)
        # Random weights make greedy decoding repeat one token; a head that reads the current token's
        # embedding through a permutation makes it walk a cycle of different tokens instead.
        reference.model.embed_tokens.weight.normal_(0.0, 1.0)
        permutation = torch.randperm(VOCAB)
        reference.lm_head.weight.copy_(0.5 * reference.model.embed_tokens.weight[permutation])
    thinker = Thinker(omni_thinker_config(config), encoders=False).eval()
    report = load_weights(thinker, reference.state_dict().items())
    assert report.ok and report.loaded == len(reference.state_dict())
    return reference, thinker


def mixed_positions(seq: int) -> torch.Tensor:
    """(3, 1, seq): text, then a 2x3 'image' block whose three components differ, then text."""
    text = torch.arange(5)
    grid_h = torch.tensor([0, 0, 0, 1, 1, 1])
    grid_w = torch.tensor([0, 1, 2, 0, 1, 2])
    block = torch.stack([torch.full((6,), 5), 5 + grid_h, 5 + grid_w])
    tail = torch.arange(7, 7 + seq - 11)
    positions = torch.cat([text.expand(3, -1), block, tail.expand(3, -1)], dim=1)
    return positions[:, None, :]


def reference_logits(reference, input_ids, positions, hidden_layer=None, **kwargs):
    out = reference.model(input_ids=input_ids, position_ids=positions, use_cache=False,
                          output_hidden_states=hidden_layer is not None, **kwargs)
    logits = reference.lm_head(out.last_hidden_state)
    return logits, (out.hidden_states[hidden_layer] if hidden_layer is not None else None)


def test_rope_components_are_interleaved(models):
    _, thinker = models
    assert thinker.model.rope_component.tolist() == [0, 1, 2, 0, 1, 2, 0, 0]
    sparse = [type(layer.mlp).__name__ for layer in thinker.model.layers]
    assert sparse == ["SparseMoE", "SparseMoE", "GatedMLP", "SparseMoE"]


def test_logits_match_with_3d_positions(models):
    reference, thinker = models
    torch.manual_seed(1)
    input_ids = torch.randint(0, VOCAB, (1, 20))
    positions = mixed_positions(20)
    with torch.no_grad():
        expected, _ = reference_logits(reference, input_ids, positions)
        got = thinker.logits(thinker(thinker.embed(input_ids), positions))
    assert (got - expected).abs().max().item() <= 1e-4


def test_logits_match_with_deepstack(models):
    reference, thinker = models
    torch.manual_seed(2)
    input_ids = torch.randint(0, VOCAB, (2, 20))
    positions = mixed_positions(20).expand(3, 2, 20)
    visual_mask = torch.zeros(2, 20, dtype=torch.bool)
    visual_mask[:, 5:11] = True
    visual_mask[1, 3] = True
    count = int(visual_mask.sum())
    features = [torch.randn(count, HIDDEN) for _ in range(3)]
    with torch.no_grad():
        expected, expected_hidden = reference_logits(
            reference, input_ids, positions, hidden_layer=2, visual_pos_masks=visual_mask,
            deepstack_visual_embeds=features)
        plain, _ = reference_logits(reference, input_ids, positions)
        hidden, layer_hidden = thinker(thinker.embed(input_ids), positions, visual_mask=visual_mask,
                                       deepstack_features=features, hidden_states_of_layer=2)
        got = thinker.logits(hidden)
    assert (expected - plain).abs().max().item() > 1e-2  # the features do change the result
    assert (got - expected).abs().max().item() <= 1e-4
    assert (layer_hidden - expected_hidden).abs().max().item() <= 1e-4


@pytest.mark.parametrize("layer", [0, 1, 3, LAYERS])
def test_hidden_state_of_layer_matches_reference(models, layer):
    reference, thinker = models
    torch.manual_seed(3)
    input_ids = torch.randint(0, VOCAB, (1, 12))
    positions = torch.arange(12).view(1, 1, -1).expand(3, 1, -1)
    with torch.no_grad():
        _, expected = reference_logits(reference, input_ids, positions, hidden_layer=layer)
        _, got = thinker(thinker.embed(input_ids), positions, hidden_states_of_layer=layer)
    assert (got - expected).abs().max().item() <= 1e-5


def test_greedy_decode_with_cache_matches_reference(models):
    """16 greedy tokens: omni prefills once and decodes with its KV cache; the reference recomputes
    the whole sequence at every step (no cache)."""
    reference, thinker = models
    torch.manual_seed(4)
    prompt = torch.randint(0, VOCAB, (1, 20))
    positions = mixed_positions(20)
    next_position = int(positions.max()) + 1

    expected_tokens, ids, pos = [], prompt, positions
    with torch.no_grad():
        for _ in range(16):
            logits, _ = reference_logits(reference, ids, pos)
            token = int(logits[0, -1].argmax())
            expected_tokens.append(token)
            step_position = torch.full((3, 1, 1), int(pos.max()) + 1)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            pos = torch.cat([pos, step_position], dim=2)

        cache = thinker.new_cache(1, 8)  # small on purpose: decoding grows it
        hidden = thinker(thinker.embed(prompt), positions, cache=cache)
        token = int(thinker.logits(hidden[:, -1]).argmax())
        got_tokens = [token]
        for step in range(15):
            step_position = torch.full((3, 1, 1), next_position + step)
            hidden = thinker(thinker.embed(torch.tensor([[token]])), step_position, cache=cache)
            token = int(thinker.logits(hidden[:, -1]).argmax())
            got_tokens.append(token)
    assert len(set(expected_tokens)) > 2  # not a degenerate repeat of one token
    assert got_tokens == expected_tokens


def test_forward_rows_matches_batched_step(models):
    """The engine's per-row-cache step equals each row's own decode step."""
    _, thinker = models
    torch.manual_seed(5)
    prompts = [torch.randint(0, VOCAB, (1, n)) for n in (7, 11)]
    caches, singles = [], []
    with torch.no_grad():
        for prompt in prompts:
            positions = torch.arange(prompt.shape[1]).view(1, 1, -1).expand(3, 1, -1)
            cache = thinker.new_cache(1, 16)
            thinker(thinker.embed(prompt), positions, cache=cache)
            caches.append(cache)
        tokens = torch.tensor([[3], [9]])
        step_positions = torch.tensor([7, 11]).view(1, 2, 1).expand(3, 2, 1)
        for row in range(2):
            copy = caches[row].copy_prefix(caches[row].length, 16)
            singles.append(thinker(thinker.embed(tokens[row : row + 1]), step_positions[:, row : row + 1],
                                   cache=copy))
        rows = thinker(thinker.embed(tokens), step_positions, row_caches=caches)
    assert (rows - torch.cat(singles)).abs().max().item() <= 1e-5
    assert [cache.length for cache in caches] == [8, 12]


def test_dense_decoder_matches_code_predictor_model():
    """A DenseDecoderConfig Qwen3Decoder (the code predictor's stack: 1-D rope, (batch, seq)
    positions, no embedding) against the reference's code predictor model."""
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import (
        Qwen3OmniMoeTalkerCodePredictorConfig,
    )
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeTalkerCodePredictorModel

    from omni.qwen3.config import DenseDecoderConfig
    from omni.qwen3.decoder import Qwen3Decoder

    torch.manual_seed(6)
    reference_config = Qwen3OmniMoeTalkerCodePredictorConfig(
        vocab_size=64, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_code_groups=4, rope_parameters={"rope_type": "default",
                                                                                "rope_theta": 10000.0})
    reference_config._attn_implementation = "sdpa"
    reference = Qwen3OmniMoeTalkerCodePredictorModel(reference_config).eval()
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            parameter.copy_(1.0 + 0.2 * torch.randn_like(parameter) if name.endswith("norm.weight")
                            else 0.1 * torch.randn_like(parameter))
    config = DenseDecoderConfig(vocab_size=64, hidden_size=48, intermediate_size=80, num_layers=3,
                                num_attention_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-6,
                                rope_theta=10000.0, max_position_embeddings=32768, num_code_groups=4)
    decoder = Qwen3Decoder(config, embed=False).eval()
    state = {name: tensor for name, tensor in reference.state_dict().items() if not name.startswith("codec_embedding")}
    assert load_weights(decoder, state.items()).ok
    embeds = torch.randn(2, 9, 48)
    positions = torch.arange(3, 12).expand(2, -1)
    with torch.no_grad():
        expected = reference(inputs_embeds=embeds, position_ids=positions, use_cache=False).last_hidden_state
        got = decoder(embeds, positions)
        cache = decoder.new_cache(2, 4)
        stepped = torch.cat([decoder(embeds[:, :5], positions[:, :5], cache=cache)]
                            + [decoder(embeds[:, i : i + 1], positions[:, i : i + 1], cache=cache) for i in range(5, 9)],
                            dim=1)
    assert decoder.embed_tokens is None
    assert (got - expected).abs().max().item() <= 1e-5
    assert (stepped - expected).abs().max().item() <= 1e-5
