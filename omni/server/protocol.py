"""The Chat Completions request as omni reads it, and its conversion to an omni conversation.

Content parts accepted in user messages (OpenAI's shapes, plus vLLM's for media OpenAI lacks):

    {"type": "text", "text": ...}
    {"type": "image_url", "image_url": {"url": data: URI | http(s) URL | file:// URL or path under --media-root}}
    {"type": "input_audio", "input_audio": {"data": base64, "format": "wav" | "mp3" | "flac" | "ogg" | ...}}
    {"type": "audio_url", "audio_url": {"url": ...}}          (same URL rules as image_url)
    {"type": "video_url", "video_url": {"url": ...}}          (same URL rules as image_url)

System (and developer) messages become the session's system prompt. Assistant messages are earlier
turns: their text content, or, for a spoken reply sent back as {"audio": {"id": ...}}, the transcript
this server remembers for that id.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from omni.server.errors import ApiError
from omni.server.media_policy import MediaPolicy

AUDIO_INPUT_FORMATS = ("wav", "mp3", "flac", "ogg", "opus", "m4a", "aac", "webm")
AUDIO_OUTPUT_FORMATS = ("wav", "pcm16")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore")


class MediaURL(_Strict):
    url: str
    detail: str | None = None  # OpenAI's image detail hint; the encoders pick the resolution themselves


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: MediaURL | str


class InputAudio(_Strict):
    data: str
    format: str = "wav"


class InputAudioPart(_Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


class AudioURLPart(_Strict):
    type: Literal["audio_url"]
    audio_url: MediaURL | str


class VideoURLPart(_Strict):
    type: Literal["video_url"]
    video_url: MediaURL | str


ContentPart = Annotated[
    TextPart | ImagePart | InputAudioPart | AudioURLPart | VideoURLPart, Field(discriminator="type")
]


class AudioReference(_Strict):
    id: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    audio: AudioReference | None = None  # an earlier spoken reply, sent back by id (assistant only)


class AudioOutput(_Strict):
    voice: str | None = None
    format: str = "wav"


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    # Unknown fields (user, store, metadata, ...) are accepted and ignored, as OpenAI-compatible servers do.
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioOutput | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    n: int | None = Field(default=None, ge=1)
    # extras beyond OpenAI's fields
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, gt=0)


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
    stream: bool = False
    include_usage: bool = False


def parse_request(payload: Any) -> ChatCompletionRequest:
    """Validate the decoded JSON body; the first problem becomes a 400 naming its field."""
    if not isinstance(payload, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_request")
    try:
        return ChatCompletionRequest.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise ApiError(400, f"{param or 'body'}: {first['msg']}{more}", code="invalid_request", param=param) from None


def to_omni_request(
    request: ChatCompletionRequest,
    policy: MediaPolicy,
    transcript_for: Callable[[str], str | None],
    max_tokens_limit: int,
) -> OmniRequest:
    extra = request.model_extra or {}
    for unsupported in ("tools", "functions", "tool_choice", "logprobs"):
        if extra.get(unsupported):
            raise ApiError(400, f"{unsupported} is not supported by this server", code="unsupported_parameter",
                           param=unsupported)
    if request.n not in (None, 1):
        raise ApiError(400, f"n must be 1 (one choice per request), got {request.n}", code="unsupported_parameter",
                       param="n")

    system_texts: list[str] = []
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(request.messages):
        param = f"messages.{index}"
        if message.role in ("system", "developer"):
            system_texts.append(_text_only(message, param))
        elif message.role == "assistant":
            messages.append({"role": "assistant", "content": _assistant_text(message, param, transcript_for)})
        else:
            messages.append({"role": "user", "content": _user_content(message, param, policy)})
    if not any(m["role"] == "user" for m in messages):
        raise ApiError(400, "messages must hold at least one user message", code="invalid_request", param="messages")

    return_audio = "audio" in (request.modalities or [])
    audio = request.audio or AudioOutput()
    if audio.format not in AUDIO_OUTPUT_FORMATS:
        raise ApiError(400, f"audio.format {audio.format!r} is not supported; use one of "
                            f"{', '.join(AUDIO_OUTPUT_FORMATS)}", code="unsupported_audio_format", param="audio.format")
    max_new_tokens = request.max_completion_tokens or request.max_tokens
    if max_new_tokens is not None and max_new_tokens > max_tokens_limit:
        raise ApiError(400, f"max_tokens is {max_new_tokens}, over this server's limit of {max_tokens_limit}",
                       code="invalid_request", param="max_tokens")
    sampling = {"top_p": request.top_p, "top_k": request.top_k, "seed": request.seed,
                "repetition_penalty": request.repetition_penalty}
    if request.temperature is not None:
        sampling.update(do_sample=request.temperature > 0, temperature=request.temperature)
    return OmniRequest(
        messages=messages,
        system_prompt="\n".join(system_texts) if system_texts else None,
        return_audio=return_audio,
        voice=audio.voice,
        audio_format=audio.format,
        max_new_tokens=max_new_tokens,
        sampling={key: value for key, value in sampling.items() if value is not None},
        stream=request.stream,
        include_usage=bool(request.stream_options and request.stream_options.include_usage),
    )


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


def _assistant_text(message: ChatMessage, param: str, transcript_for: Callable[[str], str | None]) -> str:
    if message.content is not None:
        return _text_only(message, param)
    if message.audio is not None:
        transcript = transcript_for(message.audio.id)
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
        else:
            items.append({"type": "audio", "audio": _input_audio_bytes(part.input_audio, f"{where}.input_audio")})
    return items


def _url(value: MediaURL | str) -> str:
    return value if isinstance(value, str) else value.url


def _input_audio_bytes(audio: InputAudio, param: str) -> bytes:
    if audio.format.lower() not in AUDIO_INPUT_FORMATS:
        raise ApiError(400, f"{param}.format {audio.format!r} is not supported; use one of "
                            f"{', '.join(AUDIO_INPUT_FORMATS)}", code="unsupported_audio_format", param=f"{param}.format")
    try:
        data = base64.b64decode(audio.data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{param}.data is not valid base64", code="invalid_media", param=f"{param}.data") from None
    if not data:
        raise ApiError(400, f"{param}.data is empty", code="invalid_media", param=f"{param}.data")
    return data
