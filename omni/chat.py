"""Qwen2.5-Omni conversation formatting.

Messages are the list of {"role", "content"} dicts Qwen's own examples use (qwen-omni-utils):
content is a string or a list of items {"type": "text", "text": ...}, {"type": "image", "image": ...},
{"type": "audio", "audio": ...}, {"type": "video", "video": ...}. The rendering is character for
character what the checkpoint's chat template produces; media items become their placeholder
(<|vision_bos|><|IMAGE|><|vision_eos|> etc.), which the encoders expand to the right token count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omni.errors import InputError

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


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    if isinstance(messages, Mapping):
        messages = [messages]
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
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


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    system_prompt: str | None = None,
    add_vision_id: bool = False,
    add_audio_id: bool = False,
    continuation: bool = False,
) -> str:
    """The prompt text. `system_prompt` is used when the conversation does not open with a system
    message (the template would otherwise insert TEMPLATE_SYSTEM_PROMPT). `continuation` renders
    messages that follow an earlier part of the conversation: no system message is inserted."""
    messages = validate_messages(messages)
    parts: list[str] = []
    counts = {"image": 0, "audio": 0, "video": 0}
    for index, message in enumerate(messages):
        if index == 0 and message["role"] != "system" and not continuation:
            parts.append(f"<|im_start|>system\n{system_prompt or TEMPLATE_SYSTEM_PROMPT}<|im_end|>\n")
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
