"""Token sampling: greedy, temperature, top-k, top-p, repetition penalty, seeded.

The order of the logit transforms is the one transformers' `generate` applies (repetition penalty,
forbidden tokens, temperature, top-k, top-p), so the same settings mean the same distribution.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from omni.errors import InputError


@dataclass(frozen=True)
class SamplingParams:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def validated(self) -> SamplingParams:
        if self.temperature < 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise InputError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.do_sample and self.temperature == 0:
            return replace(self, do_sample=False)  # temperature 0 means greedy
        return self

    def with_overrides(self, **overrides) -> SamplingParams:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None}).validated()


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
        if self.forbidden is not None:
            logits = logits.masked_fill(self.forbidden, float("-inf"))
        if not params.do_sample:
            return logits.argmax(dim=-1)
        if params.temperature != 1.0:
            logits = logits / params.temperature
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
