"""Talker decoding as an explicit streaming state: one prefill, then one codec token per step.

The Talker runs one position behind the Thinker. Its prefill needs the conversation (Thinker input
embeddings + hidden states, multimodal positions zeroed), the voice's text-bos embedding and the
reply part of the first text token, which exists once the Thinker has fed that token back (its step
1). Step i then consumes reply part i; once the Thinker has finished, the text-eos embedding once and
the text-pad embedding from then on. `step()` never runs ahead of the Thinker: without a reply part
to consume it reports that it is waiting. This mirrors how the reference builds the talker input in
`Qwen2_5OmniForConditionalGeneration.generate`, one token at a time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from omni.config import TalkerConfig
from omni.kv_cache import KVCache
from omni.sampling import Sampler, SamplingParams
from omni.talker.model import Talker

# The reference talker.generate defaults (Qwen2_5OmniForConditionalGeneration.generate).
DEFAULT_TALKER_SAMPLING = SamplingParams(do_sample=True, temperature=0.9, top_k=40, top_p=0.8, repetition_penalty=1.05)


@dataclass(frozen=True)
class TalkerOptions:
    sampling: SamplingParams = DEFAULT_TALKER_SAMPLING
    # the most codes the codec receives: the reference's talker_max_new_tokens (Qwen3-Omni: frames of 16
    # codes, its talker_max_new_tokens minus one; omni.qwen3.speech)
    max_codes: int = 4096
    # A safety bound the reference lacks: speech runs at roughly 10-20 codes (0.2-0.4 s) per text
    # token, so a Talker still talking long after the text cannot be saying it. Once the text is
    # complete the utterance is capped at `codes_per_text_token` per token plus `extra_codes`.
    # None disables the bound (exact reference behaviour).
    codes_per_text_token: float | None = 50.0
    extra_codes: int = 100
    # Only codes the Token2Wav can embed (0 .. num_embeds) and the stop codes may be produced. A
    # trained talker never puts mass elsewhere; a random or damaged one would crash the codec.
    restrict_to_codec_vocabulary: bool = True


@dataclass
class TalkerState:
    cache: KVCache
    sampler: Sampler
    next_position: int
    last_code: int
    reply_parts: deque = field(default_factory=deque)  # (1, 1, embedding_size) each, not yet consumed
    text_finished: bool = False
    text_eos_fed: bool = False
    codes: list[int] = field(default_factory=list)
    finished: bool = False
    text_tokens: int = 1  # reply tokens read so far (the prefill reads the first)


class TalkerStream:
    """One utterance of codec tokens. `start()` prefills; `push_reply_part()` / `finish_text()`
    feed what the Thinker produced; `step()` yields the next code (or None while it must wait)."""

    def __init__(self, talker: Talker, text_embed, options: TalkerOptions = TalkerOptions(),
                 codec_vocabulary: int | None = None) -> None:
        self.talker = talker
        self.config: TalkerConfig = talker.config
        self.text_embed = text_embed  # the Thinker's embed_tokens: text ids -> (batch, n, embedding_size)
        self.options = options
        self.stop_codes = (self.config.codec_pad_id, self.config.codec_eos_id)
        vocab = self.config.decoder.vocab_size
        forbidden = torch.zeros(vocab, dtype=torch.bool)
        forbidden[self.config.codec_bos_id] = True
        if options.restrict_to_codec_vocabulary and codec_vocabulary is not None:
            forbidden[codec_vocabulary:] = True
            forbidden[list(self.stop_codes)] = False
        self.forbidden = forbidden.to(talker.device)
        self.state: TalkerState | None = None

    # -- feeding -----------------------------------------------------------------------------------

    def push_reply_part(self, reply_part: torch.Tensor) -> None:
        """The Thinker's input embedding + final hidden state (1, 1, embedding_size) of a fed reply
        token (after `start()`, which takes the first)."""
        self.state.reply_parts.append(reply_part)

    def finish_text(self) -> None:
        """The Thinker has stopped: after the queued reply parts come text-eos, then text-pad."""
        if self.state is not None:
            self.state.text_finished = True

    # -- decoding ----------------------------------------------------------------------------------

    @property
    def codes(self) -> list[int]:
        """The codes produced so far (stop codes excluded)."""
        return self.state.codes if self.state is not None else []

    @property
    def started(self) -> bool:
        return self.state is not None

    @property
    def finished(self) -> bool:
        return self.state is not None and self.state.finished

    def can_step(self) -> bool:
        state = self.state
        return state is not None and not state.finished and (bool(state.reply_parts) or state.text_finished)

    @torch.inference_mode()
    def start(self, context_embeds: torch.Tensor, context_positions: torch.Tensor, next_position: int,
              voice_bos_token: int, first_reply_part: torch.Tensor) -> int:
        """Prefill over the conversation and return the first code.

        context_embeds (1, L, embedding_size): Thinker input embeddings (zero at multimodal positions)
        plus final hidden states of every conversation token; context_positions (3, 1, L) their rope
        positions; next_position the position after them."""
        talker, config, device = self.talker, self.config, self.talker.device
        length = context_embeds.shape[1]
        cache = talker.model.new_cache(1, length + 2 + min(self.options.max_codes, 512))  # grows by doubling
        bos_embed = self.text_embed(torch.tensor([[voice_bos_token]], device=device))
        embeds = torch.cat([context_embeds.to(device, talker.dtype), bos_embed.to(talker.dtype),
                            first_reply_part.to(device, talker.dtype)], dim=1)
        # The codec side of the prefill: nothing over the conversation, pad then bos on the last two.
        embeds[:, -2:] += talker.embed_codes(torch.tensor([[config.codec_pad_id, config.codec_bos_id]], device=device))
        tail = torch.arange(next_position, next_position + 2, device=device).view(1, 1, 2).expand(3, 1, 2)
        positions = torch.cat([context_positions.to(device), tail], dim=2)
        sampler = Sampler(self.options.sampling, 1, config.decoder.vocab_size, device, self.forbidden)
        prompt_codes = torch.full((1, length + 2), config.codec_mask_id, dtype=torch.long, device=device)
        prompt_codes[0, -2:] = torch.tensor([config.codec_pad_id, config.codec_bos_id])
        sampler.observe(prompt_codes)  # the reference's repetition penalty sees the talker input ids
        logits = talker(embeds, positions, cache=cache)
        self.state = TalkerState(cache=cache, sampler=sampler, next_position=next_position + 2, last_code=-1)
        sampled = sampler(logits)
        return self.accept(sampled, int(sampled[0]))

    @torch.inference_mode()
    def step(self) -> int | None:
        """Decode one code; None when the next reply part has not arrived yet (or the stream ended)."""
        fed = self.next_input()
        if fed is None:
            return None
        embeds, positions = fed
        logits = self.talker(embeds, positions, cache=self.state.cache)
        sampled = self.state.sampler(logits)
        return self.accept(sampled, int(sampled[0]))

    @torch.inference_mode()
    def next_input(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The next step's input, consumed from the queue: (embeds (1, 1, embedding_size), positions
        (3, 1, 1)); None while the next reply part has not arrived (or the stream ended). The caller
        runs the Talker over it (alone, or batched with other streams by the engine) and passes the
        sampled code to `accept`."""
        state = self.state
        if state is None or state.finished:
            return None
        if state.reply_parts:
            reply_part = state.reply_parts.popleft()
            state.text_tokens += 1
        elif state.text_finished:
            token = self.config.text_pad_id if state.text_eos_fed else self.config.text_eos_id
            state.text_eos_fed = True
            reply_part = self.text_embed(torch.tensor([[token]], device=self.talker.device))
        else:
            return None
        talker = self.talker
        device = talker.device
        embeds = talker.embed_codes(torch.tensor([[state.last_code]], device=device)) + reply_part.to(device, talker.dtype)
        positions = torch.full((3, 1, 1), state.next_position, dtype=torch.long, device=device)
        state.next_position += 1
        return embeds, positions

    def accept(self, sampled: torch.Tensor, code: int) -> int | None:
        """Record the code sampled (`sampled`, a (1,) tensor on the device, and its value `code`)
        after a step: the code, or None when it ended the utterance."""
        state = self.state
        state.sampler.observe(sampled.view(1, 1))
        state.last_code = code
        if code in self.stop_codes:
            state.finished = True
            return None
        state.codes.append(code)
        if len(state.codes) >= self._code_limit():
            state.finished = True
        return code

    def _code_limit(self) -> int:
        options, state = self.options, self.state
        if options.codes_per_text_token is None or not state.text_finished:
            return options.max_codes
        return min(options.max_codes, int(options.extra_codes + options.codes_per_text_token * (state.text_tokens + len(state.reply_parts))))

    def close(self) -> None:
        """Free the cache (the stream cannot continue afterwards)."""
        if self.state is not None:
            self.state.cache.free()
            self.state.finished = True
            self.state.reply_parts.clear()
