"""The OpenAI-compatible HTTP server: `create_app(loaded, config)` and `serve(...)`.

Stateless HTTP: every request is a fresh OmniSession over the one shared LoadedModel, fed the whole
conversation in `messages`. Routes: POST /v1/chat/completions, GET /v1/models, GET /health,
GET /stats (omni's counters: running, waiting, finished replies by finish reason).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from omni.encoders.limits import MediaLimits
from omni.errors import AudioOutputUnavailable, OmniError, UnknownVoiceError
from omni.events import AudioChunk, ReplyDone, TextDelta
from omni.loading import LoadedModel
from omni.server.admission import Admission, FinishedReply, ServerStats, Slot, TranscriptStore
from omni.server.body_limit import BodyLimit
from omni.server.errors import ApiError, error_body, from_omni_error, install_error_handlers
from omni.server.generation import ReplyPump
from omni.server.media_policy import MediaPolicy
from omni.server.protocol import OmniRequest, parse_request, to_omni_request
from omni.server.responses import (
    ChunkWriter, RequestClock, b64, completion_body, finish_reason, new_audio_id, new_completion_id, omni_extras,
)
from omni.session import OmniSession

log = logging.getLogger("omni.server")
MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    model_name: str
    max_concurrent: int = 4
    max_queue: int = 32
    max_body_bytes: int = 64 * MIB
    media_limits: MediaLimits = field(default_factory=MediaLimits)
    allow_private_remote: bool = False  # let remote media URLs reach loopback/private hosts (tests, trusted nets)
    default_max_tokens: int = 512
    max_tokens_limit: int = 8192
    audio_ttl_s: int = 3600  # how long an audio id's transcript is kept for multi-turn requests


class ServerState:
    def __init__(self, loaded: LoadedModel, config: ServerConfig) -> None:
        self.loaded = loaded
        self.config = config
        self.admission = Admission(config.max_concurrent, config.max_queue)
        self.stats = ServerStats()
        self.transcripts = TranscriptStore(config.audio_ttl_s)
        self.policy = MediaPolicy(config.media_limits, config.allow_private_remote)
        # the loaders repeat the public-address check for every redirect the fetch follows
        self.media_limits = dataclasses.replace(config.media_limits,
                                                public_remote_only=not config.allow_private_remote)
        self.created_s = int(time.time())


def create_app(loaded: LoadedModel, config: ServerConfig) -> FastAPI:
    app = FastAPI(title="omni", docs_url=None, redoc_url=None, openapi_url=None)
    state = ServerState(loaded, config)
    app.state.omni = state
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_body_bytes=config.max_body_bytes)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": config.model_name}

    @app.get("/stats")
    async def stats() -> dict:
        return {"running": state.admission.running, "waiting": state.admission.waiting, **state.stats.snapshot()}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [
            {"id": config.model_name, "object": "model", "created": state.created_s, "owned_by": "omni"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        clock = RequestClock(received_s=time.perf_counter())
        body = await request.body()
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
        parsed = parse_request(payload)
        if parsed.model is not None and parsed.model != config.model_name:
            raise ApiError(404, f"model {parsed.model!r} does not exist; this server serves {config.model_name!r}",
                           code="model_not_found", param="model")
        omni_request = await asyncio.to_thread(_convert, state, parsed)
        slot = await state.admission.acquire()
        clock.admitted_s = time.perf_counter()
        try:
            stream = await asyncio.to_thread(_start_reply, state, omni_request)
        except BaseException:
            slot.release()
            raise
        pump = ReplyPump(stream, _on_finished(state, slot))
        reply = _Reply(state, omni_request, clock)
        if omni_request.stream:
            return _SSEResponse(reply.sse(pump), on_close=pump.cancel, media_type="text/event-stream",
                                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return JSONResponse(await reply.whole(pump, request))

    return app


def _convert(state: ServerState, parsed) -> OmniRequest:
    now_s = time.time()
    return to_omni_request(parsed, state.policy, lambda audio_id: state.transcripts.get(audio_id, now_s),
                           state.config.max_tokens_limit)


def _start_reply(state: ServerState, request: OmniRequest):
    """Runs in a worker thread: media decoding and the encoders happen here, inside `stream()`."""
    loaded = state.loaded
    if request.return_audio and not loaded.audio_output:
        raise AudioOutputUnavailable("this server's model has no audio output (talker, token2wav or speakers are "
                                     "missing); ask for modalities [\"text\"]")
    if request.return_audio and request.voice is not None and request.voice not in loaded.voices:
        raise UnknownVoiceError(f"voice {request.voice!r} is not one of this model's voices: "
                                f"{', '.join(loaded.voices)}")
    options = {"system_prompt": request.system_prompt} if request.system_prompt is not None else {}
    session = OmniSession(loaded, max_new_tokens=state.config.default_max_tokens,
                          media_limits=state.media_limits, **options)
    speech = _seeded_speech(request.sampling["seed"]) if request.return_audio and "seed" in request.sampling else None
    return session.stream(request.messages, return_audio=request.return_audio, voice=request.voice,
                          max_new_tokens=request.max_new_tokens, speech=speech, **request.sampling)


def _seeded_speech(seed: int):
    """A request's `seed` makes its speech reproducible too: the session seeds the codec's noise
    with it, but the Talker samples its codes with its own (unseeded) sampler."""
    from dataclasses import replace

    from omni.speech import SpeechOptions
    from omni.talker.generate import TalkerOptions

    talker = TalkerOptions()
    return SpeechOptions(talker=replace(talker, sampling=replace(talker.sampling, seed=seed)), seed=seed)


def _on_finished(state: ServerState, slot: Slot):
    def finished(done: ReplyDone | None, error: BaseException | None) -> None:
        slot.release()
        if done is not None:
            tokens = done.usage.text_tokens + done.usage.codec_tokens
            state.stats.record(FinishedReply(done.finish_reason, tokens))
        else:
            state.stats.record(FinishedReply("error", 0))
            if error is not None and not isinstance(error, OmniError):
                log.error("reply failed: %r", error)
    return finished


class _Reply:
    """Turns one reply's events into the streamed or whole OpenAI response."""

    def __init__(self, state: ServerState, request: OmniRequest, clock: RequestClock) -> None:
        self.state = state
        self.request = request
        self.clock = clock
        self.completion_id = new_completion_id()
        self.audio_id = new_audio_id() if request.return_audio else None
        self.created_s = int(time.time())
        self.expires_at_s = self.created_s + state.config.audio_ttl_s
        self.sample_rate_hz: int | None = None

    def _observe(self, event) -> None:
        now_s = time.perf_counter()
        if isinstance(event, TextDelta) and self.clock.first_text_s is None:
            self.clock.first_text_s = now_s
        elif isinstance(event, AudioChunk):
            if self.clock.first_audio_s is None:
                self.clock.first_audio_s = now_s
            self.sample_rate_hz = event.sample_rate_hz

    async def sse(self, pump: ReplyPump) -> AsyncIterator[bytes]:
        writer = ChunkWriter(self.completion_id, self.created_s, self.state.config.model_name)
        audio_id = self.audio_id
        done: ReplyDone | None = None
        try:
            yield writer.chunk({"role": "assistant"} if audio_id else {"role": "assistant", "content": ""})
            async for event in pump.events():
                self._observe(event)
                if isinstance(event, TextDelta):
                    delta = {"audio": {"id": audio_id, "transcript": event.text}} if audio_id else {"content": event.text}
                    yield writer.chunk(delta)
                elif isinstance(event, AudioChunk):
                    yield writer.chunk({"audio": {"id": audio_id, "data": b64(event.pcm16())}})
                elif isinstance(event, ReplyDone):
                    done = event
            if audio_id and done is not None:
                self.state.transcripts.put(audio_id, done.text, self.expires_at_s)
                yield writer.chunk({"audio": {"id": audio_id, "expires_at": self.expires_at_s}})
            yield writer.chunk({}, finish_reason(done), omni=omni_extras(done, self.clock, self.sample_rate_hz))
            if self.request.include_usage and done is not None:
                yield writer.usage_chunk(done.usage)
        except ApiError as exc:
            yield writer.event(exc.body())
        except OmniError as exc:
            yield writer.event(from_omni_error(exc).body())
        except Exception as exc:  # the stream has started: the error goes in-band, OpenAI style
            log.exception("streamed reply failed")
            yield writer.event(error_body(500, f"internal server error ({type(exc).__name__})", "server_error"))
        finally:
            pump.cancel()  # a client that left (or any early exit) stops the generation
        yield writer.done()

    async def whole(self, pump: ReplyPump, request: Request) -> dict:
        watcher = asyncio.create_task(_cancel_on_disconnect(request, pump))
        chunks: list[AudioChunk] = []
        done: ReplyDone | None = None
        try:
            async for event in pump.events():
                self._observe(event)
                if isinstance(event, AudioChunk):
                    chunks.append(event)
                elif isinstance(event, ReplyDone):
                    done = event
        finally:
            watcher.cancel()
            pump.cancel()
        assert done is not None  # the pump ends with ReplyDone or raises
        audio = None
        if self.audio_id is not None:
            audio = {"id": self.audio_id, "data": b64(_encode_audio(chunks, self.request.audio_format)),
                     "expires_at": self.expires_at_s, "transcript": done.text}
            self.state.transcripts.put(self.audio_id, done.text, self.expires_at_s)
        extras = omni_extras(done, self.clock, self.sample_rate_hz)
        return completion_body(self.completion_id, self.created_s, self.state.config.model_name, done, audio, extras)


def _encode_audio(chunks: list[AudioChunk], audio_format: str) -> bytes:
    import numpy as np

    from omni.audio_io import pcm16_bytes, wav_bytes

    samples = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)
    if audio_format == "pcm16":
        return pcm16_bytes(samples)
    return wav_bytes(samples, chunks[0].sample_rate_hz if chunks else 24000)


async def _cancel_on_disconnect(request: Request, pump: ReplyPump) -> None:
    """A non-streamed request whose client leaves stops its generation too."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            pump.cancel()
            return


class _SSEResponse(StreamingResponse):
    """A streaming response that stops its generation however the response ends (client gone
    before the first byte, server shutdown, an error while sending)."""

    def __init__(self, content, on_close, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
            await self.body_iterator.aclose()
