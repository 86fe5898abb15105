"""One reply run for the event loop: the ReplyStream iterates in a worker thread (the model's
compute must not block the loop) and its events are handed over through an asyncio queue.

Why not `OmniSession.astream`: it starts the stream (media decoding, encoders) on the event loop
itself, which would stall every other connection while one request's media loads; here `start`
runs in a thread and the pump's consumer only awaits.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable

from omni.events import Event, ReplyDone
from omni.session import ReplyStream

_END = object()


class ReplyPump:
    def __init__(self, stream: ReplyStream, on_finished: Callable[[ReplyDone | None, BaseException | None], None]) -> None:
        """`on_finished(done, error)` runs on the event loop once the worker has really stopped."""
        self._stream = stream
        self._on_finished = on_finished
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()  # unbounded: a reply's events are bounded by max_tokens
        self._thread = threading.Thread(target=self._run, name="omni-server-reply", daemon=True)
        self._thread.start()

    def _post(self, callback, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop closed (server shutdown): nobody is listening any more
            pass

    def _run(self) -> None:
        done: ReplyDone | None = None
        error: BaseException | None = None
        try:
            for event in self._stream:
                if isinstance(event, ReplyDone):
                    done = event
                self._post(self._queue.put_nowait, event)
        except BaseException as exc:  # handed to the consumer as the reply's outcome
            error = exc
            self._post(self._queue.put_nowait, exc)
        finally:
            self._stream.close()
            self._post(self._on_finished, done, error)
            self._post(self._queue.put_nowait, _END)

    async def events(self) -> AsyncIterator[Event]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def cancel(self) -> None:
        """Stop generation within one step (the pump still delivers the final ReplyDone)."""
        self._stream.cancel()
