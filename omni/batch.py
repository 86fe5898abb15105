"""Batched text generation for many independent conversations (evaluation, offline jobs).

Every conversation is submitted to the model's serving engine as its own reply, so the engine
batches their decoding steps with each other (and with any other live reply): there is no padding,
a finished conversation leaves the batch at once, and each result equals running that conversation
alone (up to floating-point summation order), a seeded one included.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omni.encoders.limits import MediaLimits
from omni.chat import TEMPLATE_SYSTEM_PROMPT
from omni.errors import InputError
from omni.events import ReplyDone
from omni.loading import LoadedModel
from omni.pipeline import ReplyOptions, ReplyRecord
from omni.prompt import build_prompt
from omni.sampling import SamplingParams


@dataclass(frozen=True)
class BatchResult:
    text: str
    token_ids: list[int]  # generated tokens, without the stop token
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int


def generate_batch(
    loaded: LoadedModel,
    conversations: Sequence[Any],
    max_new_tokens: int = 256,
    sampling: SamplingParams | None = None,
    system_prompt: str | None = TEMPLATE_SYSTEM_PROMPT,
    use_audio_in_video: bool = False,
    limits: MediaLimits | None = None,
) -> list[BatchResult]:
    """Text replies for a batch of conversations (each a list of messages)."""
    from omni.engine import engine_for

    if not conversations:
        raise InputError("generate_batch needs at least one conversation")
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    engine = engine_for(loaded)
    thinker = loaded.model.thinker
    options = ReplyOptions(max_new_tokens=max_new_tokens, sampling=(sampling or SamplingParams()).validated())
    prompts = [engine.prepare(functools.partial(build_prompt, loaded, [conversation], system_prompt=system_prompt,
                                                use_audio_in_video=use_audio_in_video, limits=limits))
               for conversation in conversations]
    cancel = threading.Event()  # one failure stops the whole batch
    running = []
    for prompt in prompts:
        cache = thinker.model.new_cache(1, prompt.input_ids.shape[1] + max_new_tokens)
        record = ReplyRecord()
        running.append((engine.submit(prompt, options, cache, cancel, record), record, cache, prompt))
    stop_ids = set(loaded.generation.eos_token_ids)
    results = []
    try:
        dones = [next(event for event in events if isinstance(event, ReplyDone)) for events, *_ in running]
    except BaseException:
        cancel.set()
        for events, *_ in running:
            try:
                for _ in events:  # each ends within one engine iteration
                    pass
            except Exception:
                pass  # the first error is the one raised
        raise
    for (events, record, cache, prompt), done in zip(running, dones):
        cache.free()
        tokens = [token for token in record.sampled_token_ids if token not in stop_ids]
        results.append(BatchResult(text=loaded.tokenizer.decode(tokens), token_ids=tokens,
                                   finish_reason="stop" if done.finish_reason == "stop" else "length",
                                   prompt_tokens=int(prompt.input_ids.shape[1])))
    return results
