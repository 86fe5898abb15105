"""Batched text generation for many independent conversations (evaluation, offline jobs).

Prompts are left-padded into one batch; every row stops at its own stop token (finished rows are fed
padding until the whole batch is done, and nothing they produce after stopping is kept). Greedy
results equal running each conversation alone, up to floating-point summation order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omni.encoders.limits import MediaLimits
from omni.chat import TEMPLATE_SYSTEM_PROMPT
from omni.errors import InputError
from omni.loading import LoadedModel
from omni.prompt import build_prompt
from omni.sampling import SamplingParams
from omni.thinker.generate import stream_thinker


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
    if not conversations:
        raise InputError("generate_batch needs at least one conversation")
    prompt = build_prompt(
        loaded, list(conversations), system_prompt=system_prompt, use_audio_in_video=use_audio_in_video, limits=limits
    )
    stop_ids = set(loaded.generation.eos_token_ids)
    rows = prompt.batch_size
    generated: list[list[int]] = [[] for _ in range(rows)]
    stopped = [False] * rows
    for step in stream_thinker(
        loaded.model.thinker, prompt, sampling or SamplingParams(), max_new_tokens,
        stop_token_ids=loaded.generation.eos_token_ids, pad_token_id=loaded.generation.pad_token_id,
    ):
        for row, token in enumerate(step.token_ids.tolist()):
            if stopped[row]:
                continue
            if token in stop_ids:
                stopped[row] = True
            else:
                generated[row].append(token)
    mask = prompt.token_mask
    prompt_lengths = mask.sum(-1).tolist() if mask is not None else [prompt.input_ids.shape[1]] * rows
    return [
        BatchResult(
            text=loaded.tokenizer.decode(tokens),
            token_ids=tokens,
            finish_reason="stop" if stopped[row] else "length",
            prompt_tokens=int(prompt_lengths[row]),
        )
        for row, tokens in enumerate(generated)
    ]
