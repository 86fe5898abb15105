"""A wall-clock budget for decoding one request's media.

Size and duration limits bound what a file may hold, not how long it takes to decode: a crafted or
merely huge file (a long 4K clip, a pathological codec stream) can keep a worker decoding for many
minutes. One `DecodeDeadline` is started per request (all conversations of a prompt share it) and the
decoding loops check it per frame, so a request that runs over stops within a frame of the limit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from omni.encoders.limits import MediaLimits
from omni.errors import MediaError


@dataclass(frozen=True)
class DecodeDeadline:
    budget_s: float
    expires_at: float  # time.monotonic() seconds

    @classmethod
    def start(cls, limits: MediaLimits) -> DecodeDeadline:
        return cls(budget_s=limits.max_decode_seconds, expires_at=time.monotonic() + limits.max_decode_seconds)

    def check(self, label: str) -> None:
        """Raise once the budget is spent; `label` names the media being decoded when it ran out."""
        if time.monotonic() > self.expires_at:
            raise MediaError(
                f"{label!r}: decoding this request's media took longer than the {self.budget_s:g} s limit "
                "(MediaLimits.max_decode_seconds); send shorter or smaller media, sample a section "
                "(video_start/video_end, audio_start/audio_end) or fewer frames, or raise the limit"
            )
