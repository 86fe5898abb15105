"""Thinker.logits: the oneDNN-packed copy of lm_head exists only where it pays (bench/lm_head.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from omni.lm_head import ONEDNN as _ONEDNN
from omni.thinker.model import Thinker

# Qwen2.5-Omni-3B and -7B thinker text sizes (their config.json), vocab 152064 kept from the preset
REAL_SIZES = {
    "3B": dict(hidden_size=2048, intermediate_size=11008, num_layers=36, num_attention_heads=16, num_kv_heads=2,
               head_dim=128),
    "7B": dict(hidden_size=3584, intermediate_size=18944, num_layers=28, num_attention_heads=28, num_kv_heads=4,
               head_dim=128),
}


@pytest.mark.parametrize("size", sorted(REAL_SIZES))
def test_no_second_copy_of_lm_head_at_the_real_sizes(tiny_text_model, size):
    config = tiny_text_model.config.thinker
    with torch.device("meta"):  # the shapes, without the 12-35 GB of weights
        thinker = Thinker(replace(config, text=replace(config.text, **REAL_SIZES[size])))
    assert not thinker._logits.packs


@pytest.mark.skipif(not _ONEDNN, reason="this PyTorch has no oneDNN prepacked linear")
def test_batched_logits_use_the_packed_copy_where_the_projection_dominates(tiny_text_model):
    thinker = tiny_text_model.model.thinker
    assert thinker._logits.packs  # tiny: a 152064-row projection over two small layers
    hidden = torch.randn(4, thinker.config.text.hidden_size)
    with torch.inference_mode():
        logits = thinker.logits(hidden)
        plain = thinker.lm_head(hidden)
    assert thinker._logits.packed is not None
    torch.testing.assert_close(logits, plain, rtol=1e-5, atol=1e-5)  # fp32 rounding apart


def test_a_decoder_heavy_thinker_keeps_one_copy(tiny_text_model):
    config = tiny_text_model.config.thinker
    # the tiny preset with an MLP wide enough that the layers outweigh the vocabulary projection
    thinker = Thinker(replace(config, text=replace(config.text, intermediate_size=40_000))).eval()
    assert not thinker._logits.packs
    hidden = torch.randn(4, config.text.hidden_size)
    with torch.inference_mode():
        logits = thinker.logits(hidden)
        assert torch.equal(logits, thinker.lm_head(hidden))
    assert thinker._logits.packed is None
