"""Qwen2.5-Omni conversation formatting.

Messages are the list of {"role", "content"} dicts Qwen's own examples use (qwen-omni-utils):
content is a string or a list of items {"type": "text", "text": ...}, {"type": "image", "image": ...},
{"type": "audio", "audio": ...}, {"type": "video", "video": ...}. Media items become their placeholder
(<|vision_bos|><|IMAGE|><|vision_eos|> etc.), which the encoders expand to the right token count.

The prompt text comes from the checkpoint's own chat template (`ChatTemplate`), run as transformers
runs it, or, for a checkpoint that ships none, from omni's built-in copy of the Qwen2.5-Omni format.
A turn appended to a cached conversation is the whole conversation's rendering minus the earlier
part's, so that a multi-turn session feeds exactly the text of the conversation rendered at once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jinja2
import numpy as np
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from omni.errors import CheckpointError, InputError

# The chat template's own default when a conversation has no system message.
TEMPLATE_SYSTEM_PROMPT = "You are a helpful assistant."
# Qwen2.5-Omni only speaks (its Talker was trained under) this exact system prompt.
AUDIO_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
    "auditory and visual inputs, as well as generating text and speech."
)

ROLES = ("system", "user", "assistant")
IMAGE_PLACEHOLDER = "<|vision_bos|><|IMAGE|><|vision_eos|>"
AUDIO_PLACEHOLDER = "<|audio_bos|><|AUDIO|><|audio_eos|>"
VIDEO_PLACEHOLDER = "<|vision_bos|><|VIDEO|><|vision_eos|>"


def media_kind(item: Mapping[str, Any]) -> str | None:
    """'image', 'audio', 'video', 'text' or None, decided in the chat template's order."""
    kind = item.get("type")
    if kind == "image" or "image" in item or "image_url" in item:
        return "image"
    if kind == "audio" or "audio" in item or "audio_url" in item:
        return "audio"
    if kind == "video" or "video" in item:
        return "video"
    if "text" in item:
        return "text"
    return None


def validate_messages(messages: Any, allow_empty: bool = False) -> list[dict[str, Any]]:
    if isinstance(messages, Mapping):
        messages = [messages]
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not (messages or allow_empty):
        raise InputError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InputError(f"message {index} is a {type(message).__name__}, not a dict with role and content")
        role = message.get("role")
        if role not in ROLES:
            raise InputError(f"message {index} has role {role!r}; roles are {', '.join(ROLES)}")
        content = message.get("content")
        if isinstance(content, str):
            pass
        elif isinstance(content, Sequence) and not isinstance(content, (str, bytes)):
            for position, item in enumerate(content):
                if not isinstance(item, Mapping) or media_kind(item) is None:
                    raise InputError(
                        f"message {index} content item {position} must be a dict of type text, image, audio "
                        f"or video, got {item!r:.80}"
                    )
        else:
            raise InputError(f"message {index} content must be a string or a list of items")
        checked.append(dict(message))
    return checked


@dataclass(frozen=True)
class ChatTemplate:
    """A checkpoint's Jinja chat template and what transformers hands it besides the messages."""

    source: str
    origin: str = "the chat template"  # the file it was read from, for error messages
    # the tokenizer's named special tokens (eos_token, image_token, ...): transformers passes them too
    variables: Mapping[str, str] = field(default_factory=dict)

    def compiled(self) -> jinja2.Template:
        try:
            return _compile(self.source)
        except jinja2.TemplateSyntaxError as exc:
            raise CheckpointError(
                f"{self.origin} is not a valid Jinja chat template (line {exc.lineno}: {exc.message}); fix or "
                "remove it (without one omni uses its built-in Qwen2.5-Omni format)"
            ) from exc

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool, **options: Any) -> str:
        compiled = self.compiled()
        # Options left at None are not passed at all: a template may default an undefined variable
        # differently from False (`add_vision_id if add_vision_id is defined else true`).
        context = _plain({**self.variables, **{name: value for name, value in options.items() if value is not None}})
        try:
            return compiled.render(messages=_template_messages(messages), tools=None, documents=None,
                                   add_generation_prompt=add_generation_prompt, **context)
        except SecurityError as exc:
            raise CheckpointError(f"{self.origin} tried an operation the template sandbox forbids: {exc}") from exc
        except jinja2.TemplateError as exc:  # raise_exception(...) in the template, or a failed lookup
            raise InputError(f"{self.origin} rejected the conversation: {exc}") from exc


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    system_prompt: str | None = None,
    add_vision_id: bool | None = None,
    add_audio_id: bool | None = None,
    history: Sequence[Mapping[str, Any]] | None = None,
    template: ChatTemplate | None = None,
) -> str:
    """The prompt text of `messages`, by `template` (None: omni's built-in Qwen2.5-Omni format).

    system_prompt: used as a system message when the conversation does not open with one (the
    template would otherwise insert its own default). add_vision_id / add_audio_id: number the
    pictures, videos and clips ("Picture 1: ..."); None leaves the template's default.
    history: the messages before these ones, already fed to a KV cache: only the text that follows
    them is returned (no second system block; media numbered on from the history's)."""
    messages = validate_messages(messages)
    options = {"add_vision_id": add_vision_id, "add_audio_id": add_audio_id}
    if history is None:
        return _render(template, _with_system(messages, system_prompt), add_generation_prompt, options)
    earlier = validate_messages(history, allow_empty=True)
    # the whole conversation decides whether system_prompt goes in (its first message may be in `messages`)
    conversation = _with_system(earlier + messages, system_prompt)
    before = _render(template, conversation[: len(conversation) - len(messages)], False, options)
    whole = _render(template, conversation, add_generation_prompt, options)
    if not whole.startswith(before):
        origin = template.origin if template is not None else "omni's built-in chat format"
        raise CheckpointError(
            f"{origin} renders the earlier turns differently once a new message follows them, so a new turn "
            "cannot be appended to the cached conversation; start over with the whole conversation instead "
            "(OmniSession.reset(), then send all messages at once)"
        )
    return whole[len(before):]


def _with_system(messages: list[dict[str, Any]], system_prompt: str | None) -> list[dict[str, Any]]:
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def _render(template: ChatTemplate | None, messages, add_generation_prompt: bool, options) -> str:
    if template is not None:
        return template.render(messages, add_generation_prompt, **options)
    return _render_builtin(messages, add_generation_prompt, bool(options["add_vision_id"]),
                           bool(options["add_audio_id"]))


def _render_builtin(messages, add_generation_prompt: bool, add_vision_id: bool, add_audio_id: bool) -> str:
    """The published Qwen2.5-Omni template, written out (tests hold it to transformers running the
    published text)."""
    parts: list[str] = []
    counts = {"image": 0, "audio": 0, "video": 0}
    for index, message in enumerate(messages):
        if index == 0 and message["role"] != "system":
            parts.append(f"<|im_start|>system\n{TEMPLATE_SYSTEM_PROMPT}<|im_end|>\n")
        parts.append(f"<|im_start|>{message['role']}\n")
        content = message["content"]
        if isinstance(content, str):
            parts.append(content)
        else:
            for item in content:
                kind = media_kind(item)
                if kind == "text":
                    parts.append(str(item["text"]))
                    continue
                counts[kind] += 1
                if kind == "image":
                    parts.append((f"Picture {counts[kind]}: " if add_vision_id else "") + IMAGE_PLACEHOLDER)
                elif kind == "audio":
                    parts.append((f"Audio {counts[kind]}: " if add_audio_id else "") + AUDIO_PLACEHOLDER)
                else:
                    parts.append((f"Video {counts[kind]}: " if add_vision_id else "") + VIDEO_PLACEHOLDER)
        parts.append("<|im_end|>\n")
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


# ------------------------------------------------------------------------------------------------
# The Jinja environment, as transformers (utils/chat_template_utils.py) builds it: templates come
# from the hub and are untrusted code, so they run in jinja2's immutable sandbox and only ever see
# plain JSON-like data.


class _GenerationBlock(Extension):
    """transformers marks assistant text with {% generation %} for training masks; the text itself
    renders unchanged, which is all a prompt needs."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


class _Namespace(jinja2.utils.Namespace):
    """`namespace(...)` refusing underscore names, which could reach CPython internals."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attributes = dict(*args, **kwargs)
        for name in attributes:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attributes)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"a chat template cannot set namespace attribute {name!r}")


class _DictFactory:
    """`dict(...)` for templates without handing them the dict type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message):
    raise jinja2.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja's own tojson escapes <, >, & and ' for HTML, which a prompt must not
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


@functools.lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_DictFactory(),
                               namespace=_Namespace)
    return environment.from_string(source)


def _template_messages(messages: list[dict[str, Any]]) -> list[Any]:
    """The messages as the transformers processor hands them over: keys holding None dropped,
    OpenAI {"type": "image_url", "image_url": ...} items as {"type": "image", "url": ...}, and
    everything reduced to plain data."""
    normalized = []
    for message in messages:
        message = {key: value for key, value in message.items() if value is not None}
        content = message.get("content")
        if isinstance(content, list):
            message["content"] = [_from_openai_image(item) for item in content]
        normalized.append(message)
    return _plain(normalized)


def _from_openai_image(item: Any) -> Any:
    if isinstance(item, Mapping) and item.get("type") == "image_url" and "image_url" in item:
        url = item["image_url"]
        return {"type": "image", "url": url.get("url", "") if isinstance(url, Mapping) else url}
    return item


def _plain(value: Any) -> Any:
    """JSON-like data only: a decoded image, array or tensor in a content item becomes "<TypeName>"
    (templates test whether media keys are present, never read them), and str/int/float subclasses
    lose their extra methods, which the sandbox would not know to block."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    if isinstance(value, np.generic):
        return _plain(value.item())  # np.bool_(False) must stay falsy, not become a placeholder string
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):  # pydantic messages (the OpenAI SDK's)
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"
