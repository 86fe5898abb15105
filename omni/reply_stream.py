"""A reply as its caller holds it: `ReplyStream`, the iterator `OmniSession.stream` returns, and
`OpenReply`, the session's side of the same reply (its event iterator and what ends its turn)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from omni.events import Event


class OpenReply:
    """One reply between `stream()` and the end of its turn: the pipeline's event iterator and what
    ends the turn. The session holds it (not the ReplyStream), so that a stream the caller dropped can
    still be finished later, on the thread of the session's next call."""

    def __init__(self, events: Iterator[Event], cancel: threading.Event, on_close) -> None:
        self.events = events
        self.cancel = cancel
        self.on_close = on_close
        self.closed = False
        self.abandoned = False  # the caller's ReplyStream was collected without being closed
        self.settling = False  # a session call took it to finish it

    def next(self) -> Event:
        if self.closed:
            raise StopIteration
        try:
            return next(self.events)
        except BaseException:
            self.finish()
            raise

    def close(self) -> None:
        if self.closed:
            return
        self.cancel.set()
        try:
            for _ in self.events:  # let the pipeline stop at its next step and record the partial reply
                pass
        finally:
            self.finish()

    def finish(self) -> None:
        if not self.closed:
            self.closed = True
            self.on_close()


class ReplyStream:
    """Iterator over one reply's events. Closing it (or `session.cancel()`) stops generation within
    one step; the partial reply stays in the conversation.

    A stream dropped without being closed (a `break` out of the loop, an exception in the caller's
    loop, `del`) is abandoned. Its `__del__` only marks it so: the garbage collector may run it on
    any thread at any moment, so it runs no model code and touches no conversation state. The
    session's next call on any thread (`stream`, `reply`, `reset`, `messages`) finishes the reply
    there, as `close()` would have: it stops within one step and its partial text (what was shown)
    stays in the conversation. Until that call, `session.state` does not hold the turn yet. `with
    session.stream(...) as events:` closes it at once instead."""

    def __init__(self, reply: OpenReply) -> None:
        self._reply = reply

    def __iter__(self) -> ReplyStream:
        return self

    def __next__(self) -> Event:
        return self._reply.next()

    def cancel(self) -> None:
        self._reply.cancel.set()

    def close(self) -> None:
        """Stop the reply (if it is still running) and keep what was generated."""
        self._reply.close()

    def __enter__(self) -> ReplyStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        reply = getattr(self, "_reply", None)
        if reply is not None and not reply.closed:
            reply.abandoned = True  # a plain store: no lock to deadlock on, whatever thread this is
