"""A validated Chat Completions request turned into what one OmniSession reply needs.

System (and developer) messages become the session's system prompt. Assistant messages are earlier
turns: their text content, or, for a spoken reply sent back as {"audio": {"id": ...}}, the transcript
this server remembers for that id (looked up on the event loop beforehand: see `audio_ids`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omni.server.errors import ApiError
from omni.server.media_policy import MediaPolicy
from omni.server.protocol import (
    AUDIO_OUTPUT_FORMATS, AudioOutput, AudioURLPart, ChatCompletionRequest, ChatMessage, ImagePart, InputAudioPart,
    MediaURL, TextPart, VideoURLPart,
)


@dataclass(frozen=True)
class RequestLimits:
    """The server's limits that depend on its configuration and model."""

    max_tokens: int  # largest max_tokens a request may ask
    vocab_size: int  # logit_bias token ids must be below it
    max_media_items: int  # images, audio clips and videos per request


@dataclass(frozen=True)
class OmniRequest:
    """What one HTTP request asks of an OmniSession."""

    messages: list[dict[str, Any]]
    system_prompt: str | None
    return_audio: bool
    voice: str | None
    audio_format: str
    max_new_tokens: int | None
    sampling: dict[str, Any] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False


def audio_ids(request: ChatCompletionRequest) -> list[str]:
    """The audio ids the request's assistant messages refer to."""
    return [m.audio.id for m in request.messages if m.role == "assistant" and m.content is None and m.audio]


def to_omni_request(
    request: ChatCompletionRequest,
    policy: MediaPolicy,
    transcripts: Mapping[str, str],
    limits: RequestLimits,
) -> OmniRequest:
    media_items = sum(1 for m in request.messages if isinstance(m.content, list)
                      for part in m.content if not isinstance(part, TextPart))
    if media_items > limits.max_media_items:
        raise ApiError(400, f"the messages hold {media_items} media items (images, audio clips, videos); this "
                            f"server accepts at most {limits.max_media_items} (--max-media-items)",
                       code="invalid_request", param="messages")
    system_texts: list[str] = []
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(request.messages):
        param = f"messages.{index}"
        if message.role in ("system", "developer"):
            system_texts.append(_text_only(message, param))
        elif message.role == "assistant":
            messages.append({"role": "assistant", "content": _assistant_text(message, param, transcripts)})
        else:
            messages.append({"role": "user", "content": _user_content(message, param, policy)})
    if not any(m["role"] == "user" for m in messages):
        raise ApiError(400, "messages must hold at least one user message", code="invalid_request", param="messages")

    return_audio = "audio" in (request.modalities or [])
    audio = request.audio or AudioOutput()
    if audio.format not in AUDIO_OUTPUT_FORMATS:
        raise ApiError(400, f"audio.format {audio.format!r} is not supported; use one of "
                            f"{', '.join(AUDIO_OUTPUT_FORMATS)}", code="unsupported_audio_format", param="audio.format")
    return OmniRequest(
        messages=messages,
        system_prompt="\n".join(system_texts) if system_texts else None,
        return_audio=return_audio,
        voice=audio.voice,
        audio_format=audio.format,
        max_new_tokens=_max_new_tokens(request, limits.max_tokens),
        sampling=_sampling(request, limits.vocab_size),
        stop=(request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ()),
        stream=request.stream,
        include_usage=bool(request.stream_options and request.stream_options.include_usage),
    )


def _max_new_tokens(request: ChatCompletionRequest, limit: int) -> int | None:
    # max_completion_tokens is OpenAI's current name; max_tokens the deprecated one
    for name in ("max_completion_tokens", "max_tokens"):
        value = getattr(request, name)
        if value is not None:
            if value > limit:
                raise ApiError(400, f"{name} is {value}, over this server's limit of {limit} (--max-tokens-limit)",
                               code="invalid_request", param=name)
            return value
    return None


def _sampling(request: ChatCompletionRequest, vocab_size: int) -> dict[str, Any]:
    sampling = {"top_p": request.top_p, "top_k": request.top_k, "seed": request.seed,
                "repetition_penalty": request.repetition_penalty}
    if request.temperature is not None:
        sampling.update(do_sample=request.temperature > 0, temperature=request.temperature)
    if request.logit_bias:
        bias = []
        for key, value in request.logit_bias.items():
            if not key.isdigit() or int(key) >= vocab_size:
                raise ApiError(400, f"logit_bias key {key[:40]!r} is not a token id of this model (0 to "
                                    f"{vocab_size - 1})", code="invalid_request", param=f"logit_bias.{key[:40]}")
            bias.append((int(key), float(value)))
        sampling["logit_bias"] = tuple(sorted(bias))
    return {key: value for key, value in sampling.items() if value is not None}


def _text_only(message: ChatMessage, param: str) -> str:
    if isinstance(message.content, str):
        return message.content
    if message.content is None:
        raise ApiError(400, f"{param}: a {message.role} message needs content", code="invalid_request", param=param)
    texts = []
    for position, part in enumerate(message.content):
        if not isinstance(part, TextPart):
            raise ApiError(400, f"{param}.content.{position}: {message.role} messages may only hold text parts, "
                                f"got {part.type}", code="invalid_request", param=f"{param}.content.{position}")
        texts.append(part.text)
    return "".join(texts)


def _assistant_text(message: ChatMessage, param: str, transcripts: Mapping[str, str]) -> str:
    if message.content is not None:
        return _text_only(message, param)
    if message.audio is not None:
        transcript = transcripts.get(message.audio.id)
        if transcript is None:
            raise ApiError(400, f"{param}.audio.id {message.audio.id!r} is unknown or expired on this server; send "
                                "the reply's transcript as the message content instead",
                           code="unknown_audio_id", param=f"{param}.audio.id")
        return transcript
    raise ApiError(400, f"{param}: an assistant message needs content or audio.id", code="invalid_request", param=param)


def _user_content(message: ChatMessage, param: str, policy: MediaPolicy) -> str | list[dict[str, Any]]:
    content = message.content
    if isinstance(content, str) or content is None:
        if not content or not content.strip():
            raise ApiError(400, f"{param}: the user message is empty", code="invalid_request", param=f"{param}.content")
        return content
    if not content:
        raise ApiError(400, f"{param}: the user message has no content parts", code="invalid_request",
                       param=f"{param}.content")
    items: list[dict[str, Any]] = []
    for position, part in enumerate(content):
        where = f"{param}.content.{position}"
        if isinstance(part, TextPart):
            items.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            items.append({"type": "image", "image": policy.source(_url(part.image_url), "image", f"{where}.image_url")})
        elif isinstance(part, AudioURLPart):
            items.append({"type": "audio", "audio": policy.source(_url(part.audio_url), "audio", f"{where}.audio_url")})
        elif isinstance(part, VideoURLPart):
            items.append({"type": "video", "video": policy.source(_url(part.video_url), "video", f"{where}.video_url")})
        elif isinstance(part, InputAudioPart):
            items.append({"type": "audio", "audio": part.input_audio.decoded})
    return items


def _url(value: MediaURL | str) -> str:
    return value if isinstance(value, str) else value.url
