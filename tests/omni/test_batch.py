"""Batched generation: each row equals generating that conversation alone."""

from __future__ import annotations

import pytest

from omni.batch import generate_batch
from omni.errors import InputError
from omni.tools.media_factory import drawing, tone


def test_batch_rows_equal_single_runs(tiny_text_model, tmp_path):
    image_path = tmp_path / "picture.png"
    drawing(96, 64, seed=3).save(image_path)
    conversations = [
        [{"role": "user", "content": "Short."}],
        [{"role": "user", "content": "A much longer question about the weather in three cities and why."}],
        [{"role": "user", "content": [{"type": "image", "image": str(image_path)}, {"type": "text", "text": "What is it?"}]}],
        [{"role": "user", "content": [{"type": "audio", "audio": tone(1.0, rate=16000)[0]}, {"type": "text", "text": "Transcribe."}]}],
    ]
    batched = generate_batch(tiny_text_model, conversations, max_new_tokens=12)
    alone = [generate_batch(tiny_text_model, [c], max_new_tokens=12)[0] for c in conversations]
    assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
    assert [r.text for r in batched] == [r.text for r in alone]
    assert all(r.finish_reason in ("stop", "length") for r in batched)
    assert batched[2].prompt_tokens > batched[0].prompt_tokens  # the image expanded to many tokens


def test_empty_batch_is_refused(tiny_text_model):
    with pytest.raises(InputError, match="at least one conversation"):
        generate_batch(tiny_text_model, [])
