"""One batched step of a stage, for the rows the scheduler picked: model work only.

- `prefill_chunk`: read up to `chunk` more prompt tokens of one reply into its cache; after the
  last chunk, sample its first token (the Thinker's step 0).
- `thinker_step`: one Thinker decode step for many replies at once, each at its own cache length.
- `talker_step`: one Talker step for many replies at once.

Rows own separate caches (`QwenDecoder.forward_rows`): the projections, MLPs, the vocabulary
projection and greedy argmax run once for the whole batch; attention runs row by row over each
row's own cache, as a one-row step would. Sampling stays on the device; each step copies its new
tokens to the host once (the text and the codec need them there anyway).
"""

from __future__ import annotations

import torch

from omni.engine.reply import EngineReply, PrefillCursor
from omni.sampling import Sampler
from omni.thinker.generate import ThinkerStep, prefill_arguments, split_layer_hidden
from omni.thinker.model import Thinker


def sample_rows(samplers: list[Sampler], logits: torch.Tensor) -> list[int]:
    """Each row's next token by its own sampler (its settings, seed and seen tokens); rows that
    decode greedily with no penalty, bias or forbidden tokens share one argmax. Returns the tokens
    as host ints (the step's one device-to-host copy); every sampler observes its token."""
    plain = [i for i, s in enumerate(samplers) if _plain_greedy(s)]
    if len(plain) == len(samplers):
        sampled = logits.float().argmax(dim=-1)
    else:
        parts = [None] * len(samplers)
        if plain:
            index = torch.tensor(plain, device=logits.device)
            for row, token in zip(plain, logits.index_select(0, index).float().argmax(dim=-1).split(1)):
                parts[row] = token
        for row, sampler in enumerate(samplers):
            if parts[row] is None:
                parts[row] = sampler(logits[row : row + 1])
        sampled = torch.cat(parts)
    for row, sampler in enumerate(samplers):
        if sampler.seen is not None:
            sampler.observe(sampled[row : row + 1].view(1, 1))
    return sampled.tolist()


def _plain_greedy(sampler: Sampler) -> bool:
    return not sampler.params.do_sample and sampler.seen is None and sampler.bias is None and sampler.forbidden is None


@torch.inference_mode()
def prefill_chunk(thinker: Thinker, reply: EngineReply, chunk: int) -> ThinkerStep | None:
    """Read the next `chunk` prompt tokens of `reply`; after the last, its step 0 (else None)."""
    prompt = reply.prompt
    cursor = reply.prefill
    if cursor is None:
        embeds = (prompt.inputs_embeds.to(thinker.device) if prompt.inputs_embeds is not None
                  else thinker.embed(prompt.input_ids.to(thinker.device)))
        cursor = reply.prefill = PrefillCursor(embeds)
        reply.sampler.observe(reply.observed_ids.to(thinker.device))
    total = cursor.embeds.shape[1]
    end = min(total, cursor.read + chunk)
    positions = prompt.position_ids[:, :, cursor.read : end].to(thinker.device)
    deepstack = prompt.deepstack.window(cursor.read, end) if prompt.deepstack is not None else None
    hidden, layer_hidden = split_layer_hidden(thinker, thinker(
        cursor.embeds[:, cursor.read : end], positions, cache=reply.cache,
        **prefill_arguments(thinker, deepstack, thinker.device)))
    cursor.hidden.append(hidden)
    if layer_hidden is not None:
        cursor.layer_hidden.append(layer_hidden)
    cursor.read = end
    if end < total:
        return None
    hidden = torch.cat(cursor.hidden, dim=1) if len(cursor.hidden) > 1 else cursor.hidden[0]
    layer_hidden = torch.cat(cursor.layer_hidden, dim=1) if cursor.layer_hidden else None
    token = sample_rows([reply.sampler], thinker.logits(hidden[:, -1]))[0]
    reply.prefill = None
    reply.next_token = token
    reply.next_position = prompt.next_position[0].item()
    return _step(0, token, cursor.embeds, hidden, layer_hidden)


@torch.inference_mode()
def thinker_step(thinker: Thinker, replies: list[EngineReply]) -> list[ThinkerStep]:
    """One decode step for every reply in `replies` (each feeds its last sampled token)."""
    device = thinker.device
    tokens = torch.tensor([[r.next_token] for r in replies], dtype=torch.long).to(device)
    # long for Qwen2.5-Omni; Qwen3-Omni's positions are float32 (a video's times may be fractional)
    positions = torch.tensor([r.next_position for r in replies]).to(device)
    embeds = thinker.embed(tokens)
    hidden = thinker(embeds, positions.view(1, -1, 1).expand(3, -1, 1), row_caches=[r.cache for r in replies])
    sampled = sample_rows([r.sampler for r in replies], thinker.logits(hidden[:, -1]))
    steps = []
    for row, (reply, token) in enumerate(zip(replies, sampled)):
        reply.next_token = token
        reply.next_position += 1
        steps.append(_step(reply.steps, token, embeds[row : row + 1], hidden[row : row + 1]))
    return steps


def _step(index: int, token: int, embeds: torch.Tensor, hidden: torch.Tensor,
          layer_hidden: torch.Tensor | None = None) -> ThinkerStep:
    token_ids = torch.tensor([token])  # on the host: the reply's logic reads it without a device sync
    return ThinkerStep(index=index, token_ids=token_ids, input_embeds=embeds, hidden=hidden,
                       finished=torch.zeros(1, dtype=torch.bool), rows=torch.zeros(1, dtype=torch.long),
                       layer_hidden=layer_hidden)


@torch.inference_mode()
def talker_step(talker, streams: list) -> list[int | None]:
    """One step of each TalkerStream in `streams` (each `can_step()`): their codes (None where the
    utterance ended)."""
    inputs = [stream.next_input() for stream in streams]
    embeds = torch.cat([embed for embed, _ in inputs])
    positions = torch.cat([position for _, position in inputs], dim=1)
    logits = talker(embeds, positions, row_caches=[stream.state.cache for stream in streams])
    samplers = [stream.state.sampler for stream in streams]
    plain = all(_plain_greedy(s) for s in samplers)
    if plain:
        sampled = logits.argmax(dim=-1)
    else:
        sampled = torch.cat([sampler(logits[row : row + 1]) for row, sampler in enumerate(samplers)])
    codes = sampled.tolist()
    return [stream.accept(sampled[row : row + 1], code) for row, (stream, code) in enumerate(zip(streams, codes))]
