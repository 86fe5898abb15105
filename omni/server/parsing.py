"""Request bodies decoded without stalling the event loop.

JSON parsing, pydantic validation and base64 decoding are C/Rust code that holds the GIL from start
to end: a 60 MB body takes about half a second of it (a body of many small parts, seconds), and a
worker *thread* would not help, the loop could not run a single line meanwhile. So a body over
`inline_max_bytes` is decoded in a small pool of parser processes (bounded: `workers` bodies at once,
the rest wait their turn); only its compact result comes back (the validated request with the audio
already decoded: one memcpy per clip to unpickle). Small bodies are decoded on the loop, where they
cost less than a process round trip.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from omni.server.errors import ApiError
from omni.server.protocol import ChatCompletionRequest, decode_body

log = logging.getLogger("omni.server")
KIB = 1024


class BodyParser:
    def __init__(self, workers: int = 2, inline_max_bytes: int = 256 * KIB) -> None:
        if workers < 1:
            raise ValueError(f"the body parser needs at least one worker process, got {workers}")
        self.workers = workers
        self.inline_max_bytes = inline_max_bytes
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Start the worker processes now (the first large body need not wait for them)."""
        pool = self._ensure_pool()
        for _ in range(self.workers):
            pool.submit(_ready)

    async def decode(self, body: bytes) -> ChatCompletionRequest:
        """The validated request; ApiError(400) naming the problem, 503 if a parser process died."""
        if len(body) <= self.inline_max_bytes:
            return decode_body(body)
        pool = self._ensure_pool()
        try:
            return await asyncio.wrap_future(pool.submit(decode_body, body))
        except BrokenProcessPool:
            # the OS killed a parser (out of memory?): replace the pool for the next requests
            log.error("a request parser process died; starting new ones")
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise ApiError(503, f"the server could not parse this {len(body) / 2**20:.1f} MiB request (its parser "
                                "process died, likely out of memory); retry, or send smaller media",
                           code="server_overloaded") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the server process has threads (and torch) that a fork would copy mid-step
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool


def _ready() -> None:
    """A no-op the pool runs once per worker so that the workers start (and import) ahead of need."""
