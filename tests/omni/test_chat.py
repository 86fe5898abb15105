"""The conversation renderer against the checkpoint's chat template run by transformers."""

from __future__ import annotations

import pytest

from omni.chat import AUDIO_SYSTEM_PROMPT, render_chat
from omni.errors import InputError

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    [
        {"role": "user", "content": [
            {"type": "image", "image": "a.png"},
            {"type": "text", "text": "What is this?"},
            {"type": "audio", "audio": "b.wav"},
            {"type": "video", "video": "c.mp4"},
            {"image_url": "http://x/y.png"},
        ]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": [{"type": "image", "image": "d.png"}, {"type": "text", "text": "And this?"}]},
    ],
]


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    from transformers import Qwen2_5OmniProcessor

    return Qwen2_5OmniProcessor.from_pretrained(tiny_checkpoint)


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("ids", [False, True])
def test_render_matches_the_chat_template(processor, conversation, add_generation_prompt, ids):
    expected = processor.apply_chat_template(
        conversation, add_generation_prompt=add_generation_prompt, tokenize=False,
        add_vision_id=ids, add_audio_id=ids,
    )
    actual = render_chat(conversation, add_generation_prompt=add_generation_prompt, add_vision_id=ids, add_audio_id=ids)
    assert actual == expected


def test_system_prompt_parameter_replaces_the_template_default():
    text = render_chat([{"role": "user", "content": "Hi"}], system_prompt=AUDIO_SYSTEM_PROMPT)
    assert text.startswith(f"<|im_start|>system\n{AUDIO_SYSTEM_PROMPT}<|im_end|>\n")


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([{"role": "robot", "content": "x"}], "role 'robot'"),
        ([{"role": "user", "content": 5}], "content must be a string or a list"),
        ([{"role": "user", "content": [{"type": "smell"}]}], "item 0 must be a dict of type text, image, audio or video"),
        (["not a dict"], "message 0 is a str"),
    ],
)
def test_bad_messages_are_named(messages, message):
    with pytest.raises(InputError, match=message):
        render_chat(messages)
