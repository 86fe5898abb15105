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


def _sampled_probs(sampler, logits):
    """The probabilities `sampler` draws from for `logits` (what it hands torch.multinomial)."""
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
    return captured["probs"]


def test_transforms_match_transformers():
    torch.manual_seed(0)
    logits = torch.randn(3, 500) * 3
    seen = torch.randint(0, 500, (3, 40))
    params = SamplingParams(do_sample=True, temperature=0.7, top_k=40, top_p=0.8, repetition_penalty=1.3)
    expected = _reference_scores(logits, seen, params).softmax(-1)

    sampler = Sampler(params, batch_size=3, vocab_size=500, device="cpu")
    sampler.observe(seen)
    probs = _sampled_probs(sampler, logits)
    assert torch.allclose(probs, expected, atol=1e-6)
    assert (probs > 0).sum(-1).max() <= 40


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


@pytest.mark.parametrize(
    "overrides, message",
    [({"temperature": float("nan")}, "temperature"), ({"temperature": float("inf")}, "temperature"),
     ({"temperature": "0.5"}, "temperature"), ({"temperature": True}, "temperature"),
     ({"top_p": float("nan")}, "top_p"), ({"repetition_penalty": float("nan")}, "repetition_penalty"),
     ({"repetition_penalty": float("inf")}, "repetition_penalty"), ({"top_k": 2.5}, "top_k"),
     ({"top_k": True}, "top_k"), ({"seed": 2**64}, "seed"), ({"seed": -(2**63) - 1}, "seed"), ({"seed": 1.0}, "seed"),
     ({"do_sample": 1}, "do_sample"), ({"logit_bias": {5: 101}}, "logit_bias"), ({"logit_bias": {-1: 1}}, "logit_bias"),
     ({"logit_bias": {"x": 1}}, "logit_bias"), ({"temprature": 0.5}, "unknown sampling setting")],
)
def test_values_that_would_blow_up_inside_are_refused_by_name(overrides, message):
    with pytest.raises(InputError, match=message):
        SamplingParams().with_overrides(**overrides)


@pytest.mark.parametrize("settings", [
    {"temperature": 1e-30}, {"temperature": 1e-45}, {"temperature": 1e-300}, {"temperature": 1e300},
    {"temperature": 0.7, "repetition_penalty": 1e-30}, {"temperature": 0.7, "repetition_penalty": 1e30},
    {"temperature": 1.0, "repetition_penalty": 1e-30, "logit_bias": ((3, 100.0),)},
    {"temperature": 1e-30, "top_k": 10**12, "top_p": 1e-30},
])
def test_extreme_but_valid_settings_sample_without_nan(settings):
    logits = torch.randn(2, 50) * 30
    logits[:, 7] = 200.0  # a clear favourite
    sampler = Sampler(SamplingParams(do_sample=True, seed=0, **settings), 2, 50, "cpu")
    sampler.observe(torch.tensor([[1, 2, 3], [4, 5, 6]]))
    tokens = sampler(logits)
    assert tokens.shape == (2,) and bool(((tokens >= 0) & (tokens < 50)).all())
    if settings["temperature"] < 1e-20 and "repetition_penalty" not in settings:
        assert tokens.tolist() == [7, 7]  # a vanishing temperature is greedy


def test_extreme_seeds_are_accepted():
    for seed in (-(2**63), -1, 0, 2**64 - 1):
        Sampler(SamplingParams(do_sample=True, seed=seed), 1, 10, "cpu")(torch.zeros(1, 10))


def test_logit_bias_against_a_hand_computation():
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.5]])
    params = SamplingParams(do_sample=True, temperature=0.5, logit_bias=((0, 2.5), (2, -100.0)))
    expected = ((logits + torch.tensor([2.5, 0.0, -100.0, 0.0])) / 0.5).softmax(-1)
    assert torch.allclose(_sampled_probs(Sampler(params, 1, 4, "cpu"), logits), expected, atol=1e-6)
    greedy = SamplingParams(logit_bias=((3, 100.0),))
    assert Sampler(greedy, 1, 4, "cpu")(logits).tolist() == [3]
    with pytest.raises(InputError, match="vocabulary has 4 tokens"):
        Sampler(SamplingParams(logit_bias=((4, 1.0),)), 1, 4, "cpu")


def test_session_refuses_bad_generation_options(tiny_text_model):
    from omni.session import OmniSession

    session = OmniSession(tiny_text_model, max_new_tokens=4)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InputError, match="max_new_tokens"):
            session.stream("hi", max_new_tokens=bad)
    with pytest.raises(InputError, match="top_k"):
        session.stream("hi", top_k=-1)
    assert session.reply("hi").done is not None  # nothing was left half-started
