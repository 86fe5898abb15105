"""Media for the encoder tests, generated once per test session."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from omni.tools.media_factory import build_media


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    return build_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="session")
def real_videos() -> Path:
    """Real videos nobody here made: gradio (a dev dependency) ships a few in its wheel, among them
    a.mp4 (7 s, 1920x1080 H.264 with an AAC track) and world.mp4 (30 s, 480x270)."""
    spec = importlib.util.find_spec("gradio")
    if spec is None or spec.origin is None:
        pytest.skip("gradio (omni[dev]) is not installed; its media_assets hold the real videos")
    return Path(spec.origin).parent / "media_assets" / "videos"
