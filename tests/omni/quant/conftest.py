"""Teacher-forced logits of a loaded Thinker over a fixed text: the quantization tests' accuracy measure.

Teacher forcing (the prompt, then the 64 reference tokens fed one decoding step at a time through the
KV cache, the logits of each step kept) compares two models at every step on the same inputs, along
the path a reply takes (one-row steps: the quantized kernels' decode path); free-running greedy
output of a random model diverges after its first flipped token and says nothing about the error.
"""

from __future__ import annotations

import pytest
import torch

TEXT = ("The quick brown fox jumps over the lazy dog while the old clock in the hallway strikes seven, and "
        "somewhere a kettle begins to sing as the morning light spills across the kitchen table, where a "
        "letter lies unopened beside a cup of cold tea and a small jar of honey from the market. Outside, two "
        "children argue about whether clouds are heavier on Tuesdays, and a postman whistles a tune that nobody "
        "has heard since the winter the river froze.")
FORCED_TOKENS = 64


def teacher_forced_logits(loaded) -> torch.Tensor:
    """Logits (64, vocab), in float64, of the 64 decoding steps that feed TEXT's last 64 tokens one at
    a time after a prefill of the rest."""
    ids = loaded.tokenizer.encode(TEXT)
    assert len(ids) > FORCED_TOKENS + 4, "the fixed text must be longer than the forced span"
    prompt, forced = ids[:-FORCED_TOKENS], ids[-FORCED_TOKENS:]
    thinker, device = loaded.model.thinker, loaded.device
    cache = thinker.model.new_cache(1, len(ids))
    logits = []
    with torch.inference_mode():
        positions = torch.arange(len(prompt), device=device).expand(3, 1, -1)
        thinker(thinker.embed(torch.tensor([prompt], device=device)), positions, cache=cache)
        for offset, token in enumerate(forced):
            position = torch.full((3, 1, 1), len(prompt) + offset, device=device)
            hidden = thinker(thinker.embed(torch.tensor([[token]], device=device)), position, cache=cache)
            logits.append(thinker.logits(hidden[:, -1]))
    return torch.cat(logits).to(torch.float64)


def cosine_per_position(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


@pytest.fixture(scope="session")
def forced_logits():
    """teacher_forced_logits(loaded) -> (64, vocab) float64."""
    return teacher_forced_logits
