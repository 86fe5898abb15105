"""Multimodal rotary position embedding (M-RoPE) for Qwen2.5 and Qwen3 decoders.

Positions are 3-D (time, height, width). Each rotary frequency of a head is driven by one position
component. Qwen2.5 assigns them in three blocks (`mrope_section`, e.g. 16/24/24 of 64 frequency
pairs: section i rotates by component i); Qwen3 interleaves them (T, H, W, T, H, W, ..., then T for
the rest: `interleaved_section_index`). Both are only a different component-of-frequency index fed
to `mrope_cos_sin`. For text all three components are equal and this is ordinary 1-D RoPE.
"""

from __future__ import annotations

import torch

from omni.layers import rotate_half


def inverse_frequencies(head_dim: int, theta: float, device: torch.device | str | None = None) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim))


def section_index(mrope_section: tuple[int, int, int], device: torch.device | str | None = None) -> torch.Tensor:
    """For each of the head_dim/2 frequencies, which position component (0 t, 1 h, 2 w) drives it."""
    return torch.cat([torch.full((size,), i % 3, dtype=torch.long) for i, size in enumerate(mrope_section)]).to(device)


def interleaved_section_index(mrope_section: tuple[int, int, int],
                              device: torch.device | str | None = None) -> torch.Tensor:
    """Qwen3's interleaved M-RoPE (transformers' `apply_interleaved_mrope`): frequency j is driven by
    height when j % 3 == 1 and j < 3 * section[1], by width when j % 3 == 2 and j < 3 * section[2],
    else by time. Spreading the axes over the whole spectrum gives each axis high and low frequencies."""
    frequencies = torch.arange(sum(mrope_section))
    component = torch.zeros_like(frequencies)
    component[(frequencies % 3 == 1) & (frequencies < 3 * mrope_section[1])] = 1
    component[(frequencies % 3 == 2) & (frequencies < 3 * mrope_section[2])] = 2
    return component.to(device)


def mrope_cos_sin(
    position_ids: torch.Tensor,
    inv_freq: torch.Tensor,
    component_of_frequency: torch.Tensor,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (batch, seq, head_dim) for 3-D `position_ids` of shape (3, batch, seq).

    Picking the component per frequency before the trigonometry gives the same numbers as computing
    all three angle sets and recombining them (what the reference does), at a third of the cost.
    """
    # (batch, seq, head_dim/2): the position component each frequency uses
    positions = position_ids.permute(1, 2, 0)[..., component_of_frequency].float()
    freqs = positions * inv_freq
    cos, sin = freqs.cos(), freqs.sin()
    cos = torch.cat((cos, cos), dim=-1).to(dtype)
    sin = torch.cat((sin, sin), dim=-1).to(dtype)
    return cos, sin


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k: (batch, heads, seq, head_dim); cos, sin: (batch, seq, head_dim)."""
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)
