"""AsyncReply, the one bridge from a ReplyStream to an event loop (used by OmniSession.astream and
the HTTP server): start off the loop, cancel from the loop at any moment, and `on_finished` only
once the worker has really stopped."""

from __future__ import annotations

import asyncio
import functools
import threading

import pytest

from omni.async_reply import AsyncReply, ReplyOutcome
from omni.errors import InputError
from omni.events import ReplyDone, TextDelta
from omni.sampling import SamplingParams
from omni.session import OmniSession


@pytest.fixture
def session(tiny_text_model):
    return OmniSession(tiny_text_model, max_new_tokens=200, sampling=SamplingParams())


def _bridge(session, message, outcomes, **options):
    def finished(outcome: ReplyOutcome) -> None:
        # the session is free by now: a new reply can start (and is closed at once)
        session.stream("again?").close()
        outcomes.append(outcome)

    return AsyncReply(functools.partial(session.stream, message, **options), cancel_start=session.cancel,
                      on_finished=finished)


def test_events_then_on_finished_after_the_worker_stopped(session):
    outcomes: list[ReplyOutcome] = []

    async def run():
        reply = _bridge(session, "Hello", outcomes, max_new_tokens=6)
        await reply.started()
        events = [event async for event in reply.events()]
        await reply.stopped()
        return events

    events = asyncio.run(run())
    assert isinstance(events[-1], ReplyDone) and events[-1].usage.text_tokens == 6
    assert [o.started for o in outcomes] == [True] and outcomes[0].done == events[-1]


def test_a_cancel_while_the_reply_is_starting_stops_it(session):
    outcomes: list[ReplyOutcome] = []
    entered, release = threading.Event(), threading.Event()
    original = session._next_prompt

    def slow_prompt(*args, **kwargs):  # the media are being decoded
        entered.set()
        release.wait(30)
        return original(*args, **kwargs)

    session._next_prompt = slow_prompt

    async def run():
        reply = _bridge(session, "Tell me everything.", outcomes)
        await asyncio.to_thread(entered.wait, 30)
        reply.cancel()  # the client left before the first event
        release.set()
        await reply.stopped()

    asyncio.run(run())
    assert outcomes[0].started and outcomes[0].done.finish_reason == "cancelled"
    assert outcomes[0].done.usage.text_tokens == 0


def test_a_failed_start_is_raised_and_still_reported(session):
    outcomes: list[ReplyOutcome] = []

    async def run():
        reply = _bridge(session, "   ", outcomes)  # an empty message: stream() refuses it
        with pytest.raises(InputError, match="empty"):
            await reply.started()
        await reply.stopped()

    asyncio.run(run())
    assert not outcomes[0].started and isinstance(outcomes[0].error, InputError)


def test_astream_task_cancellation_cancels_the_reply(session):
    async def run():
        seen = asyncio.Event()

        async def consume():
            async for event in session.astream("Talk for a long time"):
                if isinstance(event, TextDelta):
                    seen.set()

        task = asyncio.create_task(consume())
        await seen.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert session.messages[-1]["role"] == "assistant"  # the cancelled turn ended and was recorded
    assert session.reply("Still there?", max_new_tokens=2).done.finish_reason in ("stop", "length")
