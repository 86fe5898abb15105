"""Behaviour of the Thinker's streaming generator: stopping, limits, cache continuation, seeding."""

from __future__ import annotations

import pytest
import torch

from omni.chat import render_chat
from omni.errors import InputError
from omni.sampling import SamplingParams
from omni.thinker.generate import stream_thinker, text_prompt
from tests.conftest import PAD_ID, STOP_IDS


def _prompt(model, text="Tell me a story."):
    return text_prompt([model.tokenizer.encode(render_chat([{"role": "user", "content": text}]))], pad_id=PAD_ID)


def _run(model, prompt, **kwargs):
    options = dict(sampling=SamplingParams(), max_new_tokens=16, stop_token_ids=STOP_IDS, pad_token_id=PAD_ID)
    options.update(kwargs)
    return list(stream_thinker(model.model.thinker, prompt, **options))


def test_steps_carry_what_the_talker_needs(tiny_text_model):
    prompt = _prompt(tiny_text_model)
    steps = _run(tiny_text_model, prompt, max_new_tokens=5)
    hidden_size = tiny_text_model.config.thinker.text.hidden_size
    assert [s.index for s in steps] == list(range(5))
    assert steps[0].input_embeds.shape == (1, prompt.input_ids.shape[1], hidden_size)
    assert steps[0].hidden.shape == steps[0].input_embeds.shape
    thinker = tiny_text_model.model.thinker
    for previous, step in zip(steps, steps[1:]):
        # each decode step consumed the previous step's token
        assert step.input_embeds.shape == (1, 1, hidden_size)
        assert torch.equal(step.input_embeds[0, 0], thinker.embed(previous.token_ids)[0])


def test_stops_at_the_first_stop_token(tiny_text_model):
    vocab = tiny_text_model.config.thinker.text.vocab_size
    only_stop = torch.ones(vocab, dtype=torch.bool)
    only_stop[151645] = False
    steps = _run(tiny_text_model, _prompt(tiny_text_model), forbidden_tokens=only_stop)
    assert len(steps) == 1 and steps[0].token_ids.tolist() == [151645] and bool(steps[0].finished[0])


def test_max_new_tokens_is_a_hard_limit(tiny_text_model):
    vocab = tiny_text_model.config.thinker.text.vocab_size
    no_stop = torch.zeros(vocab, dtype=torch.bool)
    no_stop[STOP_IDS] = True
    steps = _run(tiny_text_model, _prompt(tiny_text_model), max_new_tokens=7, forbidden_tokens=no_stop)
    assert len(steps) == 7 and not bool(steps[-1].finished[0])
    with pytest.raises(InputError, match="max_new_tokens must be >= 1"):
        _run(tiny_text_model, _prompt(tiny_text_model), max_new_tokens=0)


def test_continuing_a_cache_equals_encoding_the_whole_history(tiny_text_model):
    """A second turn appended to the first turn's cache generates what a fresh pass over the whole
    conversation generates."""
    model = tiny_text_model
    thinker = model.model.thinker
    first = _prompt(model, "First question?")
    cache = thinker.model.new_cache(1, 32)
    reply = [int(s.token_ids[0]) for s in _run(model, first, max_new_tokens=6, cache=cache)]
    # the last sampled token was never fed: the next turn starts with it
    follow = [reply[-1]] + model.tokenizer.encode("<|im_end|>\n<|im_start|>user\nSecond?<|im_end|>\n<|im_start|>assistant\n")
    assert cache.length == first.input_ids.shape[1] + len(reply) - 1
    continued_prompt = text_prompt([follow], pad_id=PAD_ID, start_position=cache.length)
    continued = [int(s.token_ids[0]) for s in _run(model, continued_prompt, max_new_tokens=8, cache=cache)]

    history = first.input_ids[0].tolist() + reply[:-1] + follow
    fresh = [int(s.token_ids[0]) for s in _run(model, text_prompt([history], pad_id=PAD_ID), max_new_tokens=8)]
    assert continued == fresh


def test_seeded_sampling_is_reproducible(tiny_text_model):
    params = SamplingParams(do_sample=True, temperature=1.0, top_p=0.9, seed=1234)
    runs = [[int(s.token_ids[0]) for s in _run(tiny_text_model, _prompt(tiny_text_model), sampling=params)] for _ in range(2)]
    assert runs[0] == runs[1]
    greedy = [int(s.token_ids[0]) for s in _run(tiny_text_model, _prompt(tiny_text_model))]
    assert runs[0] != greedy


def test_closing_the_generator_stops_it(tiny_text_model):
    stream = stream_thinker(
        tiny_text_model.model.thinker, _prompt(tiny_text_model), SamplingParams(), 50, STOP_IDS, PAD_ID
    )
    next(stream)
    stream.close()
    with pytest.raises(StopIteration):
        next(stream)
