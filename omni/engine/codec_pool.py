"""The codec workers: threads that decode replies' codec windows, most urgent listener first.

A codec job (one reply's new codes pushed through its streaming codec, or its final flush) is
queued with a deadline: the moment that reply's listener runs out of audio. A reply with no audio
out yet is already overdue: its deadline is when it was submitted, so first chunks go before every
later chunk and among themselves in arrival order. A reply already playing is due when the audio
handed out so far has played (first audio + seconds out). Workers take the earliest deadline.

Why not first come first served: with many replies speaking, every reply keeps a job in the queue,
so a new reply's first window waited behind a full round of everybody's later windows while those
listeners still had seconds of audio buffered (bench/serve.py at 16 concurrent: first audio p95 went
from 9 s with one thread per request to 62 s on the engine's FIFO pool). Earliest deadline first
serves the listener about to hear silence, which is what a chunk's budget means.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import threading
from collections.abc import Callable
from typing import Any


class CodecPool:
    def __init__(self, workers: int, name: str = "omni-codec") -> None:
        self._queue: list[tuple[float, int, concurrent.futures.Future, Callable[[], Any]]] = []
        self._order = itertools.count()  # ties (same deadline) in submission order
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, work: Callable[[], Any], deadline: float) -> concurrent.futures.Future:
        """Queue `work`; `deadline` (time.perf_counter seconds) orders it, earliest first."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the codec pool is shut down")
            heapq.heappush(self._queue, (deadline, next(self._order), future, work))
            self._cond.notify()
        return future

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def shutdown(self, wait: bool = False) -> None:
        """Cancel queued jobs and stop the workers (a running job finishes)."""
        with self._cond:
            self._closed = True
            queued, self._queue = self._queue, []
            self._cond.notify_all()
        for _, _, future, _ in queued:
            future.cancel()
        if wait:
            for thread in self._threads:
                thread.join()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                _, _, future, work = heapq.heappop(self._queue)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = work()
            except BaseException as error:  # handed to whoever reads the future, as an executor does
                future.set_exception(error)
            else:
                future.set_result(result)
