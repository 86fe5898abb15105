"""One browser user's conversation, without Gradio: turns in (typed, uploaded, spoken), reply updates
out, stop, reset and barge-in. The Gradio app (demo/app.py) only wires widgets to these methods, so
everything here is testable without a browser.

A `Conversation` owns one `OmniSession` (sessions share one loaded model), the chat history the UI
shows, the voice chat's end-of-turn detector, and the WAV files of its spoken turns (the chat plays
them back). It keeps the files of its last `KEPT_SPOKEN_TURNS` spoken turns only, deletes them all
when it is reset, and removes its own media dir on `close()`.
"""

from __future__ import annotations

import mimetypes
import shutil
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from omni.vad import VAD_SAMPLE_RATE_HZ, EndOfTurnDetector, TurnEvent, VADOptions
from omni.encoders.limits import MediaLimits
from omni.audio_io import wav_bytes, write_wav
from omni.chat import AUDIO_SYSTEM_PROMPT
from omni.errors import InputError, OmniError
from omni.events import AudioChunk, ReplyDone, TextDelta
from omni.loading import LoadedModel
from omni.session import OmniSession

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
AUDIO_SUFFIXES = {".wav", ".mp3", ".flac", ".ogg", ".opus", ".m4a", ".aac", ".oga"}
VIDEO_SUFFIXES = {".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v", ".mpeg", ".mpg"}
MAX_FILES_PER_TURN = 8
# Recordings of spoken turns kept for the chat to play back; older turns show SPOKEN_TURN_GONE instead.
# Gradio re-reads every file the history names on each update, so a file is never deleted while the
# history still names it.
KEPT_SPOKEN_TURNS = 8
SPOKEN_TURN_GONE = "🎤 (spoken turn; its recording is no longer kept)"
REPLY_WAIT_S = 30.0  # how long a new turn waits for a stopped reply to wind down


def media_kind(path: str | Path) -> str:
    """'image', 'audio' or 'video' for an uploaded file, from its suffix (or its guessed MIME type)."""
    suffix = Path(path).suffix.lower()
    for kind, suffixes in (("image", IMAGE_SUFFIXES), ("audio", AUDIO_SUFFIXES), ("video", VIDEO_SUFFIXES)):
        if suffix in suffixes:
            return kind
    mime = mimetypes.guess_type(str(path))[0] or ""
    if mime.split("/")[0] in ("image", "audio", "video"):
        return mime.split("/")[0]
    accepted = " ".join(sorted(IMAGE_SUFFIXES | AUDIO_SUFFIXES | VIDEO_SUFFIXES))
    raise InputError(f"{Path(path).name}: not an image, audio or video file (accepted: {accepted})")


@dataclass(frozen=True)
class ReplySettings:
    """What the settings panel controls for each reply."""

    speak: bool = True  # stream the spoken reply too
    voice: str | None = None
    max_new_tokens: int = 256
    temperature: float | None = None  # None: the checkpoint's default; 0: greedy
    seed: int | None = None
    use_audio_in_video: bool = False  # also listen to an attached video's sound track

    def stream_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"return_audio": self.speak, "voice": self.voice or None,
                                   "max_new_tokens": int(self.max_new_tokens)}
        if self.temperature is not None:
            options.update(do_sample=self.temperature > 0, temperature=self.temperature or 1.0)
        if self.seed is not None:
            options["seed"] = int(self.seed)
        return options


@dataclass
class ReplyUpdate:
    """The state of the reply after one event: what the UI shows while it streams."""

    text: str  # the reply so far
    audio_wav: bytes | None = None  # a new chunk of speech (a small WAV file), if this event brought one
    done: ReplyDone | None = None
    error: str | None = None
    first_audio_s: float | None = None  # measured here: request to first audio chunk

    @property
    def latency_text(self) -> str:
        return describe_latency(self.done, self.first_audio_s)


def describe_latency(done: ReplyDone | None, measured_first_audio_s: float | None = None) -> str:
    """One line for the UI: time to first audio (the pipeline's own number when it has one), to first
    text, total, and how the reply ended."""
    if done is None:
        return ""
    timings = done.timings
    first_audio = timings.first_audio_s if timings.first_audio_s is not None else measured_first_audio_s
    parts = [f"first audio {first_audio:.2f} s" if first_audio is not None else "first audio —"]
    if timings.first_text_s is not None:
        parts.append(f"first text {timings.first_text_s:.2f} s")
    parts.append(f"total {timings.total_s:.2f} s")
    parts.append(f"{done.usage.text_tokens} tokens")
    if timings.audio_duration_s:
        parts.append(f"{timings.audio_duration_s:.1f} s of speech")
    parts.append(done.finish_reason)
    return " · ".join(parts)


@dataclass
class Conversation:
    loaded: LoadedModel
    system_prompt: str | None = AUDIO_SYSTEM_PROMPT
    media_limits: MediaLimits = field(default_factory=MediaLimits)
    # where spoken turns are written; None: a private dir (mkdtemp: fresh name, mode 0700) made on the
    # first spoken turn and removed by close(). A dir given here is shared (the app gives one to every
    # conversation): only this conversation's own files are ever deleted from it.
    media_dir: Path | None = None
    vad_options: VADOptions = field(default_factory=VADOptions)

    def __post_init__(self) -> None:
        self.session = OmniSession(self.loaded, system_prompt=self.system_prompt, media_limits=self.media_limits)
        self.history: list[dict[str, Any]] = []  # the chat as Gradio's Chatbot shows it (role/content)
        self._detector: EndOfTurnDetector | None = None  # made on the first microphone chunk
        self._reply_lock = threading.Lock()  # one reply at a time; a new turn waits for a stopped one
        self._replying = threading.Event()
        self._stop_requested = threading.Event()
        self._stopped_at: float | None = None  # perf_counter of the last stop (a barge-in or the Stop button)
        self.spoken_turns: deque[np.ndarray] = deque()  # utterances the detector ended, not yet answered
        self.media_dir = Path(self.media_dir) if self.media_dir is not None else None
        self._own_media_dir = False  # made by this conversation, so removed by close()
        self._spoken_files: deque[Path] = deque()  # this conversation's recordings, oldest first

    # ------------------------------------------------------------------------------------------
    # Turns in

    def user_turn(self, text: str | None, files: Sequence[str | Path] = ()) -> dict[str, Any]:
        """A typed/uploaded turn: records it in the history and returns the omni message."""
        text = (text or "").strip()
        files = [str(f) for f in files if f]
        if not text and not files:
            raise InputError("the message is empty: type something or attach an image, audio or video file")
        if len(files) > MAX_FILES_PER_TURN:
            raise InputError(f"{len(files)} files attached; at most {MAX_FILES_PER_TURN} per message")
        content = [{"type": kind, kind: path} for path in files for kind in [media_kind(path)]]
        if text:
            content.append({"type": "text", "text": text})
        self.history.append({"role": "user", "content": [*({"path": f} for f in files), *([text] if text else [])]})
        return {"role": "user", "content": content}

    def voice_turn(self, audio_16k: np.ndarray) -> dict[str, Any]:
        """A spoken turn (16 kHz mono from the end-of-turn detector): saved as a WAV the chat can play."""
        if audio_16k.size == 0:
            raise InputError("the spoken turn holds no audio")
        if self.media_dir is None:
            self.media_dir = Path(tempfile.mkdtemp(prefix="omni-demo-"))
            self._own_media_dir = True
        path = write_wav(self.media_dir / f"turn-{uuid.uuid4().hex[:12]}.wav", audio_16k, VAD_SAMPLE_RATE_HZ)
        self._spoken_files.append(path)
        message = self.user_turn(None, [path])
        # the newest recordings stay; this turn's own is never among the ones dropped, so the session
        # can still read it when the reply starts
        while len(self._spoken_files) > KEPT_SPOKEN_TURNS:
            self._drop_recording(self._spoken_files.popleft())
        return message

    def _drop_recording(self, path: Path) -> None:
        for entry in self.history:
            if entry["role"] == "user" and isinstance(entry["content"], list):
                entry["content"] = [SPOKEN_TURN_GONE if isinstance(item, dict) and item.get("path") == str(path)
                                    else item for item in entry["content"]]
        path.unlink(missing_ok=True)

    def _drop_all_recordings(self) -> None:
        while self._spoken_files:
            self._spoken_files.popleft().unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------
    # Replies

    @property
    def replying(self) -> bool:
        return self._replying.is_set()

    def reply(self, message: dict[str, Any], settings: ReplySettings) -> Iterator[ReplyUpdate]:
        """Stream the reply to `message` (from `user_turn`/`voice_turn`); the last update carries
        ReplyDone (or the error). A reply still stopping is waited for first."""
        self.stop()
        if not self._reply_lock.acquire(timeout=REPLY_WAIT_S):
            raise InputError(f"the previous reply did not stop within {REPLY_WAIT_S:.0f} s; press Stop or Clear")
        try:
            self._stop_requested.clear()
            self._stopped_at = None
            self._replying.set()
            yield from self._stream_reply(message, settings)
        finally:
            self._replying.clear()
            self._reply_lock.release()

    def _stream_reply(self, message: dict[str, Any], settings: ReplySettings) -> Iterator[ReplyUpdate]:
        entry = {"role": "assistant", "content": ""}
        self.history.append(entry)
        update = ReplyUpdate(text="")
        started = time.perf_counter()
        first_audio_at, audio_handed_s = None, 0.0
        self.session.use_audio_in_video = settings.use_audio_in_video
        try:
            with self.session.stream([message], **settings.stream_options()) as events:
                if self._stop_requested.is_set():
                    events.cancel()  # a stop that came before the session had started this reply
                for event in events:
                    if isinstance(event, TextDelta):
                        update = replace(update, text=update.text + event.text, audio_wav=None)
                    elif isinstance(event, AudioChunk):
                        if update.first_audio_s is None:
                            first_audio_at = time.perf_counter()
                            update = replace(update, first_audio_s=first_audio_at - started)
                        audio_handed_s += event.duration_s
                        update = replace(update, audio_wav=wav_bytes(event.samples, event.sample_rate_hz))
                    elif isinstance(event, ReplyDone):
                        update = replace(update, text=event.text, audio_wav=None, done=event)
                    entry["content"] = update.text
                    yield update
            if update.done is not None and update.done.finish_reason == "cancelled" and first_audio_at is not None:
                text = self._cut_to_heard(first_audio_at, audio_handed_s)
                if text is not None and text != update.text:
                    entry["content"] = text
                    update = replace(update, text=text, audio_wav=None)
                    yield update
        except OmniError as exc:
            # the user's input was refused (bad media, limits): say so in the chat, keep the app running
            entry["content"] = f"⚠ {exc}"
            update = replace(update, audio_wav=None, error=str(exc))
            yield update

    def _cut_to_heard(self, first_audio_at: float, audio_handed_s: float) -> str | None:
        """After a stop: the browser plays the speech as it arrives, so the user heard at most the time
        from the first chunk to the stop (and never more than was handed out). The reply, already cut to
        the audio handed out, is cut to that (OmniSession.truncate_reply); returns the text kept."""
        stopped_at = self._stopped_at if self._stopped_at is not None else time.perf_counter()
        heard_s = max(0.0, min(audio_handed_s, stopped_at - first_audio_at))
        try:
            return self.session.truncate_reply(heard_s)
        except InputError:  # nothing spoken was recorded (a stop before the turn was read)
            return None

    def stop(self) -> None:
        """Stop the reply in progress (within one decoding step); its partial text stays, as far as
        the user heard it."""
        self._stopped_at = time.perf_counter()
        self._stop_requested.set()
        self.session.cancel()

    def reset(self) -> None:
        self.session.reset()
        self.history.clear()
        self.spoken_turns.clear()
        self._drop_all_recordings()
        if self._detector is not None:
            self._detector.reset()

    def close(self) -> None:
        """The user left: stop the reply, delete this conversation's recordings (and its private media
        dir). The conversation can still be used afterwards; it starts a new media dir if needed."""
        self.stop()
        self._drop_all_recordings()
        if self._own_media_dir and self.media_dir is not None:
            shutil.rmtree(self.media_dir, ignore_errors=True)
            self.media_dir, self._own_media_dir = None, False

    def set_system_prompt(self, system_prompt: str | None) -> bool:
        """A new system prompt starts a new conversation (it is the first thing the model read).
        Returns True when it changed."""
        system_prompt = (system_prompt or "").strip() or None
        if system_prompt == self.system_prompt:
            return False
        self.system_prompt = system_prompt
        self.session.system_prompt = system_prompt
        self.reset()
        return True

    # ------------------------------------------------------------------------------------------
    # Voice chat

    def hear(self, samples: np.ndarray, sample_rate_hz: int) -> list[TurnEvent]:
        """Feed a microphone chunk. Speech while a reply streams stops it (barge-in); an ended turn's
        utterance is queued for `next_spoken_turn`."""
        if self._detector is None:
            self._detector = EndOfTurnDetector(self.vad_options)
        return self._handle(self._detector.feed(samples, sample_rate_hz))

    def end_of_microphone(self) -> list[TurnEvent]:
        """The microphone stopped: an utterance in progress ends its turn."""
        return self._handle(self._detector.flush() if self._detector is not None else [])

    def _handle(self, events: list[TurnEvent]) -> list[TurnEvent]:
        for event in events:
            if event.kind == "speech_start" and self.replying:
                self.stop()
            elif event.kind == "turn_end" and event.audio is not None:
                self.spoken_turns.append(event.audio)
        return events

    def next_spoken_turn(self) -> dict[str, Any] | None:
        """The oldest unanswered utterance as a message (recorded in the history), or None."""
        if not self.spoken_turns:
            return None
        return self.voice_turn(self.spoken_turns.popleft())
