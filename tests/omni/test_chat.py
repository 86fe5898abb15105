"""Prompt rendering against transformers running the published Qwen2.5-Omni chat template.

The template text is the one Qwen publishes for Qwen2.5-Omni-7B / -3B, kept in tests/data with its
source; omni renders it with its own Jinja environment (and, for checkpoints without a template, with
its built-in format), transformers' processor renders it with its own: both must agree."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import numpy as np
import pytest
from PIL import Image

from omni.chat import AUDIO_SYSTEM_PROMPT, ChatTemplate, render_chat
from omni.errors import CheckpointError, InputError
from omni.tokenizer import Tokenizer

PUBLISHED = json.loads((Path(__file__).parents[1] / "data" / "qwen2_5_omni_chat_template.json")
                       .read_text(encoding="utf-8"))["chat_template"]

CONVERSATIONS = {
    "string": [{"role": "user", "content": "Hi"}],
    "system_and_list": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    "every_media_kind": [
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
    "several_turns": [
        {"role": "system", "content": [{"type": "text", "text": "You answer in French."}]},
        {"role": "user", "content": "Bonjour"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": [{"audio_url": "http://x/a.wav"}, {"type": "text", "text": "Et ça ?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Un chien."}]},
        {"role": "user", "content": [{"type": "video", "video": ["f0.png", "f1.png"]},
                                     {"type": "image", "image": "e.png"}, {"type": "text", "text": "Et ça ?"}]},
        {"role": "assistant", "content": "Une rivière."},
        {"role": "user", "content": [{"type": "audio", "audio": "g.wav"}, {"type": "text", "text": "Fin."}]},
    ],
    "decoded_media_and_openai_items": [
        {"role": "user", "content": [
            {"type": "audio", "audio": np.zeros(1600, np.float32)},
            {"type": "image", "image": Image.new("RGB", (4, 4))},
            {"type": "image_url", "image_url": {"url": "http://x/z.png"}},
            {"type": "text", "text": "<b> & 'quotes' é"},
        ], "name": None},
    ],
}


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    from transformers import Qwen2_5OmniProcessor

    return Qwen2_5OmniProcessor.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def published(tiny_checkpoint):
    """The published text in omni's renderer, with the test tokenizer's special-token variables."""
    variables = Tokenizer.from_checkpoint(tiny_checkpoint).chat_template.variables
    return ChatTemplate(PUBLISHED, origin="the published template", variables=variables)


def _reference(processor, conversation, add_generation_prompt=True, template=PUBLISHED, **options):
    """transformers' rendering; options left at None are not passed (as omni leaves them out)."""
    passed = {name: value for name, value in options.items() if value is not None}
    return processor.apply_chat_template(conversation, chat_template=template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt, **passed)


def _with_system(conversation, system_prompt):
    if system_prompt and conversation[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *conversation]
    return conversation


@pytest.mark.parametrize("renderer", ["template", "builtin"])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("ids", [None, False, True])
def test_render_matches_transformers_on_the_published_template(processor, published, renderer, name,
                                                                add_generation_prompt, ids):
    conversation = CONVERSATIONS[name]
    expected = _reference(processor, conversation, add_generation_prompt, add_vision_id=ids, add_audio_id=ids)
    actual = render_chat(conversation, add_generation_prompt=add_generation_prompt, add_vision_id=ids,
                         add_audio_id=ids, template=published if renderer == "template" else None)
    assert actual == expected


@pytest.mark.parametrize("renderer", ["template", "builtin"])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_system_prompt_is_a_system_message_unless_the_conversation_has_one(processor, published, renderer, name):
    conversation = CONVERSATIONS[name]
    template = published if renderer == "template" else None
    actual = render_chat(conversation, system_prompt=AUDIO_SYSTEM_PROMPT, template=template)
    assert actual == _reference(processor, _with_system(conversation, AUDIO_SYSTEM_PROMPT))
    opens_with_system = conversation[0]["role"] == "system"
    assert actual.startswith(f"<|im_start|>system\n{AUDIO_SYSTEM_PROMPT}<|im_end|>\n") != opens_with_system


def _splits(conversation):
    """(history, new messages) at every turn boundary: after each assistant reply."""
    return [(conversation[:i], conversation[i:]) for i, message in enumerate(conversation)
            if i > 0 and conversation[i - 1]["role"] == "assistant"]


@pytest.mark.parametrize("renderer", ["template", "builtin"])
@pytest.mark.parametrize("system_prompt", [None, AUDIO_SYSTEM_PROMPT])
@pytest.mark.parametrize("ids", [None, True])
def test_a_continued_turn_is_the_rest_of_the_whole_conversation(processor, published, renderer, system_prompt, ids):
    template = published if renderer == "template" else None
    checked = 0
    for name in ("every_media_kind", "several_turns"):
        for history, new in _splits(CONVERSATIONS[name]):
            continued = render_chat(new, system_prompt=system_prompt, add_vision_id=ids, add_audio_id=ids,
                                    history=history, template=template)
            before = _reference(processor, _with_system(history, system_prompt), add_generation_prompt=False,
                                add_vision_id=ids, add_audio_id=ids)
            whole = _reference(processor, _with_system(history + new, system_prompt), add_vision_id=ids,
                               add_audio_id=ids)
            assert before + continued == whole
            assert continued.startswith("<|im_start|>user\n") and "<|im_start|>system" not in continued
            checked += 1
    assert checked == 4


def test_media_numbering_continues_across_turns(processor, published):
    """What omni fed before: a continued turn rendered on its own restarted the numbering at
    "Picture 1", while the conversation rendered at once calls that picture (after the first turn's
    two) "Picture 3"."""
    conversation = CONVERSATIONS["every_media_kind"]
    history, new = conversation[:2], conversation[2:]
    whole = _reference(processor, conversation, add_vision_id=True)
    assert "Picture 3: <|vision_bos|>" in whole
    alone = render_chat(new, add_vision_id=True, template=published)
    assert "Picture 1: <|vision_bos|>" in alone and "Picture 3" not in alone
    continued = render_chat(new, add_vision_id=True, history=history, template=published)
    assert whole.endswith(continued) and "Picture 3: <|vision_bos|>" in continued


@pytest.mark.parametrize("name", ["string", "system_and_list"])
@pytest.mark.parametrize("system_prompt", [None, AUDIO_SYSTEM_PROMPT])
def test_an_empty_history_renders_the_whole_conversation(processor, published, name, system_prompt):
    conversation = CONVERSATIONS[name]
    continued = render_chat(conversation, system_prompt=system_prompt, history=[], template=published)
    inserted = system_prompt is not None and conversation[0]["role"] != "system"
    before = f"<|im_start|>system\n{system_prompt}<|im_end|>\n" if inserted else ""
    assert before + continued == _reference(processor, _with_system(conversation, system_prompt))


def test_a_template_that_rewrites_earlier_turns_cannot_continue_a_conversation():
    last_is_special = ChatTemplate(
        "{% for m in messages %}{% if loop.last %}[last]{% endif %}{{ m['content'] }}{% endfor %}", origin="T"
    )
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(CheckpointError, match="T renders the earlier turns differently.*OmniSession.reset"):
        render_chat([{"role": "user", "content": "c"}], history=history, template=last_is_special)


# The Jinja environment: the same output as transformers' for what templates on the hub use.
ENVIRONMENT_TEMPLATES = {
    "tojson_without_html_escapes": "{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}",
    "media_objects_become_placeholders": "{% for item in messages[0]['content'] %}{{ item }};{% endfor %}",
    "special_token_variables": "{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ image_token }}|"
                               "{{ audio_bos_token }}",
    "undefined_options_stay_undefined": "{{ add_vision_id is defined }}|{{ tools }}|{{ documents }}",
    "trim_and_lstrip_blocks": "{% for m in messages %}\n    {% if m['role'] == 'user' %}\n[{{ m['role'] }}]\n"
                              "    {% endif %}\n{% endfor %}\n",
    "loop_controls": "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m['role'] }}{% endfor %}",
    "generation_block": "{% for m in messages %}{% generation %}<{{ m['role'] }}>{% endgeneration %}{% endfor %}",
    "namespace_and_dict": "{% set n = namespace(count=0) %}{% for m in messages %}{% set n.count = n.count + 1 %}"
                          "{% endfor %}{{ n.count }}{{ dict(a=1) | tojson }}{{ strftime_now('%Y') }}",
}


@pytest.mark.parametrize("name", list(ENVIRONMENT_TEMPLATES))
def test_the_jinja_environment_matches_transformers(processor, published, name):
    source = ENVIRONMENT_TEMPLATES[name]
    conversation = CONVERSATIONS["decoded_media_and_openai_items"] + CONVERSATIONS["several_turns"][:3]
    actual = render_chat(conversation, template=ChatTemplate(source, variables=published.variables))
    assert actual == _reference(processor, conversation, template=source)


def test_raise_exception_in_a_template_is_an_input_error(processor):
    source = ("{% if messages[0]['role'] != 'user' %}{{ raise_exception('the first message must be a user one') }}"
              "{% endif %}")
    conversation = [{"role": "assistant", "content": "x"}]
    with pytest.raises(jinja2.TemplateError, match="must be a user one"):
        _reference(processor, conversation, template=source)
    with pytest.raises(InputError, match="the chat template in T rejected the conversation: the first message must"):
        render_chat(conversation, template=ChatTemplate(source, origin="the chat template in T"))


@pytest.mark.parametrize("source", [
    "{{ messages.__class__.__mro__ }}",
    "{% set n = namespace() %}{% set n._hidden = 1 %}{{ n._hidden }}",
    "{{ messages.append(1) }}",  # the sandbox is immutable: no mutating calls on the caller's data
])
def test_the_sandbox_refuses_what_transformers_refuses(processor, source):
    conversation = [{"role": "user", "content": "x"}]
    with pytest.raises(jinja2.exceptions.SecurityError):
        _reference(processor, conversation, template=source)
    with pytest.raises(CheckpointError, match="forbids"):
        render_chat(conversation, template=ChatTemplate(source))


def test_a_broken_template_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match=r"the file X is not a valid Jinja chat template \(line 1"):
        ChatTemplate("{% for %}", origin="the file X").compiled()


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([{"role": "robot", "content": "x"}], "role 'robot'"),
        ([{"role": "user", "content": 5}], "content must be a string or a list"),
        ([{"role": "user", "content": [{"type": "smell"}]}],
         "item 0 must be a dict of type text, image, audio or video"),
        (["not a dict"], "message 0 is a str"),
    ],
)
def test_bad_messages_are_named(messages, message):
    with pytest.raises(InputError, match=message):
        render_chat(messages)
    if messages:  # an empty history is a conversation's start; a malformed one is named the same way
        with pytest.raises(InputError, match=message):
            render_chat([{"role": "user", "content": "x"}], history=messages)
