"""Sampling transforms against transformers' logits processors, and seeding."""

from __future__ import annotations

import pytest
import torch

from omni.errors import InputError
from omni.sampling import Sampler, SamplingParams


def _reference_scores(logits, seen_ids, params):
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    scores = logits.clone()
    scores = RepetitionPenaltyLogitsProcessor(params.repetition_penalty)(seen_ids, scores)
    scores = TemperatureLogitsWarper(params.temperature)(seen_ids, scores)
    scores = TopKLogitsWarper(params.top_k)(seen_ids, scores)
    return TopPLogitsWarper(params.top_p)(seen_ids, scores)


def test_transforms_match_transformers():
    torch.manual_seed(0)
    logits = torch.randn(3, 500) * 3
    seen = torch.randint(0, 500, (3, 40))
    params = SamplingParams(do_sample=True, temperature=0.7, top_k=40, top_p=0.8, repetition_penalty=1.3)
    expected = _reference_scores(logits, seen, params).softmax(-1)

    sampler = Sampler(params, batch_size=3, vocab_size=500, device="cpu")
    sampler.observe(seen)
    captured = {}
    original = torch.multinomial

    def spy(probs, num_samples, generator=None):
        captured["probs"] = probs
        return original(probs, num_samples, generator=generator)

    torch.multinomial = spy
    try:
        sampler(logits)
    finally:
        torch.multinomial = original
    assert torch.allclose(captured["probs"], expected, atol=1e-6)
    assert (captured["probs"] > 0).sum(-1).max() <= 40


def test_greedy_is_argmax_after_penalty_and_forbidden():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0]])
    forbidden = torch.tensor([False, True, False, False])
    sampler = Sampler(SamplingParams(repetition_penalty=2.0), 1, 4, "cpu", forbidden=forbidden)
    sampler.observe(torch.tensor([[3]]))  # 4.0 -> 2.0
    assert sampler(logits).tolist() == [2]


def test_seed_reproduces_and_differs():
    logits = torch.randn(2, 1000)
    params = SamplingParams(do_sample=True, temperature=1.0, seed=7)
    first = [Sampler(params, 2, 1000, "cpu")(logits).tolist() for _ in range(2)]
    assert first[0] == first[1]
    other = [Sampler(params.with_overrides(seed=s), 2, 1000, "cpu")(logits).tolist() for s in range(8, 14)]
    assert any(o != first[0] for o in other)


@pytest.mark.parametrize(
    "overrides, message",
    [({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_k": -2}, "top_k"),
     ({"repetition_penalty": 0}, "repetition_penalty")],
)
def test_invalid_settings_are_named(overrides, message):
    with pytest.raises(InputError, match=message):
        SamplingParams().with_overrides(**overrides)


def test_temperature_zero_means_greedy():
    assert SamplingParams(do_sample=True, temperature=0.0).validated().do_sample is False
