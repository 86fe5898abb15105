"""One reply for an asyncio event loop: the one bridge between the synchronous `ReplyStream` and
async callers (`OmniSession.astream`, the HTTP server).

A worker thread starts the reply (media decoding and the encoders happen inside `start()`) and
iterates it; every event is handed to the loop through an unbounded queue (a reply's events are
bounded by its max tokens, and a producer that never blocks cannot deadlock against a consumer that
left). Why a thread per reply and not the loop's executor: a reply holds its thread for its whole
length, and the default executor is shared with short jobs that must not queue behind replies.

The loop side can cancel at any moment, even while the reply is still starting; `on_finished` runs
on the loop once the worker thread has really stopped (the stream is closed and the session is free),
which is when a server may hand the slot to the next request.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from omni.events import Event, ReplyDone

if TYPE_CHECKING:
    from omni.session import ReplyStream

_END = object()


@dataclass(frozen=True)
class ReplyOutcome:
    """How a reply ended, handed to `on_finished` once its worker thread has stopped."""

    started: bool  # False: `start()` raised (bad input, media over a limit), no generation ran
    done: ReplyDone | None  # the final event; None when the reply failed
    error: BaseException | None


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class AsyncReply:
    """Build it on the event loop; `await started()`, then `async for event in events()`.

    start: returns the ReplyStream; runs in the worker thread.
    cancel_start: stops a reply whose `start()` is still running (e.g. `OmniSession.cancel`).
    on_finished(outcome): runs on the loop after the worker stopped, whatever happened."""

    def __init__(
        self,
        start: Callable[[], ReplyStream],
        cancel_start: Callable[[], None] | None = None,
        on_finished: Callable[[ReplyOutcome], None] | None = None,
        thread_name: str = "omni-reply",
    ) -> None:
        self._start = start
        self._cancel_start = cancel_start
        self._on_finished = on_finished
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._started = self._loop.create_future()
        # a start error nobody awaited (the caller left first) is not "never retrieved"
        self._started.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._stopped = asyncio.Event()
        self._stream: ReplyStream | None = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._thread.start()

    # -- the worker thread ------------------------------------------------------------------------

    def _post(self, callback, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed (shutdown): nobody is listening any more
            pass

    def _run(self) -> None:
        stream = None
        done: ReplyDone | None = None
        error: BaseException | None = None
        try:
            stream = self._start()
            self._stream = stream
            if self._cancelled:  # cancelled while starting, after cancel_start could reach it
                stream.cancel()
            self._post(_resolve, self._started, None)
            for event in stream:
                if isinstance(event, ReplyDone):
                    done = event
                self._post(self._queue.put_nowait, event)
        except BaseException as exc:  # handed to the loop as the reply's outcome
            error = exc
            if stream is None:
                self._post(_resolve, self._started, exc)
            else:
                self._post(self._queue.put_nowait, _Failure(exc))
        finally:
            if stream is not None:
                stream.close()
            self._post(self._finish, ReplyOutcome(stream is not None, done, error))

    def _finish(self, outcome: ReplyOutcome) -> None:
        try:
            if self._on_finished is not None:
                self._on_finished(outcome)
        finally:
            self._queue.put_nowait(_END)
            self._stopped.set()

    # -- the event loop ---------------------------------------------------------------------------

    async def started(self) -> None:
        """Returns once the reply is generating; raises what `start()` raised."""
        await asyncio.shield(self._started)

    async def events(self) -> AsyncIterator[Event]:
        """The reply's events, ending with ReplyDone; leaving early cancels the reply."""
        try:
            await self.started()
            while True:
                item = await self._queue.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Stop the reply within one step (also while it is still starting); idempotent."""
        self._cancelled = True
        stream = self._stream
        if stream is not None:
            stream.cancel()
        elif self._cancel_start is not None:
            self._cancel_start()

    async def stopped(self) -> None:
        """Returns once the worker thread has stopped (after `on_finished`)."""
        await asyncio.shield(self._stopped.wait())


def _resolve(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
