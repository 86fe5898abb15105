"""Chat Completions response bodies in OpenAI's exact shapes (chat.completion and
chat.completion.chunk), plus omni's timing extras under the extra top-level key "omni".

Audio follows OpenAI's audio-output API: with audio, the reply's text is the audio's transcript
(`message.content` is null; streamed text arrives as `delta.audio.transcript`), and streamed audio is
16-bit little-endian mono PCM (24 kHz) in `delta.audio.data`, whatever `audio.format` asked; a
non-streamed reply carries the whole WAV or PCM16 in `message.audio.data`.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from omni.events import ReplyDone, Usage

FINISH_REASONS = ("stop", "length")


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def new_audio_id() -> str:
    return f"audio_{uuid.uuid4().hex}"


B64_SLICE_BYTES = 3 * 256 * 1024  # a multiple of 3: the slices' base64 joins without padding


def b64(data: bytes) -> str:
    """Base64 in slices of ~1 ms each: between them a thread gives the GIL back to the event loop."""
    if len(data) <= B64_SLICE_BYTES:
        return base64.b64encode(data).decode("ascii")
    view = memoryview(data)
    return "".join(base64.b64encode(view[start:start + B64_SLICE_BYTES]).decode("ascii")
                   for start in range(0, len(data), B64_SLICE_BYTES))


def json_bytes(body: dict[str, Any]) -> bytes:
    """A JSON response body, as FastAPI's JSONResponse renders it."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def finish_reason(done: ReplyDone | None) -> str:
    # "cancelled" only happens when the client left (or the server is stopping): nobody reads it
    return done.finish_reason if done is not None and done.finish_reason in FINISH_REASONS else "stop"


def usage_body(usage: Usage) -> dict[str, Any]:
    """OpenAI counts audio tokens inside completion_tokens; ours are the Talker's codec tokens."""
    completion_tokens = usage.text_tokens + usage.codec_tokens
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": usage.prompt_tokens + completion_tokens,
        "completion_tokens_details": {"text_tokens": usage.text_tokens, "audio_tokens": usage.codec_tokens,
                                      "reasoning_tokens": 0},
        # OpenAI's field for prompt tokens served from its prompt cache: here, the prefix cache's
        "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
    }


@dataclass
class RequestClock:
    """Server-side moments of one request, in perf_counter seconds."""

    received_s: float
    admitted_s: float | None = None
    first_text_s: float | None = None
    first_audio_s: float | None = None

    def since_received(self, moment_s: float | None) -> float | None:
        return None if moment_s is None else round(moment_s - self.received_s, 6)


def omni_extras(done: ReplyDone | None, clock: RequestClock, audio_sample_rate_hz: int | None) -> dict[str, Any]:
    """Timings measured from the moment the server received the request (queueing included)."""
    now_s = time.perf_counter()
    extras: dict[str, Any] = {
        "queue_s": clock.since_received(clock.admitted_s),
        "time_to_first_text_s": clock.since_received(clock.first_text_s),
        "time_to_first_audio_s": clock.since_received(clock.first_audio_s),
        "total_s": clock.since_received(now_s),
        "audio_sample_rate_hz": audio_sample_rate_hz,
    }
    if done is not None:
        timings = done.timings
        extras.update(
            finish_reason=done.finish_reason,
            audio_duration_s=timings.audio_duration_s,
            real_time_factor=timings.real_time_factor,
            stage_s=dict(timings.stage_s),
        )
    return extras


@dataclass(frozen=True)
class ChunkWriter:
    """Server-sent events of one streamed completion."""

    completion_id: str
    created_s: int
    model: str

    def event(self, body: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(body, separators=(',', ':'))}\n\n".encode()

    def chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        return self.event({
            "id": self.completion_id, "object": "chat.completion.chunk", "created": self.created_s,
            "model": self.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **extra,
        })

    def usage_chunk(self, usage: Usage) -> bytes:
        # OpenAI's stream_options.include_usage: one last chunk with no choices and the usage
        return self.event({
            "id": self.completion_id, "object": "chat.completion.chunk", "created": self.created_s,
            "model": self.model, "choices": [], "usage": usage_body(usage),
        })

    @staticmethod
    def done() -> bytes:
        return b"data: [DONE]\n\n"


def completion_body(
    completion_id: str,
    created_s: int,
    model: str,
    done: ReplyDone,
    audio: dict[str, Any] | None,
    extras: dict[str, Any],
) -> dict[str, Any]:
    message = {"role": "assistant", "content": None if audio is not None else done.text, "refusal": None,
               "audio": audio}
    return {
        "id": completion_id, "object": "chat.completion", "created": created_s, "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(done), "logprobs": None}],
        "usage": usage_body(done.usage),
        "omni": extras,
    }
