"""How many generations run at once, how many wait, and what the server has finished.

A request first waits for one of `max_concurrent` slots; at most `max_queue` requests wait. A request
arriving when every slot is busy and the queue is full is refused at once with 429 (the client
retries) instead of piling up unbounded work. A slot is given back when its generation has really
stopped (the worker thread ended), not when the client left, so cancelled work never overlaps the
next request's beyond the limit.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

from omni.server.errors import ApiError


class Admission:
    def __init__(self, max_concurrent: int, max_queue: int) -> None:
        if max_concurrent < 1 or max_queue < 0:
            raise ValueError(f"max_concurrent must be >= 1 and max_queue >= 0, got {max_concurrent}, {max_queue}")
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._slots = asyncio.Semaphore(max_concurrent)
        self.waiting = 0
        self.running = 0

    async def acquire(self) -> Slot:
        """A running slot, after waiting in the queue; ApiError(429) when the queue is full."""
        if self._slots.locked() and self.waiting >= self.max_queue:
            raise ApiError(429, f"the server is busy: {self.running} generations running and {self.waiting} "
                                f"waiting (limits {self.max_concurrent} and {self.max_queue}); retry later",
                           code="server_busy")
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        return Slot(self)

    def _release(self) -> None:
        self.running -= 1
        self._slots.release()


class Slot:
    """One held generation slot; `release()` is idempotent and must run on the event loop."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission._release()


@dataclass(frozen=True)
class FinishedReply:
    finish_reason: str  # "stop", "length", "cancelled", or "error"
    completion_tokens: int
    first_audio_s: float | None = None  # from the reply's start to its first audio chunk (spoken replies)


# upper bounds (seconds) of the time-to-first-audio histogram's buckets (Prometheus `le`)
FIRST_AUDIO_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


class ServerStats:
    """Counters of finished replies (written from worker threads, read by GET /stats)."""

    def __init__(self, recent: int = 64) -> None:
        self._lock = threading.Lock()
        self._finished: Counter[str] = Counter()
        self._recent: deque[FinishedReply] = deque(maxlen=recent)
        self.completion_tokens = 0
        # time to first audio: count per bucket of FIRST_AUDIO_BUCKETS_S (not cumulative; last: +Inf)
        self.first_audio_counts = [0] * (len(FIRST_AUDIO_BUCKETS_S) + 1)
        self.first_audio_sum_s = 0.0

    def record(self, reply: FinishedReply) -> None:
        with self._lock:
            self._finished[reply.finish_reason] += 1
            self._recent.append(reply)
            self.completion_tokens += reply.completion_tokens
            if reply.first_audio_s is not None:
                bucket = next((i for i, bound in enumerate(FIRST_AUDIO_BUCKETS_S) if reply.first_audio_s <= bound),
                              len(FIRST_AUDIO_BUCKETS_S))
                self.first_audio_counts[bucket] += 1
                self.first_audio_sum_s += reply.first_audio_s

    def histogram(self) -> tuple[list[int], float]:
        """(first-audio counts per bucket, sum of seconds), read together."""
        with self._lock:
            return list(self.first_audio_counts), self.first_audio_sum_s

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "finished": dict(self._finished),
                "recent": [{"finish_reason": r.finish_reason, "completion_tokens": r.completion_tokens}
                           for r in self._recent],
            }


class TranscriptStore:
    """Transcripts of spoken replies by audio id, so a client can send a reply back as
    {"role": "assistant", "audio": {"id": ...}} the way OpenAI's multi-turn audio works.

    Bounded in count, in characters and in age. It belongs to the event loop: every call must come
    from a coroutine or callback of the loop that first used it (requests look their ids up there
    before their conversion moves to a worker thread). A call from any other thread raises at once
    instead of racing the loop's writes."""

    def __init__(self, ttl_s: float, max_entries: int = 4096, max_chars: int = 16 * 1024 * 1024) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_chars = max_chars
        self.chars = 0
        # every entry lives ttl_s, so insertion order is expiry order: the oldest is always first
        self._entries: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None

    def put(self, audio_id: str, transcript: str, expires_at_s: float, now_s: float) -> None:
        self._check_thread()
        self._drop(self._entries.pop(audio_id, None))
        self._entries[audio_id] = (expires_at_s, transcript)
        self.chars += len(transcript)
        while self._entries and (len(self._entries) > self.max_entries or self.chars > self.max_chars
                                 or next(iter(self._entries.values()))[0] < now_s):
            self._drop(self._entries.popitem(last=False)[1])

    def get(self, audio_id: str, now_s: float) -> str | None:
        self._check_thread()
        entry = self._entries.get(audio_id)
        if entry is None or entry[0] < now_s:
            return None
        return entry[1]

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, entry: tuple[float, str] | None) -> None:
        if entry is not None:
            self.chars -= len(entry[1])

    def _check_thread(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if self._loop is None and loop is not None:
            self._loop = loop
        if loop is None or loop is not self._loop:
            raise RuntimeError("TranscriptStore is used from outside its event loop (a worker thread?); look the "
                               "transcripts up on the loop and hand the worker the result")
