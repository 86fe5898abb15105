"""Qwen3-Omni's vision tower against transformers' Qwen3OmniMoeVisionEncoder with copied weights, fp32."""

from __future__ import annotations

import pytest
import torch

from omni.encoders.qwen3.vision_encoder import VisionEncoder
from omni.qwen3.config import VisionEncoderConfig

TABLE_SIDE = 6  # a 6 x 6 learned position table: every grid below but one needs interpolation


def _reference_config():
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeVisionEncoderConfig

    config = Qwen3OmniMoeVisionEncoderConfig(
        depth=4, hidden_size=64, hidden_act="gelu_pytorch_tanh", intermediate_size=96, num_heads=4, in_channels=3,
        patch_size=16, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=48,
        num_position_embeddings=TABLE_SIDE**2, deepstack_visual_indexes=[0, 2],
    )
    config._attn_implementation = "eager"
    return config


def _omni_config(reference) -> VisionEncoderConfig:
    return VisionEncoderConfig(
        depth=reference.depth, hidden_size=reference.hidden_size, hidden_act=reference.hidden_act,
        intermediate_size=reference.intermediate_size, num_heads=reference.num_heads,
        in_channels=reference.in_channels, patch_size=reference.patch_size,
        spatial_merge_size=reference.spatial_merge_size, temporal_patch_size=reference.temporal_patch_size,
        out_hidden_size=reference.out_hidden_size, num_position_embeddings=reference.num_position_embeddings,
        deepstack_visual_indexes=tuple(reference.deepstack_visual_indexes),
        rope_theta=float(reference.rope_parameters["rope_theta"]),
    )


@pytest.fixture(scope="module")
def towers():
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeVisionEncoder

    torch.manual_seed(0)
    reference_config = _reference_config()
    reference = Qwen3OmniMoeVisionEncoder(reference_config).eval()
    with torch.no_grad():  # random init leaves the LayerNorms at identity and outputs small: perturb everything
        for parameter in reference.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    ours = VisionEncoder(_omni_config(reference_config)).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours, reference


def _pixels(grids, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    patches = int(torch.tensor(grids).prod(-1).sum())
    return torch.randn(patches, 3 * 2 * 16 * 16, generator=generator)


def _compare(ours, reference, grids) -> float:
    grid_thw = torch.tensor(grids)
    pixels = _pixels(grids)
    with torch.no_grad():
        merged, deepstack = ours(pixels, grid_thw)
        expected = reference(pixels, grid_thw=grid_thw)
    tokens = int(grid_thw.prod(-1).sum()) // 4
    assert merged.shape == expected.pooler_output.shape == (tokens, ours.config.out_hidden_size)
    assert len(deepstack) == len(expected.deepstack_features) == 2
    assert expected.pooler_output.std().item() > 0.3  # outputs of magnitude ~1
    worst = (merged - expected.pooler_output).abs().max().item()
    for actual, reference_features in zip(deepstack, expected.deepstack_features):
        assert actual.shape == (tokens, ours.config.out_hidden_size)
        assert reference_features.std().item() > 0.3
        worst = max(worst, (actual - reference_features).abs().max().item())
    return worst


def test_weight_names_match_the_checkpoint(towers):
    """The published checkpoint's `thinker.visual.*` names, one to one (the reference's state_dict)."""
    ours, reference = towers
    assert set(ours.state_dict()) == set(reference.state_dict())
    for name in ["patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed.weight", "blocks.0.attn.qkv.weight",
                 "blocks.3.mlp.linear_fc2.bias", "merger.ln_q.weight", "merger.mlp.2.weight",
                 "merger_list.1.ln_q.weight", "merger_list.0.mlp.0.bias"]:
        assert name in ours.state_dict()
    assert ours.merger.ln_q.weight.shape == (64,)
    assert ours.merger_list[0].ln_q.weight.shape == (4 * 64,)  # deepstack mergers normalise after the merge


@pytest.mark.parity
@pytest.mark.parametrize("grids", [
    [[1, 6, 6]],  # the table's own side: no interpolation
    [[1, 8, 12]],  # one image, upsampled table
    [[1, 4, 2]],  # one image, downsampled table
    [[1, 10, 6], [1, 2, 14]],  # two images of different grids
    [[3, 4, 8]],  # a video: three temporal patches, positions repeated, attention within each frame
    [[2, 6, 4], [1, 14, 10], [1, 2, 2]],  # a video and two images together
])
def test_tower_matches_reference(towers, grids):
    ours, reference = towers
    assert _compare(ours, reference, grids) <= 1e-4


@pytest.mark.parity
def test_items_are_independent(towers):
    """Each image/frame attends only to itself: the batch's rows are the per-item rows."""
    ours, _ = towers
    grids = [[1, 10, 6], [2, 4, 4]]
    pixels = _pixels(grids)
    with torch.no_grad():
        together, _ = ours(pixels, torch.tensor(grids))
        first, _ = ours(pixels[:60], torch.tensor(grids[:1]))
        second, _ = ours(pixels[60:], torch.tensor(grids[1:]))
    assert (torch.cat([first, second]) - together).abs().max().item() <= 1e-5


@pytest.mark.parity
def test_meta_device_build_and_reset_buffers(towers):
    """The loader builds the tree on the meta device, materialises it and loads weights; the non-persistent
    rotary frequencies come back through reset_buffers."""
    ours, reference = towers
    with torch.device("meta"):
        built = VisionEncoder(ours.config)
    built = built.to_empty(device="cpu").eval()
    built.load_state_dict(reference.state_dict(), strict=True)
    built.reset_buffers()
    grids = [[1, 8, 12], [2, 4, 4]]
    with torch.no_grad():
        expected, expected_deepstack = ours(_pixels(grids), torch.tensor(grids))
        actual, deepstack = built(_pixels(grids), torch.tensor(grids))
    assert torch.equal(actual, expected)
    assert all(torch.equal(a, b) for a, b in zip(deepstack, expected_deepstack))
