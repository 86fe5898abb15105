"""One reply, start to finish: the Thinker streams text while (with audio) the Talker turns its
hidden states into codec tokens and the streaming codec turns those into audio chunks.

`ReplyRun` is one reply's logic as explicit state (text, stop strings, what the Talker may read,
the Talker and codec streams); it runs no Thinker forward. Two drivers run it: the serving engine
(omni.engine), which batches the steps of every live reply, and `run_reply` here, which runs one
reply alone in the caller's thread (the path `OmniSession(engine=False)` and the server's
`--scheduler threads` keep for comparison).

The stages are interleaved by a step scheduler, not by threads. Why: on a CPU every PyTorch op
already uses all cores, so stage threads would only fight over them (and on one GPU the stages share
one device anyway); one scheduler makes a reply reproducible step for step, lets cancellation take
effect between any two steps, and keeps each stage's state an explicit object. Audio still starts
long before the text ends, because a Talker step runs as soon as the Thinker output it needs exists
and a codec chunk is decoded as soon as its codes (and look-ahead) exist.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from collections import deque
from dataclasses import dataclass, field

from omni.events import AudioChunk, ReplyDone, TextDelta, Timings, Usage
from omni.kv_cache import KVCache
from omni.loading import LoadedModel
from omni.sampling import SamplingParams
from omni.speech import CODEC_TOKENS_PER_TEXT_TOKEN, SpeechOptions, TalkerContext, resolve_voice, speech_stages
from omni.stop import StopText
from omni.thinker.generate import ThinkerPrompt, ThinkerStep, stream_thinker


@dataclass(frozen=True)
class ReplyOptions:
    max_new_tokens: int = 512
    sampling: SamplingParams = SamplingParams()
    speech: SpeechOptions | None = None  # None: text only, the Talker never runs
    stop: tuple[str, ...] = ()  # stop strings (see omni.stop): the reply ends before the first one


@dataclass
class ReplyRecord:
    """What the session keeps of a reply once it ends (filled in while it runs)."""

    fed_token_ids: list[int] = field(default_factory=list)  # reply tokens the Thinker consumed
    sampled_token_ids: list[int] = field(default_factory=list)  # every reply token sampled
    text: str = ""
    finish_reason: str = "stop"
    talker_context: TalkerContext | None = None  # the conversation for the next turn's Talker
    codec_codes: list[int] = field(default_factory=list)
    speech_complete: bool = False  # the Talker ended the utterance itself: its codes say the whole text
    heard_codes: int | None = None  # after a barge-in: the codec tokens handed out, which the kept text covers


class StageClock:
    """Compute seconds per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


class ReplyRun:
    """One reply's logic between model steps, as explicit state: it reads Thinker steps (text,
    stop strings, what the Talker may read) and hands out events; it runs no Thinker forward, so
    the same logic serves a reply run alone (`run_reply`) and one row of the engine's batch.

    Order of calls: `on_thinker_step` per step until `text_done`; then `end_text`; with speech, the
    Talker steps and codec (`speech.advance` / `speech.drain` alone, the engine's batches
    otherwise); `cancel` at any point; `close`; `done` last."""

    def __init__(self, loaded: LoadedModel, prompt: ThinkerPrompt, options: ReplyOptions, record: ReplyRecord,
                 started_at: float | None = None, stage_s: dict[str, float] | None = None,
                 talker_history: TalkerContext | None = None, cached_prompt_tokens: int = 0) -> None:
        self.loaded = loaded
        self.cached_prompt_tokens = cached_prompt_tokens  # prompt tokens a prefix-cache hit supplied
        self.prompt = prompt
        self.options = options
        self.record = record
        self.start = started_at if started_at is not None else time.perf_counter()
        self.clock = StageClock()
        for stage, seconds in (stage_s or {}).items():
            self.clock.add(stage, seconds)
        self.speech: SpeechStages | None = None
        if options.speech is not None:
            voice = resolve_voice(loaded, options.speech.voice)
            self.speech = speech_stages(loaded, options.speech, talker_history, self.clock, self.start, voice)
        elif loaded.audio_output:
            # text only: the Talker never runs, but the turn is remembered for a later spoken one
            self.speech = speech_stages(loaded, SpeechOptions(), talker_history, self.clock, self.start, voice=None)
        self.first_text_at: float | None = None
        self.detokenizer = loaded.tokenizer.detokenizer()
        self.stop_ids = set(loaded.generation.eos_token_ids)
        self.stops = StopText(options.stop) if options.stop else None
        self.reply_chars = 0  # length of the detokenized reply text so far, stop strings included
        self.token_text_ends: list[int] = []  # per sampled token: reply_chars once it was read
        # With stop strings the Talker reads a reply token only once the token's text is decided (see
        # omni.stop), so speech never says a stop string or a piece of one; a token that straddles the
        # stop string's start is not spoken either. Without them every step goes to the Talker at once.
        self.held_steps: deque[ThinkerStep] = deque()
        self.finish_reason = "length"
        self.text_done = False  # the Thinker has nothing more to do for this reply
        self.generated_token_ids: list[int] | None = None
        self.delivered_samples: int | None = None  # audio the caller received, when it stopped early

    @property
    def speaks(self) -> bool:
        return self.speech is not None and self.speech.speaks

    def on_thinker_step(self, step: ThinkerStep) -> list[TextDelta]:
        """Read one Thinker step (step 0: the prefill). Sets `text_done` once the reply's text has
        ended: a stop token, a stop string, or `max_new_tokens` steps."""
        record, stops = self.record, self.stops
        if step.index > 0:
            record.fed_token_ids.append(record.sampled_token_ids[-1])
        token = int(step.token_ids[0])
        record.sampled_token_ids.append(token)
        delta = "" if token in self.stop_ids else self.detokenizer.push(token)
        self.reply_chars += len(delta)
        self.token_text_ends.append(self.reply_chars)
        shown = stops.push(delta) if stops is not None else delta
        if self.speech is not None:
            self.held_steps.append(step)
            decided = stops.decided if stops is not None else self.reply_chars
            while self.held_steps and _step_decided(self.held_steps[0], self.token_text_ends, decided):
                self.speech.on_thinker_step(self.held_steps.popleft(), self.prompt)
        if step.index + 1 >= self.options.max_new_tokens:
            self.text_done = True
        if token in self.stop_ids:
            self.finish_reason = "stop"
            self.text_done = True
            return []
        events = []
        if shown:
            record.text += shown
            if self.first_text_at is None:
                self.first_text_at = time.perf_counter() - self.start
            events.append(TextDelta(shown))
        if stops is not None and stops.stopped:
            self.finish_reason = "stop"
            self.text_done = True
        return events

    def end_text(self) -> list[TextDelta]:
        """The Thinker has finished this reply: the text's held-back end, and the Talker learns
        that the text is complete."""
        self.text_done = True
        record, stops = self.record, self.stops
        events = []
        shown = self.detokenizer.flush()
        if stops is not None:
            shown = stops.push(shown) + ("" if stops.stopped else stops.flush())
        if shown:
            record.text += shown
            events.append(TextDelta(shown))
        self._settle_text()
        if self.speech is not None:
            while self.held_steps:
                self.speech.on_thinker_step(self.held_steps.popleft(), self.prompt)
            if self.speech.speaks:
                self.speech.finish_text()
        return events

    def _settle_text(self) -> None:
        self.generated_token_ids = list(self.record.sampled_token_ids)
        stops = self.stops
        if stops is not None and stops.decided < self.reply_chars:
            # A stop string ended the reply (or a cancel came while text was held back): the
            # conversation keeps exactly the text that was shown, and speech the tokens wholly in it.
            if stops.stopped:
                self.finish_reason = "stop"
            kept_tokens = _keep_shown_text(self.loaded.tokenizer, self.record, self.token_text_ends)
            self.held_steps = deque(s for s in self.held_steps if s.index <= kept_tokens)

    def cancel(self) -> None:
        """Stop here: a barge-in or a client that left."""
        if self.generated_token_ids is None:
            self._settle_text()
        self.text_done = True
        self.finish_reason = "cancelled"

    def cut_to_delivered(self, text_chars: int, audio_samples: int) -> ReplyDone:
        """The caller stopped reading before the end (a cancel, a dropped stream) while the reply ran
        ahead of it (the engine does not wait for readers): the conversation keeps only the text and
        speech the caller received, as if the reply had stopped there. Returns the new ReplyDone."""
        record = self.record
        if text_chars < len(record.text):
            record.text = record.text[:text_chars]
            _keep_shown_text(self.loaded.tokenizer, record, self.token_text_ends)
        self.finish_reason = "cancelled"
        self.delivered_samples = audio_samples
        return self.done()

    def close(self) -> None:
        """Free the Talker's cache and the codec's state (after the end or a cancellation)."""
        if self.speech is not None:
            self.speech.close()

    def done(self) -> ReplyDone:
        """The reply's last event; `record` then holds what the conversation keeps."""
        record, speech, stop_ids = self.record, self.speech, self.stop_ids
        if self.generated_token_ids is None:
            self._settle_text()
        finish_reason = self.finish_reason
        speech_complete = speech is not None and speech.speaks and speech.speech_complete
        if finish_reason == "cancelled" and speech is not None and speech.speaks and speech.progress.chunks_out:
            spoken_codes = speech.spoken_codes
            if self.delivered_samples is not None:
                spoken_codes = self.delivered_samples // speech.samples_per_code
            if self.delivered_samples != 0:
                _keep_heard_part(self.loaded, record, spoken_codes, len(speech.codec_tokens), speech_complete,
                                 stop_ids, speech.codes_per_text_token)
                record.heard_codes = spoken_codes
        record.speech_complete = speech_complete
        record.finish_reason = finish_reason
        # after a stop string, usage counts what was generated (the tokens cut off included); after a
        # barge-in, what was kept
        stopped = self.stops is not None and self.stops.stopped
        counted = self.generated_token_ids if stopped else record.sampled_token_ids
        text_tokens = len([t for t in counted if t not in stop_ids])
        if speech is not None:
            record.codec_codes = list(speech.codec_tokens)
            record.talker_context = speech.context_after(len(record.fed_token_ids))
            speech = speech if speech.speaks else None
        audio_s = speech.progress.samples_out / speech.sample_rate_hz if speech is not None else 0.0
        return ReplyDone(
            text=record.text,
            finish_reason=finish_reason,
            usage=Usage(prompt_tokens=int(self.prompt.input_ids.shape[1]) + self.cached_prompt_tokens,
                        text_tokens=text_tokens, codec_tokens=len(record.codec_codes) if speech is not None else 0,
                        cached_prompt_tokens=self.cached_prompt_tokens),
            timings=Timings(first_text_s=self.first_text_at,
                            first_audio_s=speech.progress.first_audio_at if speech else None,
                            total_s=time.perf_counter() - self.start, audio_duration_s=audio_s,
                            stage_s=dict(self.clock.seconds)),
            codec_codes=tuple(record.codec_codes),
        )


def run_reply(
    loaded: LoadedModel,
    prompt: ThinkerPrompt,
    options: ReplyOptions,
    cache: KVCache,
    cancel: threading.Event,
    record: ReplyRecord,
    started_at: float | None = None,
    stage_s: dict[str, float] | None = None,
    talker_history: TalkerContext | None = None,
) -> Iterator[TextDelta | AudioChunk | ReplyDone]:
    """Stream the events of one reply, alone, in the caller's thread (the engine batches many
    replies instead: omni.engine); `record` holds what was generated when the iterator ends.

    With speech, `talker_history` is the Talker's view of the earlier turns (None on the first)."""
    run = ReplyRun(loaded, prompt, options, record, started_at, stage_s, talker_history)
    steps = stream_thinker(
        loaded.model.thinker,
        prompt,
        options.sampling,
        options.max_new_tokens,
        stop_token_ids=loaded.generation.eos_token_ids,
        pad_token_id=loaded.generation.pad_token_id,
        cache=cache,
    )
    speech = run.speech if run.speaks else None
    try:
        while not run.text_done:
            if cancel.is_set():
                run.cancel()
                break
            step_start = time.perf_counter()
            step = next(steps, None)
            run.clock.add("prefill" if not record.sampled_token_ids else "thinker", time.perf_counter() - step_start)
            if step is None:
                break
            yield from run.on_thinker_step(step)
            if speech is not None:
                yield from speech.advance()
        if run.finish_reason != "cancelled":
            yield from run.end_text()
            if speech is not None:
                yield from speech.drain(cancel.is_set)
                if cancel.is_set():
                    run.cancel()
    finally:
        steps.close()
        run.close()
    yield run.done()




def text_tokens_heard(heard_codes: int, text_tokens: int, codec_tokens: int, speech_complete: bool,
                      codes_per_text_token: float = CODEC_TOKENS_PER_TEXT_TOKEN) -> int:
    """How many of a spoken reply's `text_tokens` a listener heard in its first `heard_codes` codec
    tokens (its first heard_codes x 20 ms of audio), for a barge-in or a client's truncation.

    The rule: when the Talker ended the utterance itself (`speech_complete`: its `codec_tokens` say
    all `text_tokens`), the text is cut in proportion to the time heard, ceil(text_tokens x
    heard_codes / codec_tokens). Otherwise the reply's length in speech is unknown and the time heard
    is divided by the measured rate, ceil(heard_codes / codes_per_text_token) (Qwen2.5-Omni's codes are
    20 ms, CODEC_TOKENS_PER_TEXT_TOKEN; Qwen3-Omni's frames 80 ms, omni.qwen3.speech); either way never
    more than `heard_codes` (the Talker reads one text token per codec token, so it cannot have said
    a token it had not read) nor more than `text_tokens`. Rounding up keeps a token the listener heard
    the start of.

    Its error: proportional, the speaking rate's variation within one reply and its leading and
    trailing silence (about one or two tokens for a sentence); by rate, the rate's variation between
    replies (13-19 codec tokens per text token on the sentences above: about +-20% of the tokens
    kept), plus up to one token from rounding up. The old rule, one text token per codec token, kept
    about 15 times the text that was spoken."""
    if heard_codes <= 0 or text_tokens <= 0:
        return 0
    if speech_complete and codec_tokens > 0:
        estimate = math.ceil(text_tokens * min(heard_codes, codec_tokens) / codec_tokens)
    else:
        estimate = math.ceil(heard_codes / codes_per_text_token)
    return min(text_tokens, heard_codes, estimate)


def _keep_heard_part(loaded: LoadedModel, record: ReplyRecord, heard_codes: int, codec_tokens: int,
                     speech_complete: bool, stop_ids: set[int],
                     codes_per_text_token: float = CODEC_TOKENS_PER_TEXT_TOKEN) -> None:
    """After a barge-in, keep the reply only as far as it was heard (`text_tokens_heard`, at least
    one token); the conversation continues from there (text, Thinker cache and Talker history alike)."""
    reply = [t for t in record.sampled_token_ids if t not in stop_ids]
    keep = max(1, text_tokens_heard(heard_codes, len(reply), codec_tokens, speech_complete, codes_per_text_token))
    keep = min(len(reply), keep)
    record.sampled_token_ids = reply[:keep]
    record.fed_token_ids = reply[: keep - 1]
    record.text = loaded.tokenizer.decode(reply[:keep])


def _step_decided(step: ThinkerStep, token_text_ends: list[int], decided_chars: int) -> bool:
    """Step k feeds the Talker reply token k - 1 (step 0 only the prompt): it may go once that
    token's text lies wholly in the decided text."""
    return step.index == 0 or token_text_ends[step.index - 1] <= decided_chars


def _keep_shown_text(tokenizer, record: ReplyRecord, token_text_ends: list[int]) -> int:
    """Make the record hold the reply only as far as `record.text` (the text shown, which ends
    before a stop string). The tokens wholly inside that text stay in the Thinker's cache; the text of
    a token straddling its end is encoded anew and fed before the next turn, so the conversation
    continues from exactly the text the user saw. Returns how many sampled tokens lie wholly inside
    the text (the ones the Talker may speak)."""
    shown = record.text
    whole = 0
    while whole < len(token_text_ends) and token_text_ends[whole] <= len(shown):
        whole += 1
    prefix = tokenizer.decode(record.sampled_token_ids[:whole])
    while whole and not shown.startswith(prefix):
        # a token holding part of a character decodes to nothing until the next one: step back
        whole -= 1
        prefix = tokenizer.decode(record.sampled_token_ids[:whole])
    remainder = tokenizer.encode(shown[len(prefix):]) if len(shown) > len(prefix) else []
    tokens = record.sampled_token_ids[:whole]
    if remainder:
        record.fed_token_ids = tokens
        record.sampled_token_ids = tokens + remainder
    else:
        # the last kept token becomes the reply's unfed last token, as after a length limit
        record.fed_token_ids = tokens[:-1]
        record.sampled_token_ids = tokens
    return whole
