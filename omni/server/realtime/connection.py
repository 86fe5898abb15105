"""One realtime connection: its session, conversation, input audio and at most one response, driven
by the client's events in the order they arrive.

The receive loop handles one client event at a time (so input audio is resampled and scored by the
VAD in order, off the event loop); a response runs in its own task and sends its events as they come,
while the loop goes on reading the microphone, which is what lets speech during a response cancel it
(barge-in). Every problem with a client event is answered with an `error` event naming it, and the
connection goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from omni.chat import AUDIO_SYSTEM_PROMPT
from omni.errors import OmniError
from omni.pipeline import text_tokens_heard
from omni.speech import codec_timing
from omni.server.errors import from_omni_error
from omni.server.realtime.conversation import Conversation, item_from_client, user_audio_item
from omni.server.realtime.input_audio import InputAudio, decode_pcm16
from omni.server.realtime.protocol import ClientEventError, Dialect, error_event, new_id
from omni.server.realtime.response import Response, ResponseOptions
from omni.server.realtime.settings import SessionSettings, apply_change, response_change, session_change
from omni.session import OmniSession

log = logging.getLogger("omni.server.realtime")


class SessionClosed(Exception):
    """The session ends (a limit was reached): `close_code` and `reason` go in the close frame."""

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.reason = reason


class RealtimeConnection:
    def __init__(self, websocket: WebSocket, server, dialect: Dialect) -> None:
        state = server.state
        self.websocket = websocket
        self.server = server
        self.limits = server.limits
        self.dialect = dialect
        loaded = state.loaded
        self.session = OmniSession(loaded, max_new_tokens=state.config.default_max_tokens,
                                   media_limits=state.media_limits, engine=state.engine or False)
        voice = ""
        if loaded.audio_output:
            from omni.speech import resolve_voice

            voice = resolve_voice(loaded, None)
        self.settings = SessionSettings(session_id=new_id("sess"), model=state.config.model_name, voice=voice,
                                        audio_output=loaded.audio_output)
        self.conversation = Conversation(self.limits.max_items, self.limits.max_conversation_audio_s)
        self.audio = InputAudio(self.limits.max_input_audio_s, self.settings.turn_detection)
        self.response: Response | None = None
        self._speech_item_id: str | None = None  # the item the utterance in progress will become
        self._send_lock = asyncio.Lock()
        self._open = True
        self._last_activity = time.monotonic()

    # -- sending -------------------------------------------------------------------------------------

    async def send(self, event: dict[str, Any] | None) -> None:
        if event is None or not self._open:
            return
        async with self._send_lock:
            try:
                await self.websocket.send_text(json.dumps(event))
            except (WebSocketDisconnect, RuntimeError, OSError):
                self._open = False  # the client left; the receive loop sees it next

    async def send_error(self, error: ClientEventError) -> None:
        await self.send(error_event(self.dialect, error))

    # -- the loop ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Until the client leaves or a limit ends the session (SessionClosed)."""
        opened = time.monotonic()
        await self.send(self.dialect.event("session.created", session=self.settings.describe(self.dialect)))
        try:
            while self._open:
                now = time.monotonic()
                session_left = self.limits.max_session_s - (now - opened)
                idle_left = self.limits.idle_timeout_s - (now - self._last_activity)
                if session_left <= 0:
                    await self._expire("session_expired", f"the session reached its maximum length of "
                                                          f"{self.limits.max_session_s:g} s; open a new one")
                if idle_left <= 0:
                    if self.response is None:
                        await self._expire("idle_timeout", f"no client event for {self.limits.idle_timeout_s:g} s; "
                                                           "the session was closed")
                    self._last_activity = now  # a response is still playing: not idle
                    continue
                try:
                    message = await asyncio.wait_for(self.websocket.receive(), timeout=min(session_left, idle_left))
                except asyncio.TimeoutError:
                    continue
                if message["type"] == "websocket.disconnect":
                    break
                self._last_activity = time.monotonic()
                await self._handle_message(message)
        finally:
            self._open = False
            await self._stop_response()

    async def _expire(self, code: str, message: str) -> None:
        await self.send_error(ClientEventError(message, code=code))
        raise SessionClosed(1000, code)

    async def _handle_message(self, message: dict) -> None:
        text = message.get("text")
        if text is None:
            await self.send_error(ClientEventError("binary frames are not part of the Realtime protocol; send each "
                                                   "event as a JSON text frame (audio as base64)", code="invalid_event"))
            return
        try:
            event = self.dialect.parse(text)
            handler = getattr(self, "_on_" + event.type.replace(".", "_"))
            await handler(event)
        except ClientEventError as exc:
            if exc.event_id is None:
                exc.event_id = _event_id(text)
            await self.send_error(exc)
        except OmniError as exc:
            api = from_omni_error(exc)
            await self.send_error(ClientEventError(api.message, code=api.code or "invalid_request", param=api.param,
                                                   event_id=_event_id(text)))

    async def _stop_response(self) -> None:
        response = self.response
        if response is not None and response.task is not None:
            response.cancel("client_cancelled")
            response.task.cancel()
            try:
                await response.task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the connection is closing anyway
                pass

    # -- session -------------------------------------------------------------------------------------

    async def _on_session_update(self, event) -> None:
        old = self.settings
        new = self._apply(session_change(event.session, self.dialect))
        if new.turn_detection != old.turn_detection:
            self.audio.configure(new.turn_detection)
            self._speech_item_id = None
        if new.instructions != old.instructions:
            self.session.system_prompt = new.instructions if new.instructions is not None else AUDIO_SYSTEM_PROMPT
            self.conversation.edit()  # the session read the old system prompt: start over
        self.settings = new
        await self.send(self.dialect.event("session.updated", session=new.describe(self.dialect)))

    # -- input audio ---------------------------------------------------------------------------------

    async def _on_input_audio_buffer_append(self, event) -> None:
        samples = decode_pcm16(event.audio, "audio")
        for turn in await asyncio.to_thread(self.audio.append, samples):
            if turn.kind == "speech_start":
                await self._speech_started(turn)
            elif turn.kind == "turn_end":
                await self._speech_stopped(turn)

    async def _speech_started(self, turn) -> None:
        self._speech_item_id = new_id("item")
        await self.send(self.dialect.event("input_audio_buffer.speech_started", item_id=self._speech_item_id,
                                           audio_start_ms=self.audio.stream_ms(turn.speech_start_s)))
        detection = self.settings.turn_detection
        if self.response is not None and detection is not None and detection.interrupt_response:
            self.response.cancel("turn_detected")

    async def _speech_stopped(self, turn) -> None:
        item_id = self._speech_item_id or new_id("item")
        self._speech_item_id = None
        await self.send(self.dialect.event("input_audio_buffer.speech_stopped", item_id=item_id,
                                           audio_end_ms=self.audio.stream_ms(turn.speech_end_s)))
        self.audio.drop_buffered()
        await self._commit(user_audio_item(turn.audio, item_id))
        detection = self.settings.turn_detection
        if detection is not None and detection.create_response:
            await self._start_response(self._response_options(self.settings))

    async def _commit(self, item) -> None:
        previous = self.conversation.add(item)
        await self.send(self.dialect.event("input_audio_buffer.committed", item_id=item.id, previous_item_id=previous))
        await self._announce_item(item, previous)

    async def _on_input_audio_buffer_commit(self, event) -> None:
        audio = self.audio.take()
        await self._commit(user_audio_item(audio, self._speech_item_id))
        self._speech_item_id = None

    async def _on_input_audio_buffer_clear(self, event) -> None:
        self.audio.clear()
        self._speech_item_id = None
        await self.send(self.dialect.event("input_audio_buffer.cleared"))

    async def _on_output_audio_buffer_clear(self, event) -> None:
        raise ClientEventError("output_audio_buffer.clear is for WebRTC connections; over a WebSocket the client "
                               "owns playback (send response.cancel and conversation.item.truncate)",
                               code="invalid_event_type", param="type")

    # -- conversation --------------------------------------------------------------------------------

    async def _announce_item(self, item, previous: str | None) -> None:
        described = item.describe(self.dialect)
        await self.send(self.dialect.event("conversation.item.added", previous_item_id=previous, item=described))
        await self.send(self.dialect.event("conversation.item.done", previous_item_id=previous, item=described))

    async def _on_conversation_item_create(self, event) -> None:
        item = await asyncio.to_thread(item_from_client, event.item, self.dialect)
        previous = self.conversation.add(item, event.previous_item_id)
        await self._announce_item(item, previous)

    async def _on_conversation_item_retrieve(self, event) -> None:
        item = self.conversation.items[self.conversation.find(event.item_id)]
        await self.send(self.dialect.event("conversation.item.retrieved", item=item.describe(self.dialect)))

    async def _on_conversation_item_delete(self, event) -> None:
        if self.response is not None and self.response.item.id == event.item_id:
            raise ClientEventError("that item is the response in progress; cancel it first", code="item_in_use",
                                   param="item_id")
        self.conversation.delete(event.item_id)
        await self.send(self.dialect.event("conversation.item.deleted", item_id=event.item_id))

    async def _on_conversation_item_truncate(self, event) -> None:
        conversation = self.conversation
        item = conversation.items[conversation.find(event.item_id)]
        if item.role != "assistant" or not item.parts or item.parts[0]["type"] != "output_audio":
            raise ClientEventError("only an assistant item with audio can be truncated", code="invalid_value",
                                   param="item_id")
        if event.content_index != 0:
            raise ClientEventError(f"content_index {event.content_index} does not exist; an assistant item has its "
                                   "audio at 0", code="invalid_value", param="content_index")
        if self.response is not None and self.response.item is item:
            self.response.cancel("client_cancelled")  # the listener stopped it: stop generating too
            await self._wait_response()
        if not 0 <= event.audio_end_ms <= item.audio_ms:
            raise ClientEventError(f"audio_end_ms {event.audio_end_ms} is past the item's audio, which lasts "
                                   f"{item.audio_ms} ms", code="invalid_value", param="audio_end_ms")
        if self.response is None and not conversation.stale and conversation.fed_ids[-1:] == [item.id]:
            # the session's last reply: cut its cache and Talker history too
            transcript = await asyncio.to_thread(self.session.truncate_reply, event.audio_end_ms / 1000)
        else:  # an older reply (or one while another plays): the same rule on its text; the session starts over
            transcript = self._cut_text(item.parts[0].get("transcript") or "", item, event.audio_end_ms)
            conversation.edit()
        item.parts = [{"type": "output_audio", "transcript": transcript}]
        item.audio_ms = event.audio_end_ms
        await self.send(self.dialect.event("conversation.item.truncated", item_id=item.id, content_index=0,
                                           audio_end_ms=event.audio_end_ms))

    def _cut_text(self, text: str, item, audio_end_ms: int) -> str:
        loaded = self.server.state.loaded
        tokenizer = loaded.tokenizer
        tokens = tokenizer.encode(text)
        timing = codec_timing(loaded)
        codes_per_second = timing.sample_rate_hz / timing.samples_per_code  # 50 (Qwen2.5-Omni), 12.5 (Qwen3)
        codes = int(item.audio_ms * codes_per_second) // 1000
        heard = int(audio_end_ms * codes_per_second) // 1000
        keep = text_tokens_heard(heard, len(tokens), codes, speech_complete=item.status == "completed",
                                 codes_per_text_token=timing.codes_per_text_token)
        return tokenizer.decode(tokens[:keep])

    # -- responses -----------------------------------------------------------------------------------

    def _apply(self, change) -> SessionSettings:
        loaded = self.server.state.loaded
        return apply_change(self.settings, change, loaded.voices if loaded.audio_output else [], loaded.audio_output,
                            self.server.state.config.max_tokens_limit)

    def _response_options(self, settings: SessionSettings) -> ResponseOptions:
        sampling = {}
        if settings.temperature is not None:
            sampling = {"do_sample": settings.temperature > 0, "temperature": settings.temperature or None}
        return ResponseOptions(audio_output=settings.audio_output, voice=settings.voice,
                               max_new_tokens=settings.max_output_tokens or self.server.state.config.default_max_tokens,
                               sampling=sampling)

    async def _on_response_create(self, event) -> None:
        settings = self.settings
        if event.response is not None:
            settings = self._apply(response_change(event.response, self.dialect, settings.instructions))
        await self._start_response(self._response_options(settings))

    async def _start_response(self, options: ResponseOptions) -> None:
        if self.response is not None and self.response.cancel_reason is not None:
            await self._wait_response()  # a cancelled response winds down within a step: then this one starts
        if self.response is not None:
            raise ClientEventError(f"response {self.response.id} is in progress; cancel it or wait for response.done",
                                   code="conversation_already_has_active_response")
        pending = self.conversation.pending()
        if not pending:
            raise ClientEventError("there is nothing new to respond to: add a user item (input audio or "
                                   "conversation.item.create) first", code="no_new_input")
        start_over = self.conversation.stale
        response = Response(self.session, self.conversation, options, self.dialect, self.send, self.server.state)
        self.response = response
        response.task = asyncio.create_task(self._run_response(response, pending, start_over))

    async def _run_response(self, response: Response, pending, start_over: bool) -> None:
        try:
            await response.run(pending, start_over)
        finally:
            if self.response is response:
                self.response = None
            self._last_activity = time.monotonic()

    async def _wait_response(self) -> None:
        response = self.response
        if response is not None and response.task is not None:
            await asyncio.shield(response.task)

    async def _on_response_cancel(self, event) -> None:
        response = self.response
        if response is None or (event.response_id and event.response_id != response.id):
            raise ClientEventError("there is no response in progress" if response is None else
                                   f"response {event.response_id!r} is not the one in progress ({response.id})",
                                   code="response_cancel_not_active", param="response_id")
        response.cancel("client_cancelled")


def _event_id(text: str) -> str | None:
    try:
        value = json.loads(text).get("event_id")
    except (ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) else None
