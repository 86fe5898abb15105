"""A realtime session's configuration: what `session.update` sets and `session.created/updated` show.

Audio is PCM16 mono at 24 kHz both ways (the Realtime API's `audio/pcm`, beta `pcm16`); the G.711
formats are refused. OpenAI's voice names (alloy, marin, ...) are not this model's: a client that
sends one (most SDK examples do) gets the model's default voice and a note saying so, while an
unknown name that is not OpenAI's is an error listing the voices.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from omni.server.realtime.protocol import ClientEventError, Dialect

SAMPLE_RATE_HZ = 24000
OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx",
                           "sage", "shimmer", "verse"})


@dataclass(frozen=True)
class TurnDetection:
    """server_vad, with OpenAI's defaults."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"type": "server_vad", "threshold": self.threshold, "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms, "create_response": self.create_response,
                "interrupt_response": self.interrupt_response}


@dataclass(frozen=True)
class SessionSettings:
    session_id: str
    model: str
    voice: str  # one of the model's voices ("" for a model without speech)
    audio_output: bool  # output_modalities ["audio"] (speech and its transcript) or ["text"]
    instructions: str | None = None  # None: the model's own system prompt (the one its Talker speaks under)
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)  # None: manual turns
    max_output_tokens: int | None = None  # None: the server's default
    temperature: float | None = None  # beta only; None: the checkpoint's
    notes: tuple[str, ...] = ()  # what the server changed in the last update, and why

    def describe(self, dialect: Dialect) -> dict[str, Any]:
        """The `session` object of session.created / session.updated."""
        pcm = {"type": "audio/pcm", "rate": SAMPLE_RATE_HZ}
        turns = self.turn_detection.as_dict() if self.turn_detection is not None else None
        tokens = self.max_output_tokens if self.max_output_tokens is not None else "inf"
        omni = {"notes": list(self.notes)} if self.notes else {}
        if dialect.beta:
            return {"id": self.session_id, "object": "realtime.session", "model": self.model,
                    "modalities": ["text", "audio"] if self.audio_output else ["text"],
                    "instructions": self.instructions or "", "voice": self.voice, "input_audio_format": "pcm16",
                    "output_audio_format": "pcm16", "turn_detection": turns, "temperature": self.temperature,
                    "max_response_output_tokens": tokens, **({"omni": omni} if omni else {})}
        return {"type": "realtime", "object": "realtime.session", "id": self.session_id, "model": self.model,
                "output_modalities": ["audio"] if self.audio_output else ["text"],
                "instructions": self.instructions or "", "max_output_tokens": tokens,
                "audio": {"input": {"format": pcm, "turn_detection": turns},
                          "output": {"format": pcm, "voice": self.voice}},
                **({"omni": omni} if omni else {})}


UNSET: Any = object()


@dataclass(frozen=True)
class SettingsChange:
    """What one session.update (or one response.create, for its response) sets; UNSET: left as is."""

    instructions: Any = UNSET
    modalities: Any = UNSET  # a list of "text" / "audio"
    voice: Any = UNSET
    turn_detection: Any = UNSET  # a server_vad model, or None for manual turns
    max_output_tokens: Any = UNSET
    temperature: Any = UNSET
    formats: tuple[tuple[str, Any], ...] = ()  # (param, format type) for the audio formats named


def session_change(session: Any, dialect: Dialect) -> SettingsChange:
    """A validated session.update's `session` (the openai package's GA or beta model)."""
    fields = session.model_fields_set
    picked = {name: getattr(session, name) for name in ("instructions", "temperature") if name in fields}
    if dialect.beta:
        renamed = {"modalities": "modalities", "voice": "voice", "turn_detection": "turn_detection",
                   "max_response_output_tokens": "max_output_tokens"}
        picked.update({ours: getattr(session, theirs) for theirs, ours in renamed.items() if theirs in fields})
        formats = tuple((f"session.{name}", getattr(session, name)) for name in ("input_audio_format",
                        "output_audio_format") if name in fields and getattr(session, name) is not None)
        return SettingsChange(**picked, formats=formats)
    if getattr(session, "type", "realtime") != "realtime":
        raise ClientEventError("transcription sessions are not supported; use session.type \"realtime\"",
                               code="invalid_value", param="session.type")
    picked.pop("temperature", None)
    if "output_modalities" in fields:
        picked["modalities"] = session.output_modalities
    if "max_output_tokens" in fields:
        picked["max_output_tokens"] = session.max_output_tokens
    formats = []
    audio = session.audio if "audio" in fields else None
    if audio is not None:
        for side in ("input", "output"):
            config = getattr(audio, side)
            if config is not None and "format" in config.model_fields_set and config.format is not None:
                formats.append((f"session.audio.{side}.format", getattr(config.format, "type", None) or "audio/pcm"))
        if audio.input is not None and "turn_detection" in audio.input.model_fields_set:
            picked["turn_detection"] = audio.input.turn_detection
        if audio.output is not None and "voice" in audio.output.model_fields_set:
            picked["voice"] = audio.output.voice
    return SettingsChange(**picked, formats=tuple(formats))


def response_change(response: Any, dialect: Dialect, instructions: str | None) -> SettingsChange:
    """response.create's own settings for its response: modalities, voice, max tokens (beta:
    temperature); what omni cannot do for one response alone is refused by name."""
    fields = response.model_fields_set
    for name, what in (("input", "responses over a custom input"), ("tools", "tools"), ("tool_choice", "tools"),
                       ("prompt", "stored prompts")):
        if name in fields and getattr(response, name):
            raise ClientEventError(f"response.{name}: {what} are not supported", code="invalid_value",
                                   param=f"response.{name}")
    if "conversation" in fields and response.conversation not in (None, "auto"):
        raise ClientEventError("only responses in the default conversation (\"auto\") are supported",
                               code="invalid_value", param="response.conversation")
    if "instructions" in fields and (response.instructions or None) != instructions:
        raise ClientEventError("per-response instructions are not supported (the session's cache holds its system "
                               "prompt); change them with session.update", code="invalid_value",
                               param="response.instructions")
    if dialect.beta:
        renamed = {"modalities": "modalities", "voice": "voice", "max_response_output_tokens": "max_output_tokens",
                   "temperature": "temperature"}
        return SettingsChange(**{ours: getattr(response, theirs) for theirs, ours in renamed.items() if theirs in fields})
    picked = {}
    if "output_modalities" in fields:
        picked["modalities"] = response.output_modalities
    if "max_output_tokens" in fields:
        picked["max_output_tokens"] = response.max_output_tokens
    audio = response.audio if "audio" in fields else None
    if audio is not None and audio.output is not None and "voice" in audio.output.model_fields_set:
        picked["voice"] = audio.output.voice
    return SettingsChange(**picked)


def apply_change(settings: SessionSettings, change: SettingsChange, voices: list[str], can_speak: bool,
                 max_tokens_limit: int) -> SessionSettings:
    """The settings with `change` applied; ClientEventError for a value omni cannot honour."""
    for param, value in change.formats:
        if value not in ("pcm16", "audio/pcm"):
            raise ClientEventError(f"{param} {value!r} is not supported; omni takes and sends 16-bit PCM at 24 kHz "
                                   "mono (audio/pcm, beta pcm16)", code="invalid_value", param=param)
    notes: list[str] = []
    updated = settings
    if change.instructions is not UNSET:
        updated = replace(updated, instructions=change.instructions or None)
    if change.turn_detection is not UNSET:
        updated = replace(updated, turn_detection=_turn_detection(change.turn_detection))
    if change.temperature is not UNSET:
        if change.temperature is not None and not 0 <= change.temperature <= 2:
            raise ClientEventError(f"temperature must be between 0 and 2, got {change.temperature}",
                                   code="invalid_value", param="session.temperature")
        updated = replace(updated, temperature=change.temperature)
    if change.modalities is not UNSET and change.modalities is not None:
        modalities = change.modalities
        if not modalities or set(modalities) - {"text", "audio"}:
            raise ClientEventError(f"output modalities must be [\"audio\"] or [\"text\"], got {modalities}",
                                   code="invalid_value", param="session.output_modalities")
        audio_output = "audio" in modalities
        if audio_output and not can_speak:
            raise ClientEventError("this server's model has no audio output (talker, token2wav or speakers are "
                                   "missing); set output_modalities [\"text\"]", code="audio_output_unavailable",
                                   param="session.output_modalities")
        updated = replace(updated, audio_output=audio_output)
    if change.voice is not UNSET and change.voice is not None and can_speak:
        updated = replace(updated, voice=_voice(change.voice, voices, notes, settings.voice))
    if change.max_output_tokens is not UNSET:
        value = change.max_output_tokens
        if value is not None and value != "inf" and not 1 <= value <= max_tokens_limit:
            raise ClientEventError(f"max_output_tokens must be between 1 and {max_tokens_limit} or \"inf\", got "
                                   f"{value}", code="invalid_value", param="session.max_output_tokens")
        updated = replace(updated, max_output_tokens=None if value in (None, "inf") else value)
    return replace(updated, notes=tuple(notes))


def _voice(voice: str, voices: list[str], notes: list[str], current: str) -> str:
    if voice in voices:
        return voice
    if voice.lower() in OPENAI_VOICES:
        notes.append(f"voice {voice!r} is one of OpenAI's voices, not this model's; speaking with {current!r} "
                     f"(this model's voices: {', '.join(voices)})")
        return current
    raise ClientEventError(f"voice {voice!r} is not one of this model's voices: {', '.join(voices) or 'none'}",
                           code="unknown_voice", param="session.audio.output.voice")


def _turn_detection(value: Any) -> TurnDetection | None:
    param = "session.audio.input.turn_detection"
    if value is None:
        return None
    kind = getattr(value, "type", None) or "server_vad"
    if kind != "server_vad":
        raise ClientEventError(f"turn detection {kind!r} is not supported; use \"server_vad\" or null (manual turns)",
                               code="invalid_value", param=f"{param}.type")
    defaults = TurnDetection()
    chosen = {name: getattr(value, name) for name in ("threshold", "prefix_padding_ms", "silence_duration_ms",
                                                      "create_response", "interrupt_response")
              if getattr(value, name, None) is not None}
    detection = replace(defaults, **chosen)
    if not 0.0 < detection.threshold < 1.0:
        raise ClientEventError(f"threshold must be between 0 and 1, got {detection.threshold}", code="invalid_value",
                               param=f"{param}.threshold")
    for name, low, high in (("prefix_padding_ms", 0, 5000), ("silence_duration_ms", 100, 10000)):
        number = getattr(detection, name)
        if not low <= number <= high:
            raise ClientEventError(f"{name} must be between {low} and {high}, got {number}", code="invalid_value",
                                   param=f"{param}.{name}")
    return detection
