"""OmniSession: multi-turn cache reuse, cancellation, reset from any thread, abandoned streams, cache
memory, sharing one model across threads, async."""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
import time
import weakref

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
    # the abandoned stream is finished by the session's next call: its partial reply is kept
    assert session.messages == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": event.text}]
    assert session.reply("Hello again").done.finish_reason in ("stop", "length")
    assert len(session.messages) == 4
    session.stream("Never read")  # dropped before it started: that turn never happened
    assert len(session.messages) == 4
    assert session.reply("Still here?").done is not None and len(session.messages) == 6


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


GREEDY = SamplingParams()


def _within(seconds: float, function):
    """function() on a daemon thread; a call that hangs (a deadlock) fails the test instead of the suite."""
    outcome = {}

    def run():
        try:
            outcome["value"] = function()
        except BaseException as exc:  # re-raised on the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: deadlocked?"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _fresh_answer(model, question="Same question"):
    return OmniSession(model, max_new_tokens=12, sampling=GREEDY).reply(question).text


def test_reset_from_the_thread_iterating_the_reply(tiny_text_model):
    session = OmniSession(tiny_text_model, max_new_tokens=200, sampling=GREEDY)
    session.reply("Remember this.", max_new_tokens=4)
    forgotten_cache = session.state.cache

    def talk_then_reset():
        events = []
        for event in session.stream("Count to a hundred."):
            events.append(event)
            if len(events) == 2:
                session.reset()  # used to wait forever for the lock this very loop holds
        return events

    events = _within(60, talk_then_reset)
    assert isinstance(events[-1], ReplyDone) and events[-1].finish_reason == "cancelled"
    assert len(events) <= 4  # stopped within a step of the reset
    assert session.messages == [] and session.state.cache is None and session.state.fed_token_ids == []
    assert forgotten_cache.nbytes() == 0  # the forgotten conversation's cache was released
    assert session.reply("Same question", max_new_tokens=12).text == _fresh_answer(tiny_text_model)


def test_reset_from_another_thread_while_a_reply_streams(tiny_text_model):
    session = OmniSession(tiny_text_model, max_new_tokens=200, sampling=GREEDY)
    session.reply("Remember this.", max_new_tokens=4)
    forgotten_cache = session.state.cache
    stream = session.stream("Count to a hundred.")
    assert isinstance(next(stream), TextDelta)  # the reply runs; its owner (this thread) is not iterating
    _within(10, session.reset)  # returns at once instead of waiting for the stream to be closed
    assert session.messages == [] and session.state.cache is None  # forgotten at once
    with pytest.raises(InputError, match="already generating"):
        session.stream("Too early")  # until its stream ends, the cancelled reply still holds the session
    rest = _within(60, lambda: list(stream))
    assert rest[-1].finish_reason == "cancelled" and len(rest) <= 2
    assert session.messages == [] and session.state.cache is None  # its turn was dropped, not recorded
    assert forgotten_cache.nbytes() == 0
    assert session.reply("Same question", max_new_tokens=12).text == _fresh_answer(tiny_text_model)


def test_resets_racing_replies_leave_a_consistent_session(tiny_text_model):
    session = OmniSession(tiny_text_model, max_new_tokens=6, sampling=GREEDY)
    stop = threading.Event()

    def keep_resetting():
        while not stop.is_set():
            session.reset()
            time.sleep(0.002)

    resetter = threading.Thread(target=keep_resetting)
    resetter.start()
    try:
        finish_reasons = {_within(60, lambda: session.reply(f"Turn {i}")).done.finish_reason for i in range(12)}
    finally:
        stop.set()
        resetter.join()
    assert finish_reasons <= {"stop", "length", "cancelled"}
    state = session.state
    assert (state.cache is None) == (state.fed_token_ids == []) == (state.messages == [])
    if state.cache is not None:
        assert state.cache.length == len(state.fed_token_ids)
    session.reset()
    assert session.reply("Same question", max_new_tokens=12).text == _fresh_answer(tiny_text_model)


def test_an_abandoned_stream_is_finished_by_the_next_call_not_by_the_collector(tiny_text_model):
    session = OmniSession(tiny_text_model, max_new_tokens=200, sampling=GREEDY)
    commit_threads = []
    commit = session._commit_turn

    def recording_commit(*args):
        commit_threads.append(threading.current_thread().name)
        return commit(*args)

    session._commit_turn = recording_commit
    stream = session.stream("Count to a hundred.")
    shown = "".join(event.text for event in itertools.islice(stream, 3))
    stream.myself = stream  # a reference cycle: only the garbage collector can free it now
    gone = weakref.ref(stream)
    del stream
    collector = threading.Thread(target=gc.collect, name="collector")
    collector.start()
    collector.join()
    assert gone() is None  # __del__ ran on the collector's thread...
    assert commit_threads == [] and session.state.messages == []  # ...and did no work there
    follow = session.reply("Go on.")  # the next call finishes the abandoned reply, on this thread
    assert commit_threads == [threading.current_thread().name] * 2
    assert session.messages[:2] == [{"role": "user", "content": "Count to a hundred."},
                                    {"role": "assistant", "content": shown}]  # as it was shown
    assert session.messages[3] == {"role": "assistant", "content": follow.text}
    assert session.state.cache.length == len(session.state.fed_token_ids)


def _cancelled_after(session, message, text_deltas, **options):
    shown = 0
    for event in session.stream(message, **options):
        shown += isinstance(event, TextDelta)
        if shown == text_deltas:
            session.cancel()
    assert event.finish_reason == "cancelled"
    return event


def test_a_long_turn_cut_short_gives_its_cache_memory_back(tiny_text_model):
    grown = OmniSession(tiny_text_model, max_new_tokens=12, sampling=GREEDY)
    steady = OmniSession(tiny_text_model, max_new_tokens=12, sampling=GREEDY)
    capacities = []
    ensure = grown._cache_for

    def recording_cache_for(*args):
        cache = ensure(*args)
        capacities.append(cache.capacity)
        return cache

    grown._cache_for = recording_cache_for
    cut = _cancelled_after(grown, "Count to a hundred.", 3, max_new_tokens=4000)
    assert _cancelled_after(steady, "Count to a hundred.", 3).text == cut.text
    assert grown.state.fed_token_ids == steady.state.fed_token_ids
    cache = grown.state.cache
    assert capacities[0] > 4000 and cache.length < 64  # reserved 4000 new tokens for the turn, kept few
    assert cache.capacity <= 512 and cache.nbytes() <= 2 * steady.state.cache.nbytes()
    # the shrunk cache answers exactly as one that never grew, turn after turn
    for question in ("And then?", "Why?", "Tell me more."):
        assert grown.reply(question).text == steady.reply(question).text
    assert grown.state.fed_token_ids == steady.state.fed_token_ids
    assert grown.state.cache.capacity <= 512


def test_a_steady_conversation_never_reallocates_its_cache(tiny_text_model):
    session = OmniSession(tiny_text_model, max_new_tokens=12, sampling=GREEDY)
    session.reply("Hello")
    keys = session.state.cache.keys[0]
    for question in ("And then?", "Why?"):
        session.reply(question)
    assert session.state.cache.keys[0] is keys  # no shrink-and-regrow between ordinary turns


def test_reset_after_a_long_turn_releases_the_cache(tiny_text_model):
    session = OmniSession(tiny_text_model, max_new_tokens=12, sampling=GREEDY)
    session.reply("Tell me everything about rivers, lakes, seas and oceans. " * 40)  # a long prompt
    cache = session.state.cache
    assert cache.length > 400 and cache.nbytes() > 0
    session.reset()
    assert session.state.cache is None
    assert cache.nbytes() == 0  # released now, even while something still refers to the old cache
    assert session.reply("Same question").text == _fresh_answer(tiny_text_model)
