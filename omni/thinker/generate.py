"""Thinker decoding: one prefill, then one token per step, as a generator.

Each step yields the sampled token and what the Talker needs from that step: the input embeddings
and the final hidden states of the tokens the step consumed (the whole prompt at the prefill, the
previous token afterwards). The caller owns the KV cache, so a later turn can continue it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from omni.errors import InputError
from omni.kv_cache import KVCache
from omni.sampling import Sampler, SamplingParams
from omni.thinker.model import Thinker


@dataclass
class Deepstack:
    """Qwen3-Omni's DeepStack input: features the Thinker adds at the image/video positions after its
    first decoder layers (features[i] after layer i), in the mask's row-major order."""

    visual_mask: torch.Tensor  # (batch, seq) bool
    features: list[torch.Tensor]  # per layer: (visual tokens, hidden)

    def window(self, start: int, end: int) -> Deepstack | None:
        """The part that falls in prompt columns [start, end) (a chunk of a chunked prefill)."""
        before = int(self.visual_mask[:, :start].sum())
        mask = self.visual_mask[:, start:end]
        count = int(mask.sum())
        if count == 0:
            return None
        return Deepstack(mask, [feature[before : before + count] for feature in self.features])

    def thinker_arguments(self, device: torch.device) -> dict:
        return {"visual_mask": self.visual_mask.to(device), "deepstack_features": self.features}


@dataclass
class ThinkerPrompt:
    """A prompt ready for the Thinker: token ids, their embeddings (multimodal ones merged in),
    3-D positions and, for a left-padded batch, which tokens are real."""

    input_ids: torch.Tensor  # (batch, seq)
    position_ids: torch.Tensor  # (3, batch, seq)
    next_position: torch.Tensor  # (batch,): position of the first generated token
    inputs_embeds: torch.Tensor | None = None  # (batch, seq, hidden); None: embed input_ids
    token_mask: torch.Tensor | None = None  # (batch, seq) bool; None: no padding
    # (batch, seq) bool: positions whose embeddings came from the audio/vision encoders (the Talker
    # sees zeros there, as the reference feeds it); None: a text-only prompt
    multimodal_mask: torch.Tensor | None = None
    deepstack: Deepstack | None = None  # Qwen3-Omni: vision features for the first decoder layers
    # the media geometry in prompt order (Qwen3-Omni's Talker places images and videos with it):
    # image_grid_thw (images, 3), video_grid_thw (videos, 3), video_second_per_grid (videos,)
    image_grid_thw: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    video_second_per_grid: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, token_mask) of token lists left-padded to the longest."""
    if not rows or any(len(row) == 0 for row in rows):
        raise InputError("every prompt must hold at least one token")
    longest = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.bool)
    for index, row in enumerate(rows):
        input_ids[index, longest - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[index, longest - len(row) :] = True
    return input_ids, mask


def text_prompt(token_ids: Sequence[Sequence[int]], pad_id: int, start_position: int = 0) -> ThinkerPrompt:
    """Left-pad token lists into one batch with text positions (all three rope components equal)."""
    input_ids, mask = left_pad(token_ids, pad_id)
    positions = mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(~mask, 1) + start_position  # padding positions are never attended
    padded = not bool(mask.all())
    return ThinkerPrompt(
        input_ids=input_ids,
        position_ids=positions.unsqueeze(0).expand(3, -1, -1).contiguous(),
        next_position=mask.sum(-1) + start_position,
        token_mask=mask if padded else None,
    )


@dataclass
class ThinkerStep:
    index: int  # 0 for the prefill
    token_ids: torch.Tensor  # (batch,) the tokens sampled at this step (padding for finished rows)
    input_embeds: torch.Tensor  # (rows, n, hidden) embeddings of the tokens this step consumed
    hidden: torch.Tensor  # (rows, n, hidden) final-norm hidden states of those tokens
    finished: torch.Tensor  # (batch,) bool: the row has produced a stop token by now
    rows: torch.Tensor  # (rows,) which batch rows input_embeds / hidden belong to (all, until rows finish)
    # Qwen3-Omni, prefill only: the hidden states of the layer the Talker reads (accept_hidden_layer)
    layer_hidden: torch.Tensor | None = None


def prefill_arguments(thinker, prompt_deepstack: Deepstack | None, device: torch.device) -> dict:
    """Extra keyword arguments of a prefill forward: Qwen3-Omni's deepstack features, and the inner
    layer its Talker reads (`talker_reads_layer`, set when the model speaks). None for Qwen2.5-Omni."""
    arguments = prompt_deepstack.thinker_arguments(device) if prompt_deepstack is not None else {}
    layer = getattr(thinker, "talker_reads_layer", None)
    if layer is not None:
        arguments["hidden_states_of_layer"] = layer
    return arguments


def split_layer_hidden(thinker, output) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(final hidden, the Talker's layer hidden or None) of a prefill forward."""
    if getattr(thinker, "talker_reads_layer", None) is not None:
        return output
    return output, None


@torch.inference_mode()
def stream_thinker(
    thinker: Thinker,
    prompt: ThinkerPrompt,
    sampling: SamplingParams,
    max_new_tokens: int,
    stop_token_ids: Sequence[int],
    pad_token_id: int,
    cache: KVCache | None = None,
    forbidden_tokens: torch.Tensor | None = None,
) -> Iterator[ThinkerStep]:
    """Generate up to `max_new_tokens` tokens; a row stops after its first stop token.

    With `cache`, the prompt is appended to what the cache already holds (the positions in `prompt`
    must continue from there) and every row keeps running (fed `pad_token_id`) until all have
    stopped, so the cache stays whole for the caller. Without it, rows that finish are dropped
    from the batch: a batched evaluation stops paying for replies that are already complete."""
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = thinker.device
    batch = prompt.batch_size
    input_ids = prompt.input_ids.to(device)
    drop_finished = cache is None and batch > 1
    if cache is None:
        cache = thinker.model.new_cache(batch, input_ids.shape[1] + max_new_tokens)
    cache.ensure_capacity(cache.length + input_ids.shape[1] + max_new_tokens)

    embeds = prompt.inputs_embeds.to(device) if prompt.inputs_embeds is not None else thinker.embed(input_ids)
    token_mask = prompt.token_mask.to(device) if prompt.token_mask is not None else None
    sampler = Sampler(sampling, batch, thinker.config.text.vocab_size, device, forbidden_tokens)
    sampler.observe(input_ids)  # padding included, as transformers' repetition penalty sees it
    stop_ids = torch.tensor(sorted(set(stop_token_ids)), dtype=torch.long, device=device)
    position = prompt.next_position.to(device).view(batch, 1)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    rows = torch.arange(batch, device=device)  # batch rows still in the running tensors

    hidden, layer_hidden = split_layer_hidden(thinker, thinker(
        embeds, prompt.position_ids.to(device), cache=cache, token_mask=token_mask,
        **prefill_arguments(thinker, prompt.deepstack, device)))
    for index in range(max_new_tokens):
        sampled = sampler(thinker.logits(hidden[:, -1]))
        sampled = torch.where(finished[rows], torch.full_like(sampled, pad_token_id), sampled)
        token_ids = torch.full((batch,), pad_token_id, dtype=torch.long, device=device)
        token_ids[rows] = sampled
        finished = finished | torch.isin(token_ids, stop_ids)
        yield ThinkerStep(index, token_ids, embeds, hidden, finished, rows, layer_hidden if index == 0 else None)
        if bool(finished.all()) or index + 1 == max_new_tokens:
            return
        if drop_finished and bool(finished[rows].any()):
            keep = ~finished[rows]
            rows, sampled, position = rows[keep], sampled[keep], position[keep]
            cache.select_rows(keep)
            sampler.select_rows(keep)
        sampler.observe(sampled[:, None])
        embeds = thinker.embed(sampled[:, None])
        hidden = thinker(embeds, position.expand(3, len(rows), 1), cache=cache)
        position = position + 1
