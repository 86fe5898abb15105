"""One response: the session's reply to the conversation's new items, as Realtime server events.

response.created, then the assistant item (response.output_item.added, conversation.item.added),
its content part, the deltas as they come (speech as base64 PCM16 at 24 kHz, its transcript; or
text), and the closing events down to response.done with its status and usage. The reply runs in an
`AsyncReply` worker thread, on the serving engine when the server has one, and holds one of the
server's generation slots while it runs (the HTTP requests' admission). A cancel (the client's
response.cancel, or a barge-in) stops it within one step; the reply then keeps its text as far as
its audio was handed out (omni.pipeline.text_tokens_heard), and the client's later
conversation.item.truncate cuts it to what was actually played.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from omni.async_reply import AsyncReply
from omni.errors import OmniError
from omni.events import AudioChunk, ReplyDone, TextDelta
from omni.server.admission import FinishedReply
from omni.server.errors import ApiError, from_omni_error
from omni.server.realtime.conversation import Conversation, Item
from omni.server.realtime.protocol import ClientEventError, Dialect, error_event, new_id
from omni.server.realtime.settings import SAMPLE_RATE_HZ
from omni.session import OmniSession

log = logging.getLogger("omni.server.realtime")

Send = Callable[[dict[str, Any] | None], Awaitable[None]]


@dataclass(frozen=True)
class ResponseOptions:
    audio_output: bool
    voice: str
    max_new_tokens: int
    sampling: dict[str, Any] = field(default_factory=dict)


class Response:
    def __init__(self, session: OmniSession, conversation: Conversation, options: ResponseOptions,
                 dialect: Dialect, send: Send, server_state) -> None:
        self.id = new_id("resp")
        self.session = session
        self.conversation = conversation
        self.options = options
        self.dialect = dialect
        self.send = send
        self.server = server_state
        self.item = Item(new_id("item"), "assistant", [], status="in_progress")
        self.cancel_reason: str | None = None
        self.announced = False  # the assistant item is in the conversation
        self._reply: AsyncReply | None = None
        self.task: asyncio.Task | None = None

    @property
    def part_type(self) -> str:
        return "output_audio" if self.options.audio_output else "output_text"

    def cancel(self, reason: str) -> None:
        """Stop the reply (within one step); `reason` is status_details.reason: turn_detected or
        client_cancelled."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        if self._reply is not None:
            self._reply.cancel()

    def describe(self, status: str, status_details: dict | None = None, usage: dict | None = None) -> dict[str, Any]:
        dialect, options = self.dialect, self.options
        output = [self.item.describe(dialect)] if self.announced and status != "in_progress" else []
        modalities = ["audio"] if options.audio_output else ["text"]
        body = {"id": self.id, "object": "realtime.response", "status": status, "status_details": status_details,
                "output": output, "usage": usage, "conversation_id": None, "max_output_tokens": options.max_new_tokens,
                "metadata": None}
        if dialect.beta:
            return {**body, "modalities": ["text", "audio"] if options.audio_output else ["text"],
                    "voice": options.voice, "output_audio_format": "pcm16"}
        return {**body, "output_modalities": modalities,
                "audio": {"output": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE_HZ}, "voice": options.voice}}}

    async def run(self, pending: list[Item], start_over: bool) -> None:
        """The whole response, from response.created to response.done; never raises for the client's input."""
        await self.send(self.dialect.event("response.created", response=self.describe("in_progress")))
        try:
            slot = await self.server.admission.acquire()
        except ApiError as exc:
            await self._finish("failed", {"type": "failed", "error": {"type": "server_error", "code": exc.code,
                                                                    "message": exc.message}}, None, "")
            return
        try:
            if self.cancel_reason is not None:
                slot.release()
                await self._finish("cancelled", {"type": "cancelled", "reason": self.cancel_reason}, None, "")
                return
            try:
                await self._announce_item()
            except ClientEventError as exc:
                slot.release()
                await self.send(error_event(self.dialect, exc))
                await self._finish("failed", {"type": "failed", "error": {"type": exc.error_type, "code": exc.code,
                                                                        "message": exc.message}}, None, "")
                return
            done, streamed, error = await self._stream(pending, start_over, slot)
        except asyncio.CancelledError:  # the connection closed: stop the reply, nobody is listening
            if self._reply is not None:
                self._reply.cancel()
                await self._reply.stopped()
            else:
                slot.release()
            raise
        if error is not None or done is None:
            error = error or {"type": "server_error", "code": "server_error", "message": "the reply ended early"}
            await self._finish("failed", {"type": "failed", "error": error}, None, streamed)
        elif done.finish_reason == "cancelled":
            await self._finish("cancelled", {"type": "cancelled", "reason": self.cancel_reason or "client_cancelled"},
                               done, streamed)
        elif done.finish_reason == "length":
            await self._finish("incomplete", {"type": "incomplete", "reason": "max_output_tokens"}, done, streamed)
        else:
            await self._finish("completed", None, done, streamed)

    async def _announce_item(self) -> None:
        previous = self.conversation.add(self.item)
        self.announced = True
        item = self.item.describe(self.dialect)
        await self.send(self.dialect.event("response.output_item.added", response_id=self.id, output_index=0, item=item))
        await self.send(self.dialect.event("conversation.item.added", previous_item_id=previous, item=item))
        part = {"type": "audio", "transcript": ""} if self.options.audio_output else {"type": "text", "text": ""}
        await self.send(self.dialect.event("response.content_part.added", **self._where(), part=part))

    def _where(self) -> dict[str, Any]:
        return {"response_id": self.id, "item_id": self.item.id, "output_index": 0, "content_index": 0}

    async def _stream(self, pending: list[Item], start_over: bool, slot) -> tuple[ReplyDone | None, str, dict | None]:
        session, options = self.session, self.options
        sent_ids = ([] if start_over else list(self.conversation.fed_ids)) + [item.id for item in pending]
        revision = self.conversation.revision
        before = 0 if start_over else len(session.messages)
        messages = [item.message() for item in pending]

        def start():
            if start_over:
                session.reset()
            return session.stream(messages, return_audio=options.audio_output,
                                  voice=options.voice if options.audio_output else None,
                                  max_new_tokens=options.max_new_tokens, **options.sampling)

        self._reply = AsyncReply(start, cancel_start=session.cancel, on_finished=functools.partial(_finished,
                                 self.server, slot), thread_name="omni-realtime-reply")
        if self.cancel_reason is not None:
            self._reply.cancel()
        where = self._where()
        delta_type = "response.output_audio_transcript.delta" if options.audio_output else "response.output_text.delta"
        streamed, done, error = "", None, None
        try:
            async for event in self._reply.events():
                if isinstance(event, TextDelta):
                    streamed += event.text
                    await self.send(self.dialect.event(delta_type, **where, delta=event.text))
                elif isinstance(event, AudioChunk):
                    self.item.audio_ms += int(round(1000 * event.duration_s))
                    await self.send(self.dialect.event("response.output_audio.delta", **where,
                                                       delta=base64.b64encode(event.pcm16()).decode("ascii")))
                elif isinstance(event, ReplyDone):
                    done = event
        except OmniError as exc:
            api = from_omni_error(exc)
            error = {"type": api.body()["error"]["type"], "code": api.code, "message": api.message}
            await self.send(self.dialect.event("error", error={**error, "param": api.param, "event_id": None}))
        except Exception as exc:  # the server's fault: said in-band, the connection goes on
            log.exception("realtime reply failed")
            error = {"type": "server_error", "code": "server_error",
                     "message": f"internal server error ({type(exc).__name__})"}
        finally:
            self._reply.cancel()
            await self._reply.stopped()
        recorded = len(session.messages) == before + len(messages) + 1 and done is not None
        if recorded:
            self.conversation.read(sent_ids + [self.item.id], revision)
        else:
            self.conversation.forget()
        return done, streamed, error

    async def _finish(self, status: str, details: dict | None, done: ReplyDone | None, streamed: str) -> None:
        """The closing events: the part's, the item's, then response.done."""
        dialect, item, audio_output = self.dialect, self.item, self.options.audio_output
        kept = done.text if done is not None else streamed
        item.status = "completed" if status == "completed" else "incomplete"
        if self.announced:
            key = "transcript" if audio_output else "text"
            item.parts = [{"type": self.part_type, key: kept}]
            where = self._where()
            if audio_output:
                await self.send(dialect.event("response.output_audio.done", **where))
                await self.send(dialect.event("response.output_audio_transcript.done", **where, transcript=streamed))
                part = {"type": "audio", "transcript": streamed}
            else:
                await self.send(dialect.event("response.output_text.done", **where, text=streamed))
                part = {"type": "text", "text": streamed}
            await self.send(dialect.event("response.content_part.done", **where, part=part))
            described = item.describe(dialect)
            await self.send(dialect.event("response.output_item.done", response_id=self.id, output_index=0,
                                          item=described))
            await self.send(dialect.event("conversation.item.done", item=described))
        usage = _usage(done) if done is not None else None
        await self.send(dialect.event("response.done", response=self.describe(status, details, usage)))


def _usage(done: ReplyDone) -> dict[str, Any]:
    usage = done.usage
    output = usage.text_tokens + usage.codec_tokens
    return {"total_tokens": usage.prompt_tokens + output, "input_tokens": usage.prompt_tokens, "output_tokens": output,
            "input_token_details": {"cached_tokens": usage.cached_prompt_tokens},
            "output_token_details": {"text_tokens": usage.text_tokens, "audio_tokens": usage.codec_tokens}}


def _finished(server_state, slot, outcome) -> None:
    slot.release()
    if outcome.done is not None:
        tokens = outcome.done.usage.text_tokens + outcome.done.usage.codec_tokens
        server_state.stats.record(FinishedReply(outcome.done.finish_reason, tokens))
    elif outcome.started:
        server_state.stats.record(FinishedReply("error", 0))
