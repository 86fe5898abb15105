"""The vision and audio encoders against the reference towers (`model.visual`, `model.audio_tower` of
transformers' Qwen2_5OmniThinkerForConditionalGeneration) on the same checkpoint weights."""

from __future__ import annotations

import pytest
import torch

from omni.loading import load_model

# (t, h, w) patch grids: windows cut at the edges (h, w not multiples of 8 patches), a video, a tiny image
GRIDS = [[1, 10, 14], [3, 8, 12], [1, 4, 4], [2, 18, 6]]
# log-mel frame counts: below one 200-frame chunk, exactly two chunks, odd, a one-token clip
FEATURE_LENS = [137, 400, 1001, 3]


@pytest.fixture(scope="module")
def towers(checkpoint):
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    ours = load_model(checkpoint, dtype="fp32", audio_output=False).model.thinker
    reference = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return ours, reference, checkpoint


def _pixels(grid):
    generator = torch.Generator().manual_seed(1)
    patches = int(torch.tensor(grid).prod(-1).sum())
    return torch.randn(patches, 3 * 2 * 14 * 14, generator=generator)


def _features():
    generator = torch.Generator().manual_seed(2)
    return torch.randn(128, sum(FEATURE_LENS), generator=generator), torch.tensor(FEATURE_LENS)


@pytest.mark.parity
def test_vision_tower_matches_reference(towers):
    ours, reference, _ = towers
    grid = torch.tensor(GRIDS)
    pixels = _pixels(GRIDS)
    with torch.no_grad():
        actual = ours.visual(pixels, grid)
        expected = reference.model.visual(pixels, grid_thw=grid).pooler_output
    assert actual.shape == expected.shape == (int(grid.prod(-1).sum()) // 4, ours.config.vision.out_hidden_size)
    assert (actual - expected).abs().max().item() <= 1e-4
    assert expected.abs().max().item() > 1e-2


@pytest.mark.parity
def test_vision_items_are_independent(towers):
    """Running items one by one gives the batch's rows: the prompt builder may batch images freely."""
    ours, _, _ = towers
    pixels = _pixels(GRIDS)
    with torch.no_grad():
        together = ours.visual(pixels, torch.tensor(GRIDS))
        parts, offset = [], 0
        for grid in GRIDS:
            count = grid[0] * grid[1] * grid[2]
            parts.append(ours.visual(pixels[offset: offset + count], torch.tensor([grid])))
            offset += count
    assert (torch.cat(parts) - together).abs().max().item() <= 1e-5


@pytest.mark.parity
def test_audio_tower_matches_reference(towers):
    ours, reference, _ = towers
    features, lens = _features()
    with torch.no_grad():
        actual = ours.audio_tower(features, lens)
        expected = reference.model.audio_tower(features, feature_lens=lens).last_hidden_state
    assert actual.shape == expected.shape
    assert actual.shape[0] == sum((((n - 1) // 2 + 1 - 2) // 2 + 1) for n in FEATURE_LENS)
    assert (actual - expected).abs().max().item() <= 1e-4
    assert expected.abs().max().item() > 1e-2


def test_towers_run_in_bf16(towers):
    ours32, _, checkpoint = towers
    ours16 = load_model(checkpoint, dtype="bf16", audio_output=False).model.thinker
    grid = torch.tensor(GRIDS)
    pixels = _pixels(GRIDS)
    features, lens = _features()
    with torch.no_grad():
        vision = ours16.visual(pixels, grid)
        audio = ours16.audio_tower(features.bfloat16(), lens)
        vision32 = ours32.visual(pixels, grid)
        audio32 = ours32.audio_tower(features, lens)
    assert vision.dtype == audio.dtype == torch.bfloat16
    for low, high in ((vision, vision32), (audio, audio32)):
        relative = (low.float() - high).norm() / high.norm()
        assert relative.item() < 0.05, f"bf16 drifts {relative.item():.3f} from fp32"
