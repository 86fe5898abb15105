"""Benchmarks on a shared, noisy machine: the paths compared take turns, so a slow spell hits all of
them rather than one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def take_turns(runs: Sequence[Callable[[], Any]], repeats: int) -> list[list[Any]]:
    """Run each path once untimed (warm-up), then `repeats` rounds of each in turn; returns, per path,
    what its runs returned."""
    for run in runs:
        run()
    results: list[list[Any]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, out in zip(runs, results):
            out.append(run())
    return results
