"""The Realtime protocol's two dialects, ids, and client events checked against the `openai` package.

The GA API (openai >= 2) and the beta API (`OpenAI-Beta: realtime=v1`) carry the same conversation
under different names: response.output_audio.delta is response.audio.delta in beta,
conversation.item.added is conversation.item.created, a session's output_modalities is modalities,
and so on. The server builds every event with its GA name and `Dialect.event` renames it for a beta
client. Client events are validated with the very pydantic models the `openai` package ships (the GA
or the beta ones), so a field of the wrong type is answered with an `error` event naming it.
"""

from __future__ import annotations

import functools
import json
import secrets
from dataclasses import dataclass
from typing import Any

import pydantic

BETA_HEADER_VALUE = "realtime=v1"
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
BROWSER_SUBPROTOCOL = "realtime"

# GA server event name -> beta name (None: the beta API has no such event)
_BETA_EVENT_NAMES: dict[str, str | None] = {
    "conversation.item.added": "conversation.item.created",
    "conversation.item.done": None,
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}
# GA item content type -> beta
_BETA_CONTENT_TYPES = {"output_audio": "audio", "output_text": "text"}


@functools.cache
def client_event_models(beta: bool) -> dict[str, type[pydantic.BaseModel]]:
    """The `openai` package's model of each client event (imported on first use: `omni serve` runs
    without the package, only the realtime route needs it)."""
    if beta:
        from openai.types.beta import realtime as types
    else:
        from openai.types import realtime as types
    names = {
        "session.update": "SessionUpdateEvent",
        "input_audio_buffer.append": "InputAudioBufferAppendEvent",
        "input_audio_buffer.commit": "InputAudioBufferCommitEvent",
        "input_audio_buffer.clear": "InputAudioBufferClearEvent",
        "conversation.item.create": "ConversationItemCreateEvent",
        "conversation.item.truncate": "ConversationItemTruncateEvent",
        "conversation.item.delete": "ConversationItemDeleteEvent",
        "conversation.item.retrieve": "ConversationItemRetrieveEvent",
        "response.create": "ResponseCreateEvent",
        "response.cancel": "ResponseCancelEvent",
    }
    if not beta:
        names["output_audio_buffer.clear"] = "OutputAudioBufferClearEvent"
    return {event_type: getattr(types, name) for event_type, name in names.items()}


def new_id(prefix: str) -> str:
    """`item_3f9c...`: OpenAI's ids are a prefix and random characters; ours too (32 hex digits)."""
    return f"{prefix}_{secrets.token_hex(16)}"


class ClientEventError(Exception):
    """A client event the server cannot act on; answered with an `error` event, never a closed socket."""

    def __init__(self, message: str, code: str, param: str | None = None, event_id: str | None = None,
                 error_type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.event_id = event_id
        self.error_type = error_type


@dataclass(frozen=True)
class Dialect:
    beta: bool = False

    @staticmethod
    def from_handshake(headers: dict[str, str], subprotocols: list[str]) -> Dialect:
        beta_header = BETA_HEADER_VALUE in headers.get("openai-beta", "").replace(" ", "").split(",")
        return Dialect(beta=beta_header or BETA_SUBPROTOCOL in subprotocols)

    def event(self, event_type: str, **fields: Any) -> dict[str, Any] | None:
        """A server event under this dialect's name, with a fresh event_id (None: not in this dialect)."""
        if self.beta and event_type in _BETA_EVENT_NAMES:
            event_type = _BETA_EVENT_NAMES[event_type]
            if event_type is None:
                return None
        return {"type": event_type, "event_id": new_id("event"), **fields}

    def content_type(self, ga_type: str) -> str:
        return _BETA_CONTENT_TYPES.get(ga_type, ga_type) if self.beta else ga_type

    def parse(self, text: str | bytes) -> pydantic.BaseModel:
        """One client event, validated; ClientEventError saying what is wrong otherwise."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ClientEventError(f"the event is not valid JSON ({exc}); send one JSON object per message",
                                   code="invalid_json") from None
        if not isinstance(data, dict):
            raise ClientEventError(f"an event is a JSON object with a \"type\", got a {type(data).__name__}",
                                   code="invalid_event")
        event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
        event_type = data.get("type")
        models = client_event_models(self.beta)
        if not isinstance(event_type, str) or not event_type:
            raise ClientEventError("the event has no \"type\"", code="missing_required_parameter", param="type",
                                   event_id=event_id)
        if event_type not in models:
            raise ClientEventError(
                f"unknown client event type {event_type!r}" + (" in the beta API" if self.beta else "")
                + f"; the client events are: {', '.join(models)}", code="invalid_event_type", param="type",
                event_id=event_id)
        try:
            return models[event_type].model_validate(data)
        except pydantic.ValidationError as exc:
            raise _validation_error(exc, event_type, event_id) from None


def _validation_error(exc: pydantic.ValidationError, event_type: str, event_id: str | None) -> ClientEventError:
    """The most specific of pydantic's errors: in a union it reports every member it tried, and the
    one that got furthest into the event (the longest location) is the one the client meant."""
    errors = exc.errors(include_url=False)
    best = max(errors, key=lambda e: (e["type"] != "literal_error", len(e["loc"])))
    # union members show up in the location as class names; the client knows only field names
    param = ".".join(str(part) for part in best["loc"] if not (isinstance(part, str) and part[:1].isupper()))
    code = "missing_required_parameter" if best["type"] == "missing" else "invalid_value"
    got = "" if best["type"] == "missing" else f" (got {best.get('input')!r:.80})"
    return ClientEventError(f"{event_type}: {param or 'the event'}: {best['msg']}{got}", code=code,
                            param=param or None, event_id=event_id)


def error_event(dialect: Dialect, error: ClientEventError) -> dict[str, Any]:
    return dialect.event("error", error={"type": error.error_type, "code": error.code, "message": error.message,
                                         "param": error.param, "event_id": error.event_id})
