"""The OpenAI-compatible HTTP server: `create_app(loaded, config)` and `serve(...)`.

Stateless HTTP: every request is a fresh OmniSession over the one shared LoadedModel, fed the whole
conversation in `messages`. Routes: POST /v1/chat/completions, GET /v1/models, GET /health,
WebSocket /v1/realtime (OpenAI's Realtime API, stateful per connection: omni.server.realtime),
GET /stats (omni's counters: running, waiting, finished replies by finish reason; with the engine,
its live batch size, queue length, cache memory reserved and prefix-cache hits), GET /metrics (the same
figures for Prometheus: omni.server.metrics). Behind Ray Serve (omni.server.replicas) /health, /stats and
/metrics answer for every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from omni.async_reply import AsyncReply, ReplyOutcome
from omni.encoders.limits import MediaLimits
from omni.engine import EngineOptions, engine_for
from omni.errors import AudioOutputUnavailable, OmniError, UnknownVoiceError
from omni.events import AudioChunk, ReplyDone, TextDelta
from omni.loading import LoadedModel
from omni.server.admission import Admission, FinishedReply, ServerStats, Slot, TranscriptStore
from omni.server.body_limit import BodyLimit
from omni.server.conversion import OmniRequest, RequestLimits, audio_ids, to_omni_request
from omni.server import metrics
from omni.server.errors import ApiError, error_body, from_omni_error, install_error_handlers
from omni.server.media_policy import MediaPolicy
from omni.server.parsing import BodyParser
from omni.server.realtime import RealtimeLimits, install_realtime
from omni.server.responses import (
    ChunkWriter, RequestClock, b64, completion_body, finish_reason, json_bytes, new_audio_id, new_completion_id,
    omni_extras,
)
from omni.session import OmniSession

log = logging.getLogger("omni.server")
MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """The server's limits. The defaults suit a small machine; `omni serve` derives max_concurrent
    from the memory it finds (see omni.server.memory and the README's HTTP server section)."""

    model_name: str
    max_concurrent: int = 4
    max_queue: int = 32
    max_body_bytes: int = 64 * MIB
    media_limits: MediaLimits = field(default_factory=MediaLimits)
    allow_private_remote: bool = False  # let remote media URLs reach loopback/private hosts (tests, trusted nets)
    default_max_tokens: int = 512
    max_tokens_limit: int = 8192
    max_media_items: int = 16  # images, audio clips and videos in one request
    audio_ttl_s: int = 3600  # how long an audio id's transcript is kept for multi-turn requests
    parser_workers: int = 2  # processes decoding large request bodies (see omni.server.parsing)
    # the serving engine's settings (omni.engine); None: every request runs alone in its own thread
    engine: EngineOptions | None = field(default_factory=EngineOptions)
    realtime: RealtimeLimits = field(default_factory=RealtimeLimits)  # the Realtime API's (omni.server.realtime)


class ServerState:
    def __init__(self, loaded: LoadedModel, config: ServerConfig) -> None:
        self.loaded = loaded
        self.config = config
        self.admission = Admission(config.max_concurrent, config.max_queue)
        self.stats = ServerStats()
        self.transcripts = TranscriptStore(config.audio_ttl_s)
        self.policy = MediaPolicy(config.media_limits, config.allow_private_remote)
        self.parser = BodyParser(config.parser_workers)
        self.request_limits = RequestLimits(max_tokens=config.max_tokens_limit,
                                            vocab_size=loaded.config.thinker.text.vocab_size,
                                            max_media_items=config.max_media_items)
        # the loaders repeat the public-address check for every redirect the fetch follows
        self.media_limits = dataclasses.replace(config.media_limits,
                                                public_remote_only=not config.allow_private_remote)
        self.created_s = int(time.time())
        self.engine = engine_for(loaded, config.engine) if config.engine is not None else None
        # behind Ray Serve (omni.server.replicas): the deployment's transcripts and its replicas' figures
        self.shared_transcripts = None
        self.cluster = None

    async def lookup_transcripts(self, ids: list[str], now_s: float) -> dict[str, str]:
        """Transcripts of the cited audio ids this server (or, behind Ray, any replica) produced."""
        found = {audio_id: transcript for audio_id in ids
                 if (transcript := self.transcripts.get(audio_id, now_s)) is not None}
        missing = [audio_id for audio_id in ids if audio_id not in found]
        if missing and self.shared_transcripts is not None:
            found.update(await self.shared_transcripts.get_many(missing))
        return found

    def remember_transcript(self, audio_id: str, transcript: str, expires_at_s: float) -> None:
        self.transcripts.put(audio_id, transcript, expires_at_s, time.time())
        if self.shared_transcripts is not None:
            self.shared_transcripts.put(audio_id, transcript, expires_at_s)


def create_app(loaded: LoadedModel, config: ServerConfig) -> FastAPI:
    state = ServerState(loaded, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.parser.start()
        try:
            yield
        finally:
            await asyncio.to_thread(state.parser.close)

    app = FastAPI(title="omni", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.omni = state
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_body_bytes=config.max_body_bytes)

    app.state.realtime = install_realtime(app, state, config.realtime)  # WebSocket /v1/realtime

    @app.get("/health")
    async def health() -> dict:
        if state.cluster is not None:
            from omni.server.replicas import cluster_health

            return {"model": config.model_name, **await cluster_health(state.cluster)}
        return {"status": "ok", "model": config.model_name}

    async def stats_body() -> dict:
        body = {"running": state.admission.running, "waiting": state.admission.waiting, **state.stats.snapshot(),
                "realtime_sessions": len(app.state.realtime.connections)}
        if state.engine is not None:
            body["engine"] = state.engine.stats()
        return body

    app.state.stats_body = stats_body

    @app.get("/stats")
    async def stats() -> dict:
        """This server's figures; behind Ray Serve also every replica's (`cluster`)."""
        body = await stats_body()
        if state.cluster is not None:
            from omni.server.replicas import cluster_stats

            body = await cluster_stats(body, state.cluster)
        return body

    def metric_families(replica: str | None = None) -> list:
        return metrics.families(state, replica, realtime_sessions=len(app.state.realtime.connections))

    app.state.metric_families = metric_families

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        if state.cluster is not None:
            from omni.server.replicas import cluster_metrics

            return Response(await cluster_metrics(state.cluster), media_type=metrics.CONTENT_TYPE)
        return Response(metrics.text(metric_families()), media_type=metrics.CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [
            {"id": config.model_name, "object": "model", "created": state.created_s, "owned_by": "omni"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        clock = RequestClock(received_s=time.perf_counter())
        parsed = await state.parser.decode(await request.body())
        if parsed.model is not None and parsed.model != config.model_name:
            raise ApiError(404, f"model {parsed.model!r} does not exist; this server serves {config.model_name!r}",
                           code="model_not_found", param="model")
        now_s = time.time()
        transcripts = await state.lookup_transcripts(audio_ids(parsed), now_s)
        # media policy checks resolve host names: off the loop
        omni_request = await asyncio.to_thread(to_omni_request, parsed, state.policy, transcripts,
                                               state.request_limits)
        _check_audio_output(loaded, omni_request)
        slot = await state.admission.acquire()
        clock.admitted_s = time.perf_counter()
        run = _start_reply(state, omni_request, slot)
        try:
            await run.started()  # media decoding and the encoders: bad media is a 400 before any byte is sent
        except BaseException:
            run.cancel()  # the client left while it started: stop it (the slot comes back when it stopped)
            raise
        reply = _Reply(state, omni_request, clock)
        if omni_request.stream:
            return _SSEResponse(reply.sse(run), on_close=run.cancel, media_type="text/event-stream",
                                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return Response(await reply.whole(run, request), media_type="application/json")

    return app


def _check_audio_output(loaded: LoadedModel, request: OmniRequest) -> None:
    if request.return_audio and not loaded.audio_output:
        raise AudioOutputUnavailable("this server's model has no audio output (talker, token2wav or speakers are "
                                     "missing); ask for modalities [\"text\"]")
    if request.return_audio and request.voice is not None and request.voice not in loaded.voices:
        raise UnknownVoiceError(f"voice {request.voice!r} is not one of this model's voices: "
                                f"{', '.join(loaded.voices)}")


def _start_reply(state: ServerState, request: OmniRequest, slot: Slot) -> AsyncReply:
    """The reply runs in its own worker thread: media decoding and the encoders happen there, inside
    `stream()`. The slot is given back once that thread has stopped, however the reply ended."""
    options = {"system_prompt": request.system_prompt} if request.system_prompt is not None else {}
    try:
        session = OmniSession(state.loaded, max_new_tokens=state.config.default_max_tokens,
                              media_limits=state.media_limits, engine=state.engine or False,
                              reuse_prefix=state.engine is not None, **options)
    except BaseException:
        slot.release()
        raise
    speech = _seeded_speech(request.sampling["seed"]) if request.return_audio and "seed" in request.sampling else None
    start = functools.partial(session.stream, request.messages, return_audio=request.return_audio,
                              voice=request.voice, max_new_tokens=request.max_new_tokens, speech=speech,
                              stop=request.stop, **request.sampling)
    return AsyncReply(start, cancel_start=session.cancel, on_finished=_on_finished(state, slot),
                      thread_name="omni-server-reply")


def _seeded_speech(seed: int):
    """A request's `seed` makes its speech reproducible too: the session seeds the codec's noise
    with it, but the Talker samples its codes with its own (unseeded) sampler."""
    from dataclasses import replace

    from omni.speech import SpeechOptions
    from omni.talker.generate import TalkerOptions

    talker = TalkerOptions()
    return SpeechOptions(talker=replace(talker, sampling=replace(talker.sampling, seed=seed)), seed=seed)


def _on_finished(state: ServerState, slot: Slot):
    def finished(outcome: ReplyOutcome) -> None:
        slot.release()
        if not outcome.started:
            return  # refused input (an OmniError answered as 4xx), or a failure reported by the handler
        if outcome.done is not None:
            tokens = outcome.done.usage.text_tokens + outcome.done.usage.codec_tokens
            state.stats.record(FinishedReply(outcome.done.finish_reason, tokens, outcome.done.timings.first_audio_s))
        else:
            state.stats.record(FinishedReply("error", 0))
            if outcome.error is not None and not isinstance(outcome.error, OmniError):
                log.error("reply failed: %r", outcome.error)
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

    async def sse(self, run: AsyncReply) -> AsyncIterator[bytes]:
        writer = ChunkWriter(self.completion_id, self.created_s, self.state.config.model_name)
        audio_id = self.audio_id
        done: ReplyDone | None = None
        try:
            yield writer.chunk({"role": "assistant"} if audio_id else {"role": "assistant", "content": ""})
            async for event in run.events():
                self._observe(event)
                if isinstance(event, TextDelta):
                    delta = {"audio": {"id": audio_id, "transcript": event.text}} if audio_id else {"content": event.text}
                    yield writer.chunk(delta)
                elif isinstance(event, AudioChunk):
                    yield writer.chunk({"audio": {"id": audio_id, "data": b64(event.pcm16())}})
                elif isinstance(event, ReplyDone):
                    done = event
            if audio_id and done is not None:
                self.state.remember_transcript(audio_id, done.text, self.expires_at_s)
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
            run.cancel()  # a client that left (or any early exit) stops the generation
        yield writer.done()

    async def whole(self, run: AsyncReply, request: Request) -> bytes:
        """The whole reply's JSON body."""
        watcher = asyncio.create_task(_cancel_on_disconnect(request, run))
        chunks: list[AudioChunk] = []
        done: ReplyDone | None = None
        try:
            async for event in run.events():
                self._observe(event)
                if isinstance(event, AudioChunk):
                    chunks.append(event)
                elif isinstance(event, ReplyDone):
                    done = event
        finally:
            watcher.cancel()
            run.cancel()
        assert done is not None  # the events end with ReplyDone or raise
        if self.audio_id is not None:
            self.state.remember_transcript(self.audio_id, done.text, self.expires_at_s)
        extras = omni_extras(done, self.clock, self.sample_rate_hz)
        # A spoken reply's WAV, its base64 and the JSON around it are megabytes: built in a thread (in
        # slices, so the loop gets the GIL between them) rather than on the event loop.
        return await asyncio.to_thread(self._whole_body, done, chunks, extras)

    def _whole_body(self, done: ReplyDone, chunks: list[AudioChunk], extras: dict) -> bytes:
        audio = None
        if self.audio_id is not None:
            audio = {"id": self.audio_id, "data": b64(_encode_audio(chunks, self.request.audio_format)),
                     "expires_at": self.expires_at_s, "transcript": done.text}
        return json_bytes(completion_body(self.completion_id, self.created_s, self.state.config.model_name, done,
                                          audio, extras))


def _encode_audio(chunks: list[AudioChunk], audio_format: str) -> bytes:
    import numpy as np

    from omni.audio_io import pcm16_bytes, wav_bytes

    samples = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)
    if audio_format == "pcm16":
        return pcm16_bytes(samples)
    return wav_bytes(samples, chunks[0].sample_rate_hz if chunks else 24000)


async def _cancel_on_disconnect(request: Request, run: AsyncReply) -> None:
    """A non-streamed request whose client leaves stops its generation too."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            run.cancel()
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
