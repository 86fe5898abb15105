"""What the Qwen3-Omni parity tests do alike to transformers' reference model."""

from __future__ import annotations

import torch


def widen_random_weights(reference, seed: int = 1) -> None:
    """Redraw the reference's random Talker weights (std 0.3, norms 1 +- 0.1) and the Thinker's embedding
    and vocabulary projection (std 0.5), in place, from one seeded generator. At the init's 0.02 scale the
    greedy choices are near-ties that a last-bit difference could flip, and the Talker's choices hardly
    vary from frame to frame."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in reference.talker.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(1.0 + 0.1 * torch.randn(parameter.shape, generator=generator))
            else:
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
        for name, parameter in reference.thinker.named_parameters():
            if "embed_tokens" in name or "lm_head" in name:
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
