"""A realtime conversation: its items, and how they become the `OmniSession`'s messages.

Items are messages (user, assistant, system) in order. The session has read a prefix of them
(`fed_ids`); a response sends it the items after that prefix as the turn's new messages, so its
Thinker cache carries the conversation from turn to turn. A change to an item the session has already
read (a delete, an insert before it, a truncation other than of the session's last reply) cannot be
applied to a cache: the conversation is then `stale` and the next response starts the session over
from all the items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omni.server.realtime.protocol import ClientEventError, Dialect, new_id

INPUT_SAMPLE_RATE_HZ = 16000  # what the model's audio encoder reads


@dataclass
class Item:
    id: str
    role: str  # "user", "assistant" or "system"
    parts: list[dict[str, Any]]  # GA content parts, audio bytes left out
    audio: list[np.ndarray | None] = field(default_factory=list)  # per part: 16 kHz input audio, or None
    status: str = "completed"
    audio_ms: int = 0  # an assistant item: milliseconds of speech sent

    def describe(self, dialect: Dialect) -> dict[str, Any]:
        parts = [{**part, "type": dialect.content_type(part["type"])} for part in self.parts]
        return {"id": self.id, "object": "realtime.item", "type": "message", "role": self.role,
                "status": self.status, "content": parts}

    def message(self) -> dict[str, Any]:
        """The item as an omni message."""
        if self.role != "user":
            text = "".join(part.get("text") or part.get("transcript") or "" for part in self.parts)
            return {"role": self.role, "content": text}
        content = []
        for part, samples in zip(self.parts, self.audio, strict=True):
            if part["type"] == "input_audio":
                content.append({"type": "audio", "audio": samples})
            elif part["type"] == "input_image":
                content.append({"type": "image", "image": part["image_url"]})
            else:
                content.append({"type": "text", "text": part.get("text") or ""})
        return {"role": "user", "content": content}


def user_audio_item(samples_16k: np.ndarray, item_id: str | None = None) -> Item:
    return Item(item_id or new_id("item"), "user", [{"type": "input_audio", "transcript": None}], [samples_16k])


class Conversation:
    def __init__(self, max_items: int, max_audio_s: float) -> None:
        self.items: list[Item] = []
        self.max_items = max_items
        self.max_audio_samples = int(max_audio_s * INPUT_SAMPLE_RATE_HZ)
        self.fed_ids: list[str] = []  # the items the session has read, in order
        # Edits the session cannot follow (a truncation of an older reply, new instructions) bump the
        # revision; the session has read the items as of `fed_revision`.
        self.revision = 0
        self.fed_revision = 0

    @property
    def stale(self) -> bool:
        """The session's cache no longer matches the items: the next response starts it over."""
        return (self.revision != self.fed_revision
                or [item.id for item in self.items[:len(self.fed_ids)]] != self.fed_ids)

    def edit(self) -> None:
        """An item the session has read changed in a way its cache cannot follow."""
        self.revision += 1

    def find(self, item_id: str, param: str = "item_id") -> int:
        for index, item in enumerate(self.items):
            if item.id == item_id:
                return index
        raise ClientEventError(f"no item with id {item_id!r} in the conversation", code="item_not_found", param=param)

    def add(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Insert after `previous_item_id` ("root": first; None: last); returns the id before it."""
        if len(self.items) >= self.max_items:
            raise ClientEventError(f"the conversation holds its limit of {self.max_items} items; delete some or "
                                   "start a new session", code="conversation_full")
        held = sum(samples.size for existing in self.items for samples in existing.audio if samples is not None)
        added = sum(samples.size for samples in item.audio if samples is not None)
        if held + added > self.max_audio_samples:
            raise ClientEventError(f"the conversation would hold {(held + added) / INPUT_SAMPLE_RATE_HZ:.0f} s of input "
                                   f"audio, over its limit of {self.max_audio_samples // INPUT_SAMPLE_RATE_HZ} s; "
                                   "delete older items or start a new session", code="conversation_full")
        if any(existing.id == item.id for existing in self.items):
            raise ClientEventError(f"an item with id {item.id!r} already exists", code="item_exists", param="item.id")
        if previous_item_id is None:
            index = len(self.items)
        elif previous_item_id == "root":
            index = 0
        else:
            index = self.find(previous_item_id, "previous_item_id") + 1
        self.items.insert(index, item)
        return self.items[index - 1].id if index > 0 else None

    def delete(self, item_id: str) -> None:
        del self.items[self.find(item_id)]

    def pending(self) -> list[Item]:
        """What a response sends the session: the unread items, or all of them when it starts over."""
        return list(self.items) if self.stale else self.items[len(self.fed_ids):]

    def read(self, item_ids: list[str], revision: int) -> None:
        """The session has read these items, as they were at `revision` (a turn it recorded)."""
        self.fed_ids = list(item_ids)
        self.fed_revision = revision

    def forget(self) -> None:
        """The session did not record the turn: start it over next time."""
        self.fed_ids = []
        self.fed_revision = -1


def item_from_client(item: Any, dialect: Dialect) -> Item:
    """A conversation.item.create's item (GA or beta model) as an Item; ClientEventError when omni
    cannot take it (function calls, an unknown content type, audio that is not base64 PCM16)."""
    from omni.server.realtime.input_audio import decode_pcm16, resample_to_16k

    if (getattr(item, "type", None) or "message") != "message":
        raise ClientEventError(f"item type {item.type!r} is not supported (omni has no function calling); send "
                               "message items", code="invalid_value", param="item.type")
    role = getattr(item, "role", None)
    if role not in ("user", "assistant", "system"):
        raise ClientEventError(f"a message item needs role user, assistant or system, got {role!r}",
                               code="invalid_value", param="item.role")
    contents = getattr(item, "content", None) or []
    if not contents:
        raise ClientEventError("the item has no content", code="missing_required_parameter", param="item.content")
    allowed = {"user": {"input_text", "input_audio", "input_image"}, "system": {"input_text"},
               "assistant": {"output_text", "output_audio", "text", "audio"}}[role]
    parts: list[dict[str, Any]] = []
    audio: list[np.ndarray | None] = []
    for index, content in enumerate(contents):
        kind = content.type
        param = f"item.content.{index}"
        if kind not in allowed:
            raise ClientEventError(f"content type {kind!r} is not allowed in a {role} item (allowed: "
                                   f"{', '.join(sorted(allowed))})", code="invalid_value", param=f"{param}.type")
        samples = None
        if kind == "input_text":
            part = {"type": "input_text", "text": _required(content.text, f"{param}.text")}
        elif kind == "input_audio":
            pcm = decode_pcm16(_required(content.audio, f"{param}.audio"), f"{param}.audio")
            samples = resample_to_16k(pcm)
            part = {"type": "input_audio", "transcript": getattr(content, "transcript", None)}
        elif kind == "input_image":
            image_url = _required(getattr(content, "image_url", None), f"{param}.image_url")
            if not image_url.startswith("data:image/"):
                raise ClientEventError("input_image takes a data URL (data:image/png;base64,...)",
                                       code="invalid_value", param=f"{param}.image_url")
            part = {"type": "input_image", "image_url": image_url}
        else:  # assistant text or speech the client put in the conversation: its words are what counts
            text = content.text if kind in ("output_text", "text") else content.transcript
            ga_kind = {"text": "output_text", "audio": "output_audio"}.get(kind, kind)
            key = "text" if ga_kind == "output_text" else "transcript"
            part = {"type": ga_kind, key: _required(text, f"{param}.{key}")}
        parts.append(part)
        audio.append(samples)
    item_id = getattr(item, "id", None) or new_id("item")
    return Item(item_id, role, parts, audio)


def _required(value: Any, param: str) -> Any:
    if value is None or value == "":
        raise ClientEventError(f"{param} is missing", code="missing_required_parameter", param=param)
    return value
