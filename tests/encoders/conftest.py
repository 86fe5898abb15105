"""Media for the encoder tests, generated once per test session."""

from __future__ import annotations

import pytest

from omni.tools.media_factory import build_media


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    return build_media(tmp_path_factory.mktemp("media"))
