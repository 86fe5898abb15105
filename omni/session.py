"""OmniSession: a conversation with a Qwen2.5-Omni model, streamed.

A session owns one conversation: its messages, the Thinker's KV cache holding every token fed so far,
and the rope position the next token takes. A new turn is appended to that cache (the earlier turns
are never encoded again). Many sessions can share one loaded model; each session runs one reply at a
time.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from omni.async_reply import AsyncReply
from omni.encoders.limits import MediaLimits
from omni.chat import AUDIO_SYSTEM_PROMPT, validate_messages
from omni.errors import ContextLengthError, InputError
from omni.events import AudioChunk, Event, ReplyDone
from omni.kv_cache import KVCache
from omni.loading import LoadedModel, load_model
from omni.memory_stats import StagePeaks, probe_for
from omni.pipeline import ReplyOptions, ReplyRecord, run_reply, text_tokens_heard
from omni.reply_stream import OpenReply, ReplyStream
from omni.sampling import SamplingParams
from omni.speech import SpeechOptions, TalkerContext, codec_timing, resolve_voice
from omni.stop import stop_strings
from omni.engine import Engine, PrefixCache, engine_for
from omni.prompt import (
    encode_media, media_safe_length, media_spans, merge_prompt, prepare_prompt, prompt_key, suffix_prompt,
)
from omni.thinker.generate import ThinkerPrompt

IM_END = "<|im_end|>"
MIN_CACHE_TOKENS = 256  # a session's first cache, and the least it shrinks to
SHRINK_ABOVE_RESERVE = 4  # see OmniSession._fit_cache


@dataclass
class ConversationState:
    """Everything a session remembers between turns; `reset()` forgets it."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    cache: KVCache | None = None
    fed_token_ids: list[int] = field(default_factory=list)  # every token the cache holds, in order
    pending_token_ids: list[int] = field(default_factory=list)  # to feed before the next turn
    next_position: int = 0
    talker_context: TalkerContext | None = None  # the conversation as the Talker reads it
    last_spoken: SpokenReply | None = None  # the last turn's reply, when it was spoken (for truncate_reply)

    def reset(self) -> None:
        self.messages.clear()
        self.cache = None
        self.fed_token_ids.clear()
        self.pending_token_ids.clear()
        self.next_position = 0
        self.talker_context = None
        self.last_spoken = None


@dataclass
class SpokenReply:
    """The last turn's spoken reply, as `OmniSession.truncate_reply` needs it."""

    token_ids: list[int]  # the reply's tokens as generated (stop tokens excluded)
    kept_tokens: int  # of those, the ones the conversation holds now
    fed_before: int  # tokens the cache held before the reply's first one
    position_before: int  # rope position of the reply's first token
    talker_before: int  # the Talker context's length before the reply's first token
    codec_tokens: int  # the speech of token_ids (after a barge-in: the audio handed out)
    speech_complete: bool  # the Talker ended the utterance itself (see pipeline.text_tokens_heard)


@dataclass
class TurnInput:
    """A turn ready for the Thinker: its prompt and the cache it continues."""

    prompt: ThinkerPrompt
    prompt_ids: list[int]  # the prompt's token ids (placeholders expanded)
    cache: KVCache
    length_before: int  # the cache's length before the prompt
    talker_history: TalkerContext | None  # the Talker's view of what the cache holds
    observed_ids: torch.Tensor | None = None  # what the repetition penalty sees first (None: the prompt)
    key_ids: list[int] | None = None  # the whole prompt's prefix-cache key (a stateless first turn)
    prefix_ids: list[int] = field(default_factory=list)  # tokens a prefix-cache hit put in the cache


@dataclass(frozen=True)
class Reply:
    text: str
    audio: np.ndarray | None  # float32 mono, or None for a text-only reply
    sample_rate_hz: int | None
    done: ReplyDone


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
        engine: Engine | bool = True,
        reuse_prefix: bool = False,
    ) -> None:
        """engine: True (the default) runs replies on the model's shared serving engine, which
        batches the steps of every session's live reply (omni.engine); an `Engine` runs them on that
        one; False runs each reply alone in the thread that iterates it (the old path, kept for
        comparison). reuse_prefix: a stateless caller that sends the whole conversation every time
        (the HTTP server): the first turn reuses the longest matching conversation the engine's
        prefix cache holds, and the finished turn is kept there."""
        self.model = model
        if not isinstance(engine, (bool, Engine)):
            raise InputError(f"engine must be True, False or an Engine, got {engine!r}")
        self._engine_choice = engine
        self.reuse_prefix = reuse_prefix
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
        self._lock = threading.Lock()  # held while a reply is open: from stream() to the end of its turn
        # Held only for short bookkeeping (never while generating): who owns `state`, which reply is
        # open. reset() takes it, not `_lock`, so it never waits for a reply.
        self._guard = threading.Lock()
        self._active_cancel: threading.Event | None = None
        self._open: OpenReply | None = None

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "auto",
        audio_output: bool | None = None,
        quantize: str | None = None,
        offload: str | None = None,
        **session_options: Any,
    ) -> OmniSession:
        """`quantize`: None, "int8" or "int4[:GROUP]" (the Thinker's decoder linears, see omni.quant).
        `offload`: None, "encoders", "talker" or "all" (stages kept in host memory while idle, see
        omni.offload)."""
        return cls(load_model(path_or_hub_id, dtype=dtype, device=device, audio_output=audio_output, quantize=quantize,
                              offload=offload),
                   **session_options)

    # ------------------------------------------------------------------------------------------
    # Conversation control

    @property
    def voices(self) -> list[str]:
        return self.model.voices

    @property
    def messages(self) -> list[dict[str, Any]]:
        self._settle_abandoned()
        return list(self.state.messages)

    def reset(self) -> None:
        """Forget the conversation, at once, from any thread (the one iterating a reply included).

        A reply in progress is cancelled and belongs to the forgotten conversation: it ends within
        one step, and its turn is dropped rather than recorded. Until its stream has ended (the
        iterating loop's next step, or `close()`), a new `stream()` still finds the session busy."""
        self._settle_abandoned()
        with self._guard:
            forgotten, self.state = self.state, ConversationState()
            if self._active_cancel is not None:
                self._active_cancel.set()  # that reply frees `forgotten`'s cache when it ends
            elif forgotten.cache is not None:
                forgotten.cache.free()

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
        stop: str | Sequence[str] | None = None,
        **sampling_overrides: Any,
    ) -> ReplyStream:
        """Start a reply to `message` (a string, one message dict, or a list of messages) and return
        an iterator of TextDelta / AudioChunk events ending with one ReplyDone.

        return_audio: speak the reply (None: when the model can). voice: a name from `voices`.
        speech: Talker sampling, codec chunking, seed / initial noise (defaults: the reference's).
        stop: a string or up to 4 strings; the reply ends before the first one its text would hold
        (finish_reason "stop"; streamed text never shows any part of it, speech does not say it).
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
        if max_new_tokens is not None and (type(max_new_tokens) is not int or max_new_tokens < 1):
            raise InputError(f"max_new_tokens must be a whole number >= 1 (or None for the session's "
                             f"{self.max_new_tokens}), got {max_new_tokens!r}")
        options = ReplyOptions(
            max_new_tokens=max_new_tokens if max_new_tokens is not None else self.max_new_tokens,
            sampling=sampling,
            speech=speech_options,
            stop=stop_strings(stop),
        )
        self._settle_abandoned()
        with self._guard:
            if not self._lock.acquire(blocking=False):
                raise InputError("this session is already generating a reply; cancel it or wait for it to finish")
            # The turn belongs to this conversation even if reset() swaps in a new one meanwhile. A
            # cancel from now on counts, even while the media are still being read and encoded.
            state = self.state
            cancel = threading.Event()
            self._active_cancel = cancel
        try:
            clock: dict[str, float] = {}
            memory = StagePeaks()
            # reads `self.state`: a reset() meanwhile only swaps in a fresh one and cancels this reply
            # before its first step, and the turn is dropped, so a prompt made from either is harmless
            start_turn = functools.partial(self._start_turn, new_messages, clock, state, options.max_new_tokens,
                                           memory)
            record = ReplyRecord()
            engine = self.engine
            if engine is None:
                turn = start_turn()
                events = _unbatched_events(
                    self.model, memory, options.speech is not None,
                    run_reply(self.model, turn.prompt, options, turn.cache, cancel, record, started_at=started,
                              stage_s=clock, talker_history=turn.talker_history))
            else:
                turn = engine.prepare(start_turn)  # media and encoders in the engine's worker pool
                events = engine.submit(turn.prompt, options, turn.cache, cancel, record, started_at=started,
                                       stage_s=clock, talker_history=turn.talker_history,
                                       observed_ids=turn.observed_ids, cached_prompt_tokens=len(turn.prefix_ids),
                                       memory=memory)
        except BaseException:
            with self._guard:
                self._active_cancel = None
                self._lock.release()
            raise

        def finish() -> None:
            with self._guard:
                try:
                    if state is self.state:
                        self._commit_turn(new_messages, turn, record, state)
                        self._keep_prefix(turn, state)
                    else:  # reset() forgot this conversation while the reply ran
                        turn.cache.free()
                finally:
                    self._active_cancel = None
                    self._open = None
                    self._lock.release()

        self._open = OpenReply(events, cancel, finish)
        return ReplyStream(self._open)

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
        """Async variant of `stream`: the reply starts (media decoding, encoders) and runs in a worker
        thread; leaving the loop early (break, aclose, task cancellation) cancels the reply, and the
        iterator ends only once the worker has stopped, so the session is free for the next turn."""
        reply = AsyncReply(functools.partial(self.stream, message, **options), cancel_start=self.cancel)
        try:
            async for event in reply.events():
                yield event
        finally:
            reply.cancel()
            await reply.stopped()

    # ------------------------------------------------------------------------------------------
    # Internals

    @property
    def engine(self) -> Engine | None:
        """The engine this session's replies run on (None: each runs alone in its caller's thread)."""
        choice = self._engine_choice
        if choice is True:
            return engine_for(self.model)
        return choice or None

    def _start_turn(self, new_messages, clock: dict[str, float], state: ConversationState, max_new_tokens: int,
                    memory: StagePeaks | None = None) -> TurnInput:
        """The new turn's prompt and the cache it continues (media read and encoders run here)."""
        engine = self.engine
        if self.reuse_prefix and state.cache is None and engine is not None and engine.prefix_cache.enabled:
            return self._start_from_prefix(new_messages, clock, state, max_new_tokens, engine.prefix_cache, memory)
        if memory is None:
            prompt, prompt_ids = self._next_prompt(new_messages, clock)
        else:
            # measured with the media's reading (host memory it needs too); kept only when there were media
            encoders = StagePeaks()
            with probe_for(self.model.device).measure_stage("encoders", encoders):
                prompt, prompt_ids = self._next_prompt(new_messages, clock)
            if prompt.multimodal_mask is not None:
                memory.merge(encoders)
        cache = self._cache_for(len(prompt_ids) + max_new_tokens, state)
        return TurnInput(prompt, prompt_ids, cache, cache.length, state.talker_context)

    def _start_from_prefix(self, new_messages, clock, state: ConversationState, max_new_tokens: int,
                           prefix_cache: PrefixCache, memory: StagePeaks | None = None) -> TurnInput:
        """A first turn that may carry a whole earlier conversation: reuse the longest prefix the
        prefix cache holds, and prefill and encode only what follows it."""
        loaded = self.model
        thinker = loaded.model.thinker
        timer = time.perf_counter()
        prepared = prepare_prompt(loaded.tokenizer, thinker.config, [new_messages],
                                  pad_token_id=loaded.generation.pad_token_id, system_prompt=self.system_prompt,
                                  use_audio_in_video=self.use_audio_in_video, limits=self.media_limits)
        media_done = time.perf_counter()
        spans = media_spans(prepared, thinker.config)
        key = prompt_key(prepared, spans, thinker.config)
        ids = prepared.input_ids[0].tolist()
        self._check_context(state, len(ids) + max_new_tokens)
        hit = prefix_cache.lookup(key)
        reused = media_safe_length(min(hit.length, len(ids) - 1), spans) if hit is not None else 0
        prefix_cache.record(reused)
        if reused:
            prompt = suffix_prompt(thinker, prepared, reused, spans)
            state.cache = hit.entry.cache.copy_prefix(reused, max(MIN_CACHE_TOKENS, len(ids) + max_new_tokens))
            talker_history = hit.entry.talker_prefix(reused)
        else:
            prompt = merge_prompt(thinker, prepared, self._encode(prepared.media, memory))
            self._cache_for(len(ids) + max_new_tokens, state)
            talker_history = None
        clock["media"] = media_done - timer
        clock["encoders"] = time.perf_counter() - media_done
        return TurnInput(prompt, ids[reused:], state.cache, reused, talker_history, observed_ids=prepared.input_ids,
                         key_ids=key, prefix_ids=ids[:reused])

    def _keep_prefix(self, turn: TurnInput, state: ConversationState) -> None:
        """After a stateless first turn: keep the conversation in the engine's prefix cache."""
        engine = self.engine
        if turn.key_ids is None or engine is None or state.cache is None or not state.fed_token_ids:
            return
        key = turn.key_ids + state.fed_token_ids[len(turn.key_ids):]
        engine.prefix_cache.insert(key, state.cache, state.talker_context)

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
            history=state.messages if continuing else None,
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

    def _encode(self, media, memory: StagePeaks | None):
        """The encoders over the prompt's media (their peak memory measured when there are any)."""
        if memory is None or (media.images is None and media.videos is None and media.audio is None):
            return encode_media(self.model.model.thinker, media)
        with probe_for(self.model.device).measure_stage("encoders", memory):
            return encode_media(self.model.model.thinker, media)

    def _cache_for(self, new_tokens: int, state: ConversationState) -> KVCache:
        needed = (state.cache.length if state.cache is not None else 0) + new_tokens
        self._check_context(state, new_tokens)
        if state.cache is None:
            state.cache = self.model.model.thinker.model.new_cache(1, max(MIN_CACHE_TOKENS, needed))
        return state.cache

    def _check_context(self, state: ConversationState, new_tokens: int) -> None:
        limit = self.model.config.thinker.text.max_position_embeddings
        if state.next_position + new_tokens > limit:
            raise ContextLengthError(
                f"the conversation would reach position {state.next_position + new_tokens}, past the model's "
                f"limit of {limit}; reset the session or ask for fewer new tokens",
                needed_tokens=state.next_position + new_tokens, limit_tokens=limit,
            )

    def _commit_turn(self, new_messages, turn: TurnInput, record: ReplyRecord, state: ConversationState) -> None:
        """Record the finished (or cancelled) turn so the next one continues from it."""
        prompt, prompt_ids, cache, length_before = turn.prompt, turn.prompt_ids, turn.cache, turn.length_before
        if cache.length < length_before + len(prompt_ids):
            if turn.prefix_ids:  # the cache came from the prefix cache for this turn only
                cache.free()
                state.cache = None
            return  # cancelled before the prompt was read: the turn never happened
        stop_ids = set(self.model.generation.eos_token_ids)
        im_end = self.model.tokenizer.token_id(IM_END)
        kept = list(record.fed_token_ids)
        # The sampled tokens past the fed ones (the last sampled token; after a stop string, the
        # re-encoded end of the shown text) were never fed. A stop token becomes the turn's
        # <|im_end|>; any other (length limit, cancellation) was shown to the user and is fed before it.
        kept_tail = [t for t in record.sampled_token_ids[len(kept):] if t not in stop_ids]
        cache.truncate(length_before + len(prompt_ids) + len(kept))
        state.fed_token_ids.extend(turn.prefix_ids + prompt_ids + kept)
        state.pending_token_ids = kept_tail + [im_end]
        state.next_position = int(prompt.next_position[0]) + len(kept)
        state.messages.extend(new_messages)
        state.messages.append({"role": "assistant", "content": record.text})
        state.talker_context = record.talker_context
        state.last_spoken = None
        if record.codec_codes and record.talker_context is not None:
            reply_ids = kept + kept_tail
            state.last_spoken = SpokenReply(
                token_ids=reply_ids, kept_tokens=len(reply_ids), fed_before=len(state.fed_token_ids) - len(kept),
                position_before=int(prompt.next_position[0]), talker_before=record.talker_context.length - len(kept),
                codec_tokens=len(record.codec_codes) if record.heard_codes is None else record.heard_codes,
                speech_complete=record.speech_complete)
        self._fit_cache(cache)

    def truncate_reply(self, heard_s: float) -> str:
        """Cut the conversation's last reply, a spoken one, to what its listener heard: its first
        `heard_s` seconds of audio (a client that stopped playing it, the Realtime API's
        conversation.item.truncate). Text, Thinker cache and Talker history keep the tokens
        `omni.pipeline.text_tokens_heard` says were heard (its docstring states the rule and its
        error), so the next turn continues from exactly what the listener heard. A cut never grows
        the reply back. Returns the text kept."""
        self._settle_abandoned()
        with self._guard:
            if self._active_cancel is not None:
                raise InputError("a reply is in progress; cancel it and wait for its end before truncating")
            state = self.state
            spoken = state.last_spoken
            if spoken is None or not state.messages or state.messages[-1]["role"] != "assistant":
                raise InputError("the conversation's last turn is not a spoken reply; only that one can be truncated")
            if not heard_s >= 0:
                raise InputError(f"heard_s must be a number of seconds >= 0, got {heard_s!r}")
            timing = codec_timing(self.model)
            heard_codes = int(heard_s * timing.sample_rate_hz) // timing.samples_per_code
            keep = min(spoken.kept_tokens, text_tokens_heard(heard_codes, len(spoken.token_ids), spoken.codec_tokens,
                                                             spoken.speech_complete, timing.codes_per_text_token))
            if keep == spoken.kept_tokens:
                return state.messages[-1]["content"]
            self._cut_reply(state, spoken, keep)
            return state.messages[-1]["content"]

    def _cut_reply(self, state: ConversationState, spoken: SpokenReply, keep: int) -> None:
        """Keep the first `keep` tokens of the last reply: the last kept one becomes its unfed last
        token (as after a length limit), fed before <|im_end|> at the next turn."""
        im_end = self.model.tokenizer.token_id(IM_END)
        fed_now = len(state.fed_token_ids) - spoken.fed_before
        fed = min(max(0, keep - 1), fed_now)
        del state.fed_token_ids[spoken.fed_before + fed:]
        state.cache.truncate(spoken.fed_before + fed)
        state.pending_token_ids = spoken.token_ids[fed:keep] + [im_end]
        state.next_position = spoken.position_before + fed
        context = state.talker_context
        if context is not None:
            length = spoken.talker_before + fed
            state.talker_context = context.prefix(length)
        state.messages[-1] = {"role": "assistant", "content": self.model.tokenizer.decode(spoken.token_ids[:keep])}
        spoken.kept_tokens = keep
        self._fit_cache(state.cache)

    def _fit_cache(self, cache: KVCache) -> None:
        """Give memory back after a turn that left the cache mostly empty (a long reply cut short by
        a cancel or a stop, a one-off large max_new_tokens). The next turn reserves at least the
        conversation plus max_new_tokens; keep room for twice that, and only reallocate when the
        capacity is over 4x it, so a steady conversation never shrinks and regrows turn after turn.
        (The Talker needs no such care: its context is rebuilt to its exact length every turn and
        its cache lives for one reply.)"""
        reserve = max(MIN_CACHE_TOKENS, cache.length + self.max_new_tokens)
        if cache.capacity > SHRINK_ABOVE_RESERVE * reserve:
            cache.shrink(2 * reserve)

    def _settle_abandoned(self) -> None:
        """Finish, on this thread, a reply whose stream was dropped without being closed (see
        ReplyStream): it stops within one step and its turn is recorded."""
        with self._guard:
            reply = self._open
            if reply is None or not reply.abandoned or reply.settling:
                return
            reply.settling = True
        try:
            reply.close()
        except Exception:
            # nobody listens to an abandoned reply any more; finish() still ran, so its turn is
            # recorded as far as it got, and the call that settled it goes on as asked
            pass


def _unbatched_events(loaded: LoadedModel, memory: StagePeaks, speaks: bool, events):
    """A reply run without the engine: with speech, it holds an offloaded Talker and codec on the
    device from its first step to its end (omni.offload); its ReplyDone carries the encoders' peak
    memory (the other stages run inside `run_reply`, unmeasured)."""
    offload = loaded.offload
    hold = offload.held("speech") if speaks and offload is not None else contextlib.nullcontext()
    with hold:
        for event in events:
            yield memory.stamp(event) if isinstance(event, ReplyDone) else event


def _as_messages(message: Any) -> list[dict[str, Any]]:
    if isinstance(message, str):
        if not message.strip():
            raise InputError("the message is empty")
        return [{"role": "user", "content": message}]
    return validate_messages(message)
