"""Stop strings (OpenAI's `stop`): the reply ends where its text would first contain one of them,
and the text handed out stops just before it.

Text is streamed, so a piece that might be the start of a stop string ("Obs" of "Observation:") is
held back until the following text decides it: either the stop string completes (the held text is
dropped) or it cannot any more (the held text is released). A streamed delta therefore never shows
any part of a stop string, and the streamed text always equals the whole reply's text.
"""

from __future__ import annotations

from collections.abc import Sequence

from omni.errors import InputError

MAX_STOP_STRINGS = 4  # OpenAI's limit; more would only cost time per token
MAX_STOP_CHARS = 1000


def stop_strings(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    """`stop` as a tuple of strings, checked: a string or a list of up to 4 non-empty strings."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, Sequence) or not all(isinstance(s, str) for s in stop):
        raise InputError(f"stop must be a string or a list of strings, got {type(stop).__name__}")
    if len(stop) > MAX_STOP_STRINGS:
        raise InputError(f"stop holds {len(stop)} strings; at most {MAX_STOP_STRINGS} are allowed")
    for text in stop:
        if not text:
            raise InputError("stop strings must not be empty (an empty string would end every reply at once)")
        if len(text) > MAX_STOP_CHARS:
            raise InputError(f"a stop string is {len(text)} characters long; the limit is {MAX_STOP_CHARS}")
    return tuple(dict.fromkeys(stop))


class StopText:
    """The reply's text as it grows, cut at the first stop string.

    `text` is everything pushed so far (cut at the stop once one is found); `decided` is how much of
    it can be shown: the rest might still turn into a stop string."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.text = ""
        self.decided = 0
        self.stopped = False

    def push(self, delta: str) -> str:
        """Append `delta`; returns the newly decided text (possibly ""). After a stop string is
        found, `stopped` is True and further pushes return ""."""
        if self.stopped or not delta:
            return ""
        start = self.decided
        self.text += delta
        undecided = self.text[start:]
        # Text before `start` is decided: no stop string can begin there, so searching the undecided
        # tail finds the earliest stop string the whole text holds.
        found = [at for at in (undecided.find(s) for s in self.stops) if at >= 0]
        if found:
            self.stopped = True
            self.text = self.text[: start + min(found)]
            self.decided = len(self.text)
            return self.text[start:]
        self.decided = len(self.text) - self._held_back(undecided)
        return self.text[start : self.decided]

    def flush(self) -> str:
        """The reply ended without a stop string: the held-back text is decided after all."""
        start = self.decided
        self.decided = len(self.text)
        return self.text[start:]

    def _held_back(self, undecided: str) -> int:
        """Length of the longest end of `undecided` that begins some stop string."""
        longest = min(len(undecided), max(len(s) for s in self.stops) - 1)
        for length in range(longest, 0, -1):
            tail = undecided[-length:]
            if any(s.startswith(tail) for s in self.stops):
                return length
        return 0
