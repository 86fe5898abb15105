"""Shared fixtures: random-weight checkpoints built once (and cached across runs) per preset."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("OMNI_TEST_CACHE", REPO / ".omni-cache"))
STOP_IDS = [151645, 151643]
PAD_ID = 151643


def build_checkpoint(preset: str) -> Path:
    from omni.tools.make_checkpoint import cached_checkpoint

    return cached_checkpoint(preset, CACHE)


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    return build_checkpoint("tiny")


@pytest.fixture(scope="session")
def small_checkpoint() -> Path:
    return build_checkpoint("small")


@pytest.fixture(scope="session", params=["tiny", "small"])
def checkpoint(request) -> Path:
    return build_checkpoint(request.param)


@pytest.fixture(scope="session")
def tiny_text_model(tiny_checkpoint):
    from omni.loading import load_model

    return load_model(tiny_checkpoint, dtype="fp32", audio_output=False)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


def run_in_threads(function, arguments: list) -> list:
    """function(argument) for every argument, each in its own thread at once; the results in order.
    An exception in any thread is raised here."""
    results, errors = [None] * len(arguments), []

    def work(index):
        try:
            results[index] = function(arguments[index])
        except Exception as exc:  # raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(arguments))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def build_qwen3_checkpoint(preset: str) -> Path:
    from omni.tools.qwen3_checkpoint import cached_qwen3_checkpoint

    return cached_qwen3_checkpoint(preset, CACHE)


@pytest.fixture(scope="session")
def qwen3_tiny_checkpoint() -> Path:
    """A random-weight Qwen3-Omni checkpoint in the published layout (omni.tools.qwen3_checkpoint)."""
    return build_qwen3_checkpoint("tiny")


@pytest.fixture(scope="session")
def qwen3_small_checkpoint() -> Path:
    return build_qwen3_checkpoint("small")
