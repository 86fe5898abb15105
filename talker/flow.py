"""Flow-matching sampling of the Token2Wav DiT: integrate the predicted velocity from noise (t = 0)
to a mel spectrogram (t = 1) with classifier-free guidance.

The time grid is `steps` evenly spaced points bent by sway sampling (t + s (cos(pi t / 2) - 1 + t),
s = -1 spends more steps early, where the flow changes most), integrated with the 3/8-rule
Runge-Kutta method: 4 velocity evaluations per interval, both guidance branches in one batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FlowOptions:
    steps: int = 10  # time points (steps - 1 intervals)
    guidance_scale: float = 0.5
    sway_coefficient: float = -1.0


def time_grid(options: FlowOptions, device: torch.device | None = None) -> torch.Tensor:
    grid = torch.linspace(0, 1, options.steps, device=device, dtype=torch.float32)
    if options.sway_coefficient is not None:
        grid = grid + options.sway_coefficient * (torch.cos(torch.pi / 2 * grid) - 1 + grid)
    return grid


def evaluation_times(grid: torch.Tensor) -> torch.Tensor:
    """The flow times at which `integrate` evaluates the velocity, in order: four per interval."""
    start, end = grid[:-1], grid[1:]
    step = end - start
    return torch.stack([start, start + step * (1 / 3), start + step * (2 / 3), end], dim=1).flatten()


def integrate(velocity: Callable[[int, torch.Tensor], torch.Tensor], start: torch.Tensor,
              grid: torch.Tensor) -> torch.Tensor:
    """Solve d state / dt = velocity(t, state) from `start` over `grid` with 3/8-rule RK4. The
    callback is velocity(evaluation, state): the number of the evaluation, whose flow time is
    evaluation_times(grid)[evaluation]."""
    state = start
    third = 1 / 3
    for interval, (t0, t1) in enumerate(zip(grid[:-1], grid[1:])):
        step = t1 - t0
        first = 4 * interval
        k1 = velocity(first, state)
        k2 = velocity(first + 1, state + step * k1 * third)
        k3 = velocity(first + 2, state + step * (k2 - k1 * third))
        k4 = velocity(first + 3, state + step * (k1 - k2 + k3))
        state = state + (k1 + 3 * (k2 + k3) + k4) * step / 8
    return state


def guided(prediction: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Combine the stacked (conditional, unconditional) predictions."""
    conditional, unconditional = prediction.chunk(2, dim=0)
    return conditional + (conditional - unconditional) * guidance_scale
