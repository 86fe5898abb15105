"""Token sampling: greedy, temperature, top-k, top-p, repetition penalty, seeded.

The order of the logit transforms is the one transformers' `generate` applies (repetition penalty,
forbidden tokens, temperature, top-k, top-p), so the same settings mean the same distribution.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import torch

from omni.errors import InputError


MIN_SEED = -(2**63)  # torch.Generator.manual_seed's range
MAX_SEED = 2**64 - 1
MAX_LOGIT_BIAS = 100.0  # OpenAI's range for a logit_bias value


@dataclass(frozen=True)
class SamplingParams:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    # (token id, bias) pairs added to the logits before any other transform but the repetition
    # penalty (OpenAI's logit_bias: -100 bans a token, +100 all but forces it)
    logit_bias: tuple[tuple[int, float], ...] = ()

    def validated(self) -> SamplingParams:
        """Checked at the boundary: a value of the wrong type, NaN, an infinity or out of range
        raises InputError naming the setting, instead of NaN probabilities deep in the sampler."""
        if not isinstance(self.do_sample, bool):
            raise InputError(f"do_sample must be True or False, got {self.do_sample!r}")
        _number("temperature", self.temperature, ">= 0", lambda v: v >= 0)
        _number("top_p", self.top_p, "in (0, 1]", lambda v: 0 < v <= 1)
        _number("repetition_penalty", self.repetition_penalty, "> 0", lambda v: v > 0)
        if not _is_int(self.top_k) or self.top_k < 0:
            raise InputError(f"top_k must be a whole number >= 0 (0 disables it), got {self.top_k!r}")
        if self.seed is not None and (not _is_int(self.seed) or not MIN_SEED <= self.seed <= MAX_SEED):
            raise InputError(f"seed must be a whole number from {MIN_SEED} to {MAX_SEED}, got {self.seed!r}")
        for pair in self.logit_bias:
            if (not isinstance(pair, tuple) or len(pair) != 2 or not _is_int(pair[0]) or pair[0] < 0
                    or not _is_real(pair[1]) or not -MAX_LOGIT_BIAS <= pair[1] <= MAX_LOGIT_BIAS):
                raise InputError(f"logit_bias entries must be (token id >= 0, bias from {-MAX_LOGIT_BIAS:g} to "
                                 f"{MAX_LOGIT_BIAS:g}) pairs, got {pair!r:.80}")
        if self.do_sample and self.temperature == 0:
            return replace(self, do_sample=False)  # temperature 0 means greedy
        return self

    def with_overrides(self, **overrides) -> SamplingParams:
        unknown = set(overrides) - {f.name for f in fields(self)}
        if unknown:
            raise InputError(f"unknown sampling setting(s) {', '.join(sorted(unknown))}; the settings are "
                             f"{', '.join(f.name for f in fields(self))}")
        if isinstance(overrides.get("logit_bias"), Mapping):
            overrides["logit_bias"] = _bias_pairs(overrides["logit_bias"])
        return replace(self, **{k: v for k, v in overrides.items() if v is not None}).validated()


def _bias_pairs(bias: Mapping) -> tuple[tuple[int, float], ...]:
    """{token id (int or its decimal string, as OpenAI's JSON sends it): bias} as sorted pairs."""
    pairs = []
    for token, value in bias.items():
        if isinstance(token, str) and token.isdigit():
            token = int(token)
        pairs.append((token, value))
    try:
        return tuple(sorted(pairs))
    except TypeError:
        raise InputError(f"logit_bias keys must be token ids, got {list(bias)[:5]!r:.80}") from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(name: str, value, expected: str, in_range) -> None:
    if not _is_real(value) or not in_range(value):
        raise InputError(f"{name} must be a finite number {expected}, got {value!r}")


_FLOAT32_MAX = torch.finfo(torch.float32).max
_FLOAT32_TINY = torch.finfo(torch.float32).tiny


class Sampler:
    """Per-generation sampling state: the random generator and which tokens each row has seen
    (for the repetition penalty). `reset()` drops it; one Sampler serves one generation."""

    def __init__(
        self,
        params: SamplingParams,
        batch_size: int,
        vocab_size: int,
        device: torch.device | str,
        forbidden: torch.Tensor | None = None,
    ) -> None:
        self.params = params.validated()
        self.forbidden = forbidden  # (vocab,) bool: tokens never to produce
        self.generator: torch.Generator | None = None
        if self.params.do_sample:
            self.generator = torch.Generator(device=device)
            if self.params.seed is not None:
                self.generator.manual_seed(self.params.seed)
            else:
                self.generator.seed()
        self.bias: torch.Tensor | None = None
        if self.params.logit_bias:
            ids = [token for token, _ in self.params.logit_bias]
            if max(ids) >= vocab_size:
                raise InputError(f"logit_bias names token id {max(ids)}; this model's vocabulary has {vocab_size} "
                                 f"tokens (ids 0 to {vocab_size - 1})")
            self.bias = torch.zeros(vocab_size, dtype=torch.float32, device=device)
            self.bias[ids] = torch.tensor([b for _, b in self.params.logit_bias], dtype=torch.float32, device=device)
        self.seen: torch.Tensor | None = None
        if self.params.repetition_penalty != 1.0:
            self.seen = torch.zeros((batch_size, vocab_size), dtype=torch.bool, device=device)

    def observe(self, token_ids: torch.Tensor) -> None:
        """Mark tokens (batch, n) as seen (prompt tokens count, as in transformers)."""
        if self.seen is not None:
            self.seen.scatter_(1, token_ids.clamp(0, self.seen.shape[1] - 1), True)

    def select_rows(self, keep: torch.Tensor) -> None:
        """Follow the batch when rows leave it."""
        if self.seen is not None:
            self.seen = self.seen[keep]

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """logits: (batch, vocab) -> next token ids (batch,)."""
        logits = logits.float()
        params = self.params
        if self.seen is not None:
            penalty = params.repetition_penalty
            penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
            logits = torch.where(self.seen, penalised, logits)
        if self.bias is not None:
            logits = logits + self.bias
        if self.seen is not None or self.bias is not None:
            # an extreme penalty overflows float32 (inf - inf = NaN in softmax); clamped, the order
            # of the logits is kept
            logits = logits.clamp(-_FLOAT32_MAX, _FLOAT32_MAX)
        if self.forbidden is not None:
            logits = logits.masked_fill(self.forbidden, float("-inf"))
        if not params.do_sample:
            return logits.argmax(dim=-1)
        if params.temperature != 1.0:
            # Shifted so that the largest logit is 0 first: dividing by a tiny temperature then gives
            # 0 and very negative numbers (softmax: the argmax), never inf - inf = NaN; the shift
            # leaves softmax, top-k and top-p unchanged. A temperature below float32's smallest
            # normal number would round to 0 in the division (0 / 0 = NaN): it is that number.
            temperature = max(params.temperature, _FLOAT32_TINY)
            logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
        if params.top_k > 0:
            kth = torch.topk(logits, min(params.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if params.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
            cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            drop_sorted = cumulative <= (1 - params.top_p)
            drop_sorted[..., -1] = False  # always keep the most likely token
            logits = logits.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
        probs = logits.softmax(dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=self.generator).squeeze(-1)
