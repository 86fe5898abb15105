"""The Chat Completions request as omni reads it: the JSON body decoded, checked and validated.

Content parts accepted in user messages (OpenAI's shapes, plus vLLM's for media OpenAI lacks):

    {"type": "text", "text": ...}
    {"type": "image_url", "image_url": {"url": data: URI | http(s) URL | file:// URL or path under --media-root}}
    {"type": "input_audio", "input_audio": {"data": base64, "format": "wav" | "mp3" | "flac" | "ogg" | ...}}
    {"type": "audio_url", "audio_url": {"url": ...}}          (same URL rules as image_url)
    {"type": "video_url", "video_url": {"url": ...}}          (same URL rules as image_url)

Every field is checked strictly (a string is not a number, a bool is not an integer, NaN and
infinities are refused) and every problem is a 400 naming the field. OpenAI fields omni does not
implement are refused unless they are set to their "off" value; unknown fields are refused too (a
misspelt `temprature` must not be silently ignored), except a few that cannot change the reply.

`decode_body` is a pure function of the body's bytes so that the server can run it in another
process: a large body's JSON parsing, validation and base64 decoding hold the GIL throughout, and
would stall every other connection even from a thread.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from omni.server.errors import ApiError
from omni.stop import MAX_STOP_CHARS, MAX_STOP_STRINGS

AUDIO_INPUT_FORMATS = ("wav", "mp3", "flac", "ogg", "opus", "m4a", "aac", "webm")
AUDIO_OUTPUT_FORMATS = ("wav", "pcm16")

# Counted before validation, so that validating a body costs at most this many objects' worth (a
# 64 MiB body of tiny content parts would otherwise take pydantic tens of seconds). Far above what
# a 32k-token context can hold anyway: every message costs at least 5 template tokens.
MAX_MESSAGES = 4096
MAX_CONTENT_PARTS = 4096  # over all messages
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed's range
MIN_SEED = -(2**63)
MAX_LOGIT_BIAS_ENTRIES = 1024

# Fields accepted and ignored because they cannot change the reply.
IGNORED_FIELDS = frozenset({"user", "store", "metadata", "service_tier", "parallel_tool_calls", "prompt_cache_key",
                            "safety_identifier"})


class _Part(BaseModel):
    # unknown keys inside a part are ignored (clients add their own, e.g. "name", "cache_control")
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class MediaURL(_Part):
    url: str
    detail: Literal["auto", "low", "high"] | None = None  # OpenAI's hint; the encoders pick the resolution


class TextPart(_Part):
    type: Literal["text"]
    text: str


class ImagePart(_Part):
    type: Literal["image_url"]
    image_url: MediaURL | str


class InputAudio(_Part):
    data: str  # base64; emptied once decoded into `decoded`
    format: Annotated[str, Field(max_length=16)] = "wav"
    _decoded: bytes = PrivateAttr(default=b"")

    @property
    def decoded(self) -> bytes:
        return self._decoded


class InputAudioPart(_Part):
    type: Literal["input_audio"]
    input_audio: InputAudio


class AudioURLPart(_Part):
    type: Literal["audio_url"]
    audio_url: MediaURL | str


class VideoURLPart(_Part):
    type: Literal["video_url"]
    video_url: MediaURL | str


ContentPart = Annotated[
    TextPart | ImagePart | InputAudioPart | AudioURLPart | VideoURLPart, Field(discriminator="type")
]


class AudioReference(_Part):
    id: Annotated[str, Field(max_length=128)]


class ChatMessage(_Part):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    audio: AudioReference | None = None  # an earlier spoken reply, sent back by id (assistant only)


class AudioOutput(_Part):
    voice: Annotated[str, Field(max_length=64)] | None = None
    format: Annotated[str, Field(max_length=16)] = "wav"


class StreamOptions(_Part):
    include_usage: bool = False


class ResponseFormat(_Part):
    type: Annotated[str, Field(max_length=64)]


Penalty = Annotated[float, Field(ge=-2, le=2)]


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    model: Annotated[str, Field(max_length=256)] | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    modalities: list[Literal["text", "audio"]] | None = Field(default=None, max_length=2)
    audio: AudioOutput | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=MIN_SEED, le=MAX_SEED)
    n: int | None = Field(default=None, ge=1)
    stop: Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)] | list[
        Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]] | None = Field(default=None)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        default=None, max_length=MAX_LOGIT_BIAS_ENTRIES)
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    function_call: str | dict[str, Any] | None = None
    # extras beyond OpenAI's fields (vLLM's names)
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, gt=0)

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, stop):
        if isinstance(stop, list) and not 1 <= len(stop) <= MAX_STOP_STRINGS:
            raise ValueError(f"stop must be a string or a list of 1 to {MAX_STOP_STRINGS} strings")
        return stop

    def unsupported(self) -> tuple[str, str] | None:
        """The first field asking for something omni does not do, and why; None when there is none."""
        extra = self.model_extra or {}
        for name in extra:
            if name not in IGNORED_FIELDS:
                return name, f"{name!r:.80} is not a parameter this server knows; remove it"
        if self.n not in (None, 1):
            return "n", f"n must be 1 (one choice per request), got {self.n}"
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                return name, f"{name} is not supported by this server; send 0 or leave it out"
        if self.response_format is not None and self.response_format.type != "text":
            return "response_format", (f"response_format {self.response_format.type!r} is not supported; only "
                                       '{"type": "text"} is')
        if self.logprobs:
            return "logprobs", "logprobs are not supported by this server"
        if self.top_logprobs:
            return "top_logprobs", "top_logprobs are not supported by this server"
        for name in ("tools", "functions"):
            if getattr(self, name):
                return name, f"{name} are not supported by this server (no tool calling)"
        for name in ("tool_choice", "function_call"):
            if getattr(self, name) not in (None, "none", "auto"):
                return name, f"{name} is not supported by this server (no tool calling)"
        if not self.stream and self.stream_options is not None:
            return "stream_options", "stream_options is only allowed when stream is true"
        return None


def decode_body(body: bytes) -> ChatCompletionRequest:
    """The request in `body`: JSON decoded, sizes counted, fields validated, input audio decoded
    from base64. Raises ApiError(400) naming the first problem."""
    try:
        # NaN and Infinity (not JSON, but Python's json reads them) become floats that validation
        # then refuses by field name
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    request = parse_request(payload)
    problem = request.unsupported()
    if problem is not None:
        raise ApiError(400, problem[1], code="unsupported_parameter", param=problem[0])
    for index, message in enumerate(request.messages):
        for position, part in enumerate(message.content if isinstance(message.content, list) else ()):
            if isinstance(part, InputAudioPart):
                _decode_audio(part.input_audio, f"messages.{index}.content.{position}.input_audio")
    return request


def parse_request(payload: Any) -> ChatCompletionRequest:
    """Validate the decoded JSON body; the first problem becomes a 400 naming its field."""
    if not isinstance(payload, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_request")
    _check_counts(payload)
    try:
        return ChatCompletionRequest.model_validate(payload)
    except ValidationError as exc:
        # for a union (content: str | list of parts) the deepest error is the one that names the problem
        errors = exc.errors(include_url=False)
        first = max(errors, key=lambda error: len(error["loc"]))
        param = ".".join(_field_path(first["loc"])) or None
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise ApiError(400, f"{param or 'body'}: {first['msg']}{more}", code="invalid_request", param=param) from None


_TYPE_TAGS = frozenset({"str", "constrained-str", "int", "float", "bool", "dict", "list", "none"})


def _field_path(loc: tuple) -> list[str]:
    """The error's path through the client's JSON: pydantic also names union members ("str",
    "list[...]", "MediaURL") and repeats a tagged part's tag ("image_url", "image_url")."""
    path: list[str] = []
    for part in map(str, loc):
        if part in _TYPE_TAGS or "[" in part or part[:1].isupper():
            continue
        if path and path[-1] == part and not part.isdigit():
            continue
        path.append(part)
    return path


def _check_counts(payload: dict) -> None:
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return  # validation names the problem
    if len(messages) > MAX_MESSAGES:
        raise ApiError(400, f"messages holds {len(messages)} messages; this server accepts at most {MAX_MESSAGES}",
                       code="invalid_request", param="messages")
    parts = sum(len(m["content"]) for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list))
    if parts > MAX_CONTENT_PARTS:
        raise ApiError(400, f"the messages hold {parts} content parts; this server accepts at most "
                            f"{MAX_CONTENT_PARTS}", code="invalid_request", param="messages")


def _decode_audio(audio: InputAudio, param: str) -> None:
    if audio.format.lower() not in AUDIO_INPUT_FORMATS:
        raise ApiError(400, f"{param}.format {audio.format!r} is not supported; use one of "
                            f"{', '.join(AUDIO_INPUT_FORMATS)}", code="unsupported_audio_format", param=f"{param}.format")
    try:
        data = base64.b64decode(audio.data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{param}.data is not valid base64", code="invalid_media", param=f"{param}.data") from None
    if not data:
        raise ApiError(400, f"{param}.data is empty", code="invalid_media", param=f"{param}.data")
    audio._decoded = data
    audio.data = ""  # the text form is not needed any more (and need not travel back from a parser process)
