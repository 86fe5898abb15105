"""OmniSession: a conversation with a Qwen2.5-Omni model, streamed.

A session owns one conversation: its messages, the Thinker's KV cache holding every token fed so far,
and the rope position the next token takes. A new turn is appended to that cache (the earlier turns
are never encoded again). Many sessions can share one loaded model; each session runs one reply at a
time.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from omni.encoders.limits import MediaLimits
from omni.chat import AUDIO_SYSTEM_PROMPT, validate_messages
from omni.errors import InputError
from omni.events import AudioChunk, Event, ReplyDone
from omni.kv_cache import KVCache
from omni.loading import LoadedModel, load_model
from omni.pipeline import ReplyOptions, ReplyRecord, run_reply
from omni.sampling import SamplingParams
from omni.speech import SpeechOptions, TalkerContext, resolve_voice
from omni.prompt import encode_media, merge_prompt, prepare_prompt
from omni.thinker.generate import ThinkerPrompt

IM_END = "<|im_end|>"


@dataclass
class ConversationState:
    """Everything a session remembers between turns; `reset()` forgets it."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    cache: KVCache | None = None
    fed_token_ids: list[int] = field(default_factory=list)  # every token the cache holds, in order
    pending_token_ids: list[int] = field(default_factory=list)  # to feed before the next turn
    next_position: int = 0
    talker_context: TalkerContext | None = None  # the conversation as the Talker reads it

    def reset(self) -> None:
        self.messages.clear()
        self.cache = None
        self.fed_token_ids.clear()
        self.pending_token_ids.clear()
        self.next_position = 0
        self.talker_context = None


@dataclass(frozen=True)
class Reply:
    text: str
    audio: np.ndarray | None  # float32 mono, or None for a text-only reply
    sample_rate_hz: int | None
    done: ReplyDone


class ReplyStream:
    """Iterator over one reply's events. Closing it (or `session.cancel()`) stops generation within
    one step; the partial reply stays in the conversation."""

    def __init__(self, events: Iterator[Event], cancel: threading.Event, on_close) -> None:
        self._events = events
        self._cancel = cancel
        self._on_close = on_close
        self._closed = False

    def __iter__(self) -> ReplyStream:
        return self

    def __next__(self) -> Event:
        if self._closed:
            raise StopIteration
        try:
            return next(self._events)
        except BaseException:
            self._finish()
            raise

    def cancel(self) -> None:
        self._cancel.set()

    def close(self) -> None:
        """Stop the reply (if it is still running) and keep what was generated."""
        if self._closed:
            return
        self._cancel.set()
        for _ in self._events:  # let the pipeline stop at its next step and record the partial reply
            pass
        self._finish()

    def _finish(self) -> None:
        if not self._closed:
            self._closed = True
            self._on_close()

    def __enter__(self) -> ReplyStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()  # an abandoned stream (a `break` out of the loop) still ends its turn


class OmniSession:
    def __init__(
        self,
        model: LoadedModel,
        voice: str | None = None,
        system_prompt: str | None = AUDIO_SYSTEM_PROMPT,
        max_new_tokens: int = 512,
        sampling: SamplingParams | None = None,
        use_audio_in_video: bool = False,
        media_limits: MediaLimits | None = None,
    ) -> None:
        self.model = model
        self.use_audio_in_video = use_audio_in_video
        self.media_limits = media_limits or MediaLimits()
        self.system_prompt = system_prompt
        self.max_new_tokens = max_new_tokens
        defaults = model.generation
        self.sampling = (sampling or SamplingParams(
            do_sample=defaults.do_sample, temperature=defaults.temperature, top_k=defaults.top_k,
            top_p=defaults.top_p, repetition_penalty=defaults.repetition_penalty,
        )).validated()
        if voice is not None and model.audio_output:
            resolve_voice(model, voice)
        self.voice = voice
        self.state = ConversationState()
        self._lock = threading.Lock()
        self._active_cancel: threading.Event | None = None

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "auto",
        audio_output: bool | None = None,
        **session_options: Any,
    ) -> OmniSession:
        return cls(load_model(path_or_hub_id, dtype=dtype, device=device, audio_output=audio_output), **session_options)

    # ------------------------------------------------------------------------------------------
    # Conversation control

    @property
    def voices(self) -> list[str]:
        return self.model.voices

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.state.messages)

    def reset(self) -> None:
        """Forget the conversation (cancelling a reply in progress first)."""
        self.cancel()
        with self._lock:
            self.state.reset()

    def cancel(self) -> None:
        """Stop the reply in progress, if any, within one step."""
        cancel = self._active_cancel
        if cancel is not None:
            cancel.set()

    # ------------------------------------------------------------------------------------------
    # Replies

    def stream(
        self,
        message: str | Mapping[str, Any] | Sequence[Mapping[str, Any]],
        return_audio: bool | None = None,
        voice: str | None = None,
        max_new_tokens: int | None = None,
        speech: SpeechOptions | None = None,
        **sampling_overrides: Any,
    ) -> ReplyStream:
        """Start a reply to `message` (a string, one message dict, or a list of messages) and return
        an iterator of TextDelta / AudioChunk events ending with one ReplyDone.

        return_audio: speak the reply (None: when the model can). voice: a name from `voices`.
        speech: Talker sampling, codec chunking, seed / initial noise (defaults: the reference's).
        Other keywords override the Thinker's sampling (temperature, top_k, top_p, seed, ...)."""
        started = time.perf_counter()
        new_messages = _as_messages(message)
        sampling = self.sampling.with_overrides(**sampling_overrides) if sampling_overrides else self.sampling
        if return_audio is None:
            return_audio = self.model.audio_output
        speech_options = None
        if return_audio:
            speech_options = replace(speech or SpeechOptions(), voice=voice or (speech.voice if speech else None) or self.voice)
            if sampling.seed is not None:
                # one seed makes the whole reply reproducible: codec noise and Talker sampling too
                talker = speech_options.talker
                if speech_options.seed is None:
                    speech_options = replace(speech_options, seed=sampling.seed)
                if talker.sampling.seed is None:
                    speech_options = replace(speech_options, talker=replace(
                        talker, sampling=replace(talker.sampling, seed=sampling.seed)))
            resolve_voice(self.model, speech_options.voice)  # a bad voice fails here, before any work
        options = ReplyOptions(
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            sampling=sampling,
            speech=speech_options,
        )
        if options.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {options.max_new_tokens}")
        if not self._lock.acquire(blocking=False):
            raise InputError("this session is already generating a reply; cancel it or wait for it to finish")
        try:
            # A cancel from now on counts, even while the media are still being read and encoded.
            cancel = threading.Event()
            self._active_cancel = cancel
            clock: dict[str, float] = {}
            prompt, prompt_ids = self._next_prompt(new_messages, clock)
            cache = self._cache_for(len(prompt_ids) + options.max_new_tokens)
            cache_length_before = cache.length
            record = ReplyRecord()
            events = run_reply(self.model, prompt, options, cache, cancel, record, started_at=started, stage_s=clock,
                               talker_history=self.state.talker_context)
        except BaseException:
            self._active_cancel = None
            self._lock.release()
            raise

        def finish() -> None:
            try:
                self._commit_turn(new_messages, prompt, prompt_ids, record, cache, cache_length_before)
            finally:
                self._active_cancel = None
                self._lock.release()

        return ReplyStream(events, cancel, finish)

    def reply(self, message, **options: Any) -> Reply:
        """Generate the whole reply and return its text (and audio)."""
        chunks: list[AudioChunk] = []
        done = None
        with self.stream(message, **options) as events:
            for event in events:
                if isinstance(event, AudioChunk):
                    chunks.append(event)
                elif isinstance(event, ReplyDone):
                    done = event
        assert done is not None
        audio = np.concatenate([c.samples for c in chunks]) if chunks else None
        return Reply(done.text, audio, chunks[0].sample_rate_hz if chunks else None, done)

    async def astream(self, message, **options: Any) -> AsyncIterator[Event]:
        """Async variant of `stream`: generation runs in a worker thread; leaving the loop early
        (break, aclose, task cancellation) cancels the reply."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(maxsize=64)
        finished = object()
        # Starting a reply reads and encodes the media: do it off the event loop too. If the caller
        # gives up meanwhile, the stream that still starts is closed at once (freeing the session).
        starting = loop.run_in_executor(None, functools.partial(self.stream, message, **options))
        try:
            stream = await asyncio.shield(starting)
        except asyncio.CancelledError:
            starting.add_done_callback(lambda f: f.cancelled() or f.exception() or f.result().close())
            raise

        def produce() -> None:
            try:
                for event in stream:
                    asyncio.run_coroutine_threadsafe(queue.put(event), loop).result()
            except BaseException as exc:  # handed to the consumer
                asyncio.run_coroutine_threadsafe(queue.put(exc), loop).result()
            finally:
                stream.close()
                asyncio.run_coroutine_threadsafe(queue.put(finished), loop)

        worker = threading.Thread(target=produce, name="omni-reply", daemon=True)
        worker.start()
        try:
            while True:
                item = await queue.get()
                if item is finished:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stream.cancel()
            while worker.is_alive():
                # drain so the producer is never stuck on a full queue while it stops
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    await asyncio.sleep(0.005)

    # ------------------------------------------------------------------------------------------
    # Internals

    def _next_prompt(self, new_messages: list[dict[str, Any]], clock: dict[str, float] | None = None
                     ) -> tuple[ThinkerPrompt, list[int]]:
        """The Thinker input of a new turn: the whole rendered conversation on the first turn; later,
        the tokens the cache has not consumed, "\n" and the new messages, at continuing positions.
        Returns the prompt and its token ids (placeholders expanded)."""
        state = self.state
        continuing = state.cache is not None
        loaded = self.model
        thinker = loaded.model.thinker
        timer = time.perf_counter()
        prepared = prepare_prompt(
            loaded.tokenizer, thinker.config, [new_messages],
            pad_token_id=loaded.generation.pad_token_id,
            system_prompt=self.system_prompt,
            use_audio_in_video=self.use_audio_in_video,
            limits=self.media_limits,
            continuation=continuing,
            prefix="\n" if continuing else "",
            prefix_ids=state.pending_token_ids if continuing else (),
            start_position=state.next_position,
        )
        media_done = time.perf_counter()
        prompt = merge_prompt(thinker, prepared, encode_media(thinker, prepared.media))
        if clock is not None:
            clock["media"] = media_done - timer
            clock["encoders"] = time.perf_counter() - media_done
        return prompt, prepared.input_ids[0].tolist()

    def _cache_for(self, new_tokens: int) -> KVCache:
        state = self.state
        limit = self.model.config.thinker.text.max_position_embeddings
        needed = (state.cache.length if state.cache is not None else 0) + new_tokens
        if state.next_position + new_tokens > limit:
            raise InputError(
                f"the conversation would reach position {state.next_position + new_tokens}, past the model's "
                f"limit of {limit}; reset the session or ask for fewer new tokens"
            )
        if state.cache is None:
            state.cache = self.model.model.thinker.model.new_cache(1, max(256, needed))
        return state.cache

    def _commit_turn(self, new_messages, prompt: ThinkerPrompt, prompt_ids, record: ReplyRecord, cache, length_before) -> None:
        """Record the finished (or cancelled) turn so the next one continues from it."""
        state = self.state
        if cache.length < length_before + len(prompt_ids):
            return  # cancelled before the prompt was read: the turn never happened
        stop_ids = set(self.model.generation.eos_token_ids)
        im_end = self.model.tokenizer.token_id(IM_END)
        kept = list(record.fed_token_ids)
        # The last sampled token was never fed. A stop token becomes the turn's <|im_end|>; any other
        # (length limit, cancellation) was shown to the user and is fed before it.
        kept_tail = [t for t in record.sampled_token_ids[-1:] if t not in stop_ids]
        cache.truncate(length_before + len(prompt_ids) + len(kept))
        state.fed_token_ids.extend(prompt_ids + kept)
        state.pending_token_ids = kept_tail + [im_end]
        state.next_position = int(prompt.next_position[0]) + len(kept)
        state.messages.extend(new_messages)
        state.messages.append({"role": "assistant", "content": record.text})
        state.talker_context = record.talker_context


def _as_messages(message: Any) -> list[dict[str, Any]]:
    if isinstance(message, str):
        if not message.strip():
            raise InputError("the message is empty")
        return [{"role": "user", "content": message}]
    return validate_messages(message)
