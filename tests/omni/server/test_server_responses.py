"""Response helpers: base64 built in slices (so that a thread encoding a long WAV gives the event
loop the GIL between slices) is exactly the one-piece base64."""

from __future__ import annotations

import base64
import os

import pytest

from omni.server.responses import B64_SLICE_BYTES, b64


@pytest.mark.parametrize("size", [0, 1, B64_SLICE_BYTES - 1, B64_SLICE_BYTES, B64_SLICE_BYTES + 1,
                                  3 * B64_SLICE_BYTES + 2])
def test_sliced_base64_equals_base64(size):
    data = os.urandom(size)
    assert b64(data) == base64.b64encode(data).decode("ascii")
