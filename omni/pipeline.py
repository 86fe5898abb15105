"""One reply, start to finish: the Thinker streams text while (with audio) the Talker turns its
hidden states into codec tokens and the streaming codec turns those into audio chunks.

The stages are interleaved by one step scheduler running in the caller's thread, not by threads.
Why: on a CPU every PyTorch op already uses all cores, so stage threads would only fight over them
(and on one GPU the stages share one device anyway); one scheduler makes a reply reproducible
step for step, lets cancellation take effect between any two steps, and keeps each stage's state an
explicit object. Audio still starts long before the text ends, because the scheduler runs a Talker
step as soon as the Thinker output it needs exists and decodes a codec chunk as soon as its codes
(and look-ahead) exist: the first chunk depends on the first codec chunk only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from omni.events import ReplyDone, TextDelta, Timings, Usage
from omni.kv_cache import KVCache
from omni.loading import LoadedModel
from omni.sampling import SamplingParams
from omni.thinker.generate import ThinkerPrompt, stream_thinker


@dataclass(frozen=True)
class ReplyOptions:
    max_new_tokens: int = 512
    sampling: SamplingParams = SamplingParams()
    return_audio: bool = False
    voice: str | None = None


@dataclass
class ReplyRecord:
    """What the session keeps of a reply once it ends (filled in while it runs)."""

    fed_token_ids: list[int] = field(default_factory=list)  # reply tokens the Thinker consumed
    sampled_token_ids: list[int] = field(default_factory=list)  # every reply token sampled
    text: str = ""
    finish_reason: str = "stop"


class StageClock:
    """Compute seconds per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


def run_reply(
    loaded: LoadedModel,
    prompt: ThinkerPrompt,
    options: ReplyOptions,
    cache: KVCache,
    cancel: threading.Event,
    record: ReplyRecord,
    started_at: float | None = None,
    stage_s: dict[str, float] | None = None,
) -> Iterator[TextDelta | ReplyDone]:
    """Stream the events of one reply; `record` holds what was generated when the iterator ends."""
    start = started_at if started_at is not None else time.perf_counter()
    clock = StageClock()
    for stage, seconds in (stage_s or {}).items():
        clock.add(stage, seconds)
    first_text_at = None
    detokenizer = loaded.tokenizer.detokenizer()
    stop_ids = set(loaded.generation.eos_token_ids)
    steps = stream_thinker(
        loaded.model.thinker,
        prompt,
        options.sampling,
        options.max_new_tokens,
        stop_token_ids=loaded.generation.eos_token_ids,
        pad_token_id=loaded.generation.pad_token_id,
        cache=cache,
    )
    finish_reason = "length"
    try:
        while True:
            if cancel.is_set():
                finish_reason = "cancelled"
                break
            step_start = time.perf_counter()
            step = next(steps, None)
            clock.add("prefill" if not record.sampled_token_ids else "thinker", time.perf_counter() - step_start)
            if step is None:
                break
            if step.index > 0:
                record.fed_token_ids.append(record.sampled_token_ids[-1])
            token = int(step.token_ids[0])
            record.sampled_token_ids.append(token)
            if token in stop_ids:
                finish_reason = "stop"
                continue
            delta = detokenizer.push(token)
            if delta:
                record.text += delta
                if first_text_at is None:
                    first_text_at = time.perf_counter() - start
                yield TextDelta(delta)
    finally:
        steps.close()
    tail = detokenizer.flush()
    if tail and finish_reason != "cancelled":
        record.text += tail
        yield TextDelta(tail)
    record.finish_reason = finish_reason
    text_tokens = len([t for t in record.sampled_token_ids if t not in stop_ids])
    yield ReplyDone(
        text=record.text,
        finish_reason=finish_reason,
        usage=Usage(prompt_tokens=int(prompt.input_ids.shape[1]), text_tokens=text_tokens),
        timings=Timings(first_text_s=first_text_at, total_s=time.perf_counter() - start, stage_s=dict(clock.seconds)),
    )
