"""omni's tokenizer against the transformers tokenizer of the same checkpoint, and the streaming
detokenizer's promises (no split characters, no replacement characters)."""

from __future__ import annotations

import random

import pytest

from omni.tokenizer import Tokenizer

TEXTS = [
    "Hello, world!",
    "<|im_start|>user\nWhat is in this picture?<|im_end|>\n<|im_start|>assistant\n",
    "数字 12345 和中文混合，还有 emoji 🙂🎉 and Ünïcödé.",
    "  leading spaces\n\n\ttabs and\r\nwindows newlines   ",
    "<|vision_bos|><|IMAGE|><|IMAGE|><|vision_eos|> then <|audio_bos|><|AUDIO|><|audio_eos|>",
    "don't won't I'm they'll we've",
    "日本語のテキストと한국어 텍스트",
]


@pytest.fixture(scope="module")
def both(tiny_checkpoint):
    from transformers import AutoTokenizer

    return Tokenizer.from_checkpoint(tiny_checkpoint), AutoTokenizer.from_pretrained(tiny_checkpoint)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_and_decode_match_transformers(both, text):
    ours, reference = both
    ids = ours.encode(text)
    assert ids == reference(text, add_special_tokens=False).input_ids
    assert ours.decode(ids, skip_special_tokens=False) == reference.decode(ids, skip_special_tokens=False)
    assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True)


def test_special_tokens_at_their_real_ids(both):
    ours, _ = both
    expected = {
        "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|AUDIO|>": 151646,
        "<|audio_bos|>": 151647, "<|audio_eos|>": 151648, "<|vision_bos|>": 151652, "<|vision_eos|>": 151653,
        "<|IMAGE|>": 151655, "<|VIDEO|>": 151656,
    }
    for token, token_id in expected.items():
        assert ours.token_id(token) == token_id
        assert ours.encode(token) == [token_id]


def test_vocab_and_merges_fallback_tokenizes_identically(tiny_checkpoint, tmp_path):
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (tmp_path / name).symlink_to(tiny_checkpoint / name)
    fallback = Tokenizer.from_checkpoint(tmp_path)
    primary = Tokenizer.from_checkpoint(tiny_checkpoint)
    for text in TEXTS:
        assert fallback.encode(text) == primary.encode(text)


def test_streaming_deltas_join_to_the_full_decode(both):
    ours, _ = both
    for text in TEXTS:
        ids = ours.encode(text)
        detokenizer = ours.detokenizer()
        deltas = [detokenizer.push(token_id) for token_id in ids] + [detokenizer.flush()]
        assert "".join(deltas) == ours.decode(ids)
        for delta in deltas:
            delta.encode("utf-8")  # every delta is whole characters
            assert "\ufffd" not in delta


def test_multibyte_character_split_over_tokens_is_held_back(both):
    ours, _ = both
    # '𓀀' is three byte-level tokens in Qwen's vocabulary: nothing may be emitted mid-character.
    ids = ours.encode("𓀀")
    assert len(ids) > 1
    detokenizer = ours.detokenizer()
    emitted = [detokenizer.push(token_id) for token_id in ids]
    assert emitted[:-1] == [""] * (len(ids) - 1) and emitted[-1] == "𓀀"


def test_random_token_streams_never_emit_replacement_characters(both):
    ours, _ = both
    rng = random.Random(0)
    for _ in range(20):
        detokenizer = ours.detokenizer()
        out = "".join(detokenizer.push(rng.randrange(0, 151700)) for _ in range(200)) + detokenizer.flush()
        assert "\ufffd" not in out
        out.encode("utf-8")


def test_special_tokens_are_skipped_in_stream_unless_asked(both):
    ours, _ = both
    ids = ours.encode("hi<|im_end|>")
    assert "".join(ours.detokenizer().push(i) for i in ids) == "hi"
    keep = ours.detokenizer(skip_special_tokens=False)
    assert "".join(keep.push(i) for i in ids) == "hi<|im_end|>"
