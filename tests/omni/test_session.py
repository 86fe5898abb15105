"""OmniSession: multi-turn cache reuse, cancellation, sharing one model across threads, async."""

from __future__ import annotations

import asyncio

import pytest

from omni.errors import InputError
from omni.events import ReplyDone, TextDelta
from omni.sampling import SamplingParams
from omni.session import OmniSession
from omni.thinker.generate import stream_thinker, text_prompt
from tests.conftest import PAD_ID, STOP_IDS, run_in_threads


@pytest.fixture
def session(tiny_text_model):
    return OmniSession(tiny_text_model, max_new_tokens=12)


def _greedy_from_scratch(model, token_ids, max_new_tokens):
    steps = stream_thinker(
        model.model.thinker, text_prompt([token_ids], pad_id=PAD_ID), SamplingParams(), max_new_tokens, STOP_IDS, PAD_ID
    )
    return [int(s.token_ids[0]) for s in steps]


def _spy_prompts(session):
    captured = []
    original = session._next_prompt

    def spy(messages, clock=None):
        prompt, ids = original(messages, clock)
        captured.append(ids)
        return prompt, ids

    session._next_prompt = spy
    return captured


def test_text_reply_streams_deltas_then_done(session):
    events = list(session.stream("Hello there"))
    assert isinstance(events[-1], ReplyDone)
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert "".join(deltas) == events[-1].text
    assert events[-1].usage.text_tokens >= 1 and events[-1].usage.prompt_tokens > 10
    assert events[-1].timings.total_s > 0 and events[-1].timings.stage_s["prefill"] > 0
    assert [m["role"] for m in session.messages] == ["user", "assistant"]


@pytest.mark.parametrize("max_new_tokens", [4, 10])  # 4: turns end at the length limit, not a stop token
def test_multi_turn_reuses_the_cache_and_equals_replaying_the_history(tiny_text_model, max_new_tokens):
    model = tiny_text_model
    session = OmniSession(model, max_new_tokens=max_new_tokens)
    prompts = _spy_prompts(session)
    session.reply("Tell me about rivers.")
    cache = session.state.cache
    history_before = list(session.state.fed_token_ids)
    session.reply("And about lakes?")
    assert session.state.cache is cache  # the second turn appended to the first turn's cache
    assert len(prompts[1]) < len(prompts[0])  # only the new turn, not a full re-render

    history = history_before + prompts[1]
    expected = _greedy_from_scratch(model, history, max_new_tokens)
    state = session.state
    reply_tokens = state.fed_token_ids[len(history):] + state.pending_token_ids[:-1]
    assert reply_tokens == [t for t in expected if t not in STOP_IDS]
    assert cache.length == len(state.fed_token_ids)


def test_cancel_mid_reply_keeps_the_partial_reply_and_the_session_works(tiny_text_model):
    session = OmniSession(tiny_text_model, max_new_tokens=40)
    vocab = tiny_text_model.config.thinker.text.vocab_size
    session.sampling = SamplingParams()  # greedy
    stream = session.stream("Count to a hundred.")
    shown = []
    for event in stream:
        if isinstance(event, TextDelta):
            shown.append(event.text)
        if len(shown) == 3:
            session.cancel()
        if isinstance(event, ReplyDone):
            done = event
    assert done.finish_reason == "cancelled"
    assert done.usage.text_tokens <= 5  # stopped within a step of the cancel
    assert session.messages[-1] == {"role": "assistant", "content": done.text}
    assert session.state.cache.length == len(session.state.fed_token_ids)
    follow = session.reply("Go on.")
    assert follow.done.finish_reason in ("stop", "length")
    del vocab


def test_breaking_out_of_the_loop_ends_the_turn(session):
    for event in session.stream("Hi"):
        break
    # the abandoned stream released the session: a new reply can start
    assert session.reply("Hello again").done.finish_reason in ("stop", "length")
    assert len(session.messages) == 4


def test_one_reply_at_a_time(session):
    stream = session.stream("Hi")
    with pytest.raises(InputError, match="already generating"):
        session.stream("Hi again")
    stream.close()
    assert session.reply("Now?").text is not None


def test_reset_forgets_everything(session):
    first = session.reply("Same question").text
    session.reply("Another")
    session.reset()
    assert session.messages == [] and session.state.cache is None
    assert session.reply("Same question").text == first


def test_eight_sessions_in_threads_match_running_alone(tiny_text_model):
    prompts = [f"Question number {i}: what is {i} + {i}?" for i in range(8)]

    def answer(prompt):
        return OmniSession(tiny_text_model, max_new_tokens=8).reply(prompt).text

    alone = [answer(p) for p in prompts]
    assert run_in_threads(answer, prompts) == alone


def test_async_stream(session):
    async def collect():
        return [event async for event in session.astream("Hello async")]

    events = asyncio.run(collect())
    assert isinstance(events[-1], ReplyDone)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == events[-1].text


def test_async_early_exit_cancels(tiny_text_model):
    session = OmniSession(tiny_text_model, max_new_tokens=200)
    session.sampling = SamplingParams()

    async def first_then_leave():
        async for event in session.astream("Talk for a long time"):
            return event

    asyncio.run(first_then_leave())
    # the worker stopped and released the session
    assert session.reply("Still there?").done is not None


def test_empty_message_is_refused(session):
    with pytest.raises(InputError, match="empty"):
        session.stream("   ")


def test_cancel_while_the_prompt_is_being_prepared_still_stops_the_reply(tiny_text_model):
    session = OmniSession(tiny_text_model, max_new_tokens=200)
    original = session._next_prompt

    def slow_prompt(messages, clock=None):
        session.cancel()  # e.g. the user speaks while their audio message is still being encoded
        return original(messages, clock)

    session._next_prompt = slow_prompt
    done = list(session.stream("Tell me everything."))[-1]
    assert done.finish_reason == "cancelled" and done.usage.text_tokens == 0
    assert session.messages == []  # the turn never happened
    session._next_prompt = original
    assert session.reply("Hi").done.finish_reason in ("stop", "length")
