"""Conversations kept across stateless requests, found again by their token prefix.

An HTTP client resends the whole conversation every turn. Without this cache every turn decodes the
media again, runs the encoders again and prefills every earlier turn again. With it, the state a
finished turn leaves behind (the Thinker's cache, the Talker's view of the conversation) is kept
under its key, the conversation's tokens so far; a new request reuses the entry sharing the longest
prefix with its own key and prefills only the rest.

Keys are token ids, with every token of a media item replaced by an id derived from the item's
decoded content (`omni.prompt.prompt_key`): two different images of the same size expand to the same
placeholder ids, and must not share a cache. Entries own a trimmed copy of the cache (a session keeps
using its own), are evicted least recently used first once their bytes pass the budget, and are
never changed: a hit copies the prefix into the new reply's own cache. A hit gives the same reply as
a miss: the same tokens at the same positions were computed either way (up to floating-point
summation order), and the reply's sampler still sees the whole prompt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from omni.kv_cache import KVCache


@dataclass(eq=False)
class PrefixEntry:
    key: np.ndarray  # int64 token keys of the cached conversation
    cache: KVCache  # exactly len(key) slots
    talker: object | None  # the Talker's context over the same tokens (omni.speech / omni.qwen3.speech), or None
    nbytes: int
    last_used: float

    def talker_prefix(self, length: int):
        if self.talker is None:
            return None
        return self.talker.prefix(length)


@dataclass(frozen=True)
class PrefixHit:
    entry: PrefixEntry
    length: int  # tokens of the query the entry holds


class PrefixCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: list[PrefixEntry] = []
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.hit_tokens = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def lookup(self, key: Sequence[int]) -> PrefixHit | None:
        """The entry sharing the longest prefix with `key` (None when no entry shares a token)."""
        if not self.enabled:
            return None
        query = np.asarray(key, dtype=np.int64)
        best: PrefixHit | None = None
        with self._lock:
            for entry in self._entries:
                length = _common_prefix(entry.key, query)
                if length and (best is None or length > best.length):
                    best = PrefixHit(entry, length)
            if best is not None:
                best.entry.last_used = time.monotonic()
        return best

    def record(self, reused_tokens: int) -> None:
        """Count a request's outcome: the tokens it took from the cache (0: a miss)."""
        with self._lock:
            if reused_tokens:
                self.hits += 1
                self.hit_tokens += reused_tokens
            else:
                self.misses += 1

    def insert(self, key: Sequence[int], cache: KVCache, talker=None) -> None:
        """Keep (a trimmed copy of) `cache`, which holds the tokens of `key`, and `talker` (a
        TalkerContext over the same tokens); evict least recently used entries past the budget."""
        if not self.enabled or not len(key):
            return
        query = np.asarray(key, dtype=np.int64)
        if cache.length < len(query) or (talker is not None and talker.length < len(query)):
            raise ValueError(f"the cache holds {cache.length} tokens, the key {len(query)}")
        with self._lock:
            for entry in self._entries:
                if len(entry.key) >= len(query) and _common_prefix(entry.key, query) == len(query):
                    entry.last_used = time.monotonic()
                    return  # already held (within a longer entry)
        kept = cache.copy_prefix(len(query))
        kept_talker = None
        if talker is not None:
            kept_talker = type(talker)(talker.embeds[:, : len(query)].clone(), talker.positions[:, :, : len(query)].clone())
        nbytes = kept.nbytes() + (kept_talker.embeds.numel() * kept_talker.embeds.element_size() if kept_talker else 0)
        if nbytes > self.budget_bytes:
            return
        with self._lock:
            # an entry that is a prefix of the new one holds nothing the new one lacks
            self._entries = [e for e in self._entries
                             if not (len(e.key) <= len(query) and _common_prefix(e.key, query) == len(e.key))]
            self._entries.append(PrefixEntry(query, kept, kept_talker, nbytes, time.monotonic()))
            while self.bytes > self.budget_bytes:
                oldest = min(self._entries, key=lambda e: e.last_used)
                self._entries.remove(oldest)
                self.evictions += 1

    @property
    def bytes(self) -> int:
        return sum(e.nbytes for e in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._entries), "bytes": self.bytes, "budget_bytes": self.budget_bytes,
                    "hits": self.hits, "misses": self.misses, "hit_tokens": self.hit_tokens,
                    "evictions": self.evictions}


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n
