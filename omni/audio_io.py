"""Audio out of omni: float32 mono samples to 16-bit PCM, WAV files/bytes, and local playback
(whole files, or a reply's stream as it is generated)."""

from __future__ import annotations

import io
import os
import queue
import shutil
import subprocess
import threading
import wave
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np


def pcm16_bytes(samples: np.ndarray) -> bytes:
    """Little-endian signed 16-bit PCM of float samples in [-1, 1] (clipped)."""
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return (clipped * 32767.0).round().astype("<i2").tobytes()


def wav_bytes(samples: np.ndarray, sample_rate_hz: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(int(sample_rate_hz))
        wav.writeframes(pcm16_bytes(samples))
    return buffer.getvalue()


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate_hz: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wav_bytes(samples, sample_rate_hz))
    return path


@dataclass(frozen=True)
class PcmPlayer:
    """A system player that plays raw 16-bit mono PCM read from its stdin."""

    name: str
    package: str  # what installs it, for the message when none is found
    arguments: tuple[str, ...]  # "{rate}" stands for the sample rate in Hz
    executable: str = ""  # resolved on PATH by find_pcm_player

    def command(self, sample_rate_hz: int) -> list[str]:
        return [self.executable or self.name, *(a.replace("{rate}", str(int(sample_rate_hz))) for a in self.arguments)]


# In the order tried. Each reads headerless PCM16 LE mono from stdin, so audio plays as it is
# generated (a WAV header would need the length up front).
PCM_PLAYERS = (
    PcmPlayer("aplay", "alsa-utils", ("-q", "-t", "raw", "-f", "S16_LE", "-r", "{rate}", "-c", "1", "-")),
    PcmPlayer("paplay", "pulseaudio-utils", ("--raw", "--format=s16le", "--rate={rate}", "--channels=1")),
    PcmPlayer("pw-play", "pipewire-bin", ("--format=s16", "--rate={rate}", "--channels=1", "-")),
    PcmPlayer("ffplay", "ffmpeg",
              ("-loglevel", "error", "-nodisp", "-autoexit", "-f", "s16le", "-ar", "{rate}", "-i", "-")),
    PcmPlayer("play", "sox", ("-q", "-t", "raw", "-e", "signed-integer", "-b", "16", "-c", "1", "-r", "{rate}", "-")),
)


def find_pcm_player() -> PcmPlayer | None:
    """The first player of PCM_PLAYERS on PATH, or None."""
    for player in PCM_PLAYERS:
        found = shutil.which(player.name)
        if found:
            return replace(player, executable=found)
    return None


def no_player_message() -> str:
    names = ", ".join(f"{p.name} ({p.package})" for p in PCM_PLAYERS)
    return f"no audio player found on PATH; --play needs one of: {names}"


class StreamingPlayback:
    """Plays one stream of PCM16 as it arrives, through a player process reading its stdin.

    `feed` never blocks: a pipe holds about a second of audio and the player drains it in real
    time, so writes wait in a queue for a writer thread, and text keeps streaming meanwhile."""

    def __init__(self, player: PcmPlayer, sample_rate_hz: int) -> None:
        self.player = player
        # Its own session: a Ctrl-C in the terminal reaches omni only, which stops the player itself
        # (after the reply is cancelled cleanly) instead of the player dying mid-write.
        self._process = subprocess.Popen(
            player.command(sample_rate_hz), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._stopped = False
        self._writer = threading.Thread(target=self._write, name=f"omni-{player.name}", daemon=True)
        self._writer.start()

    def feed(self, pcm16: bytes) -> None:
        if not self._stopped:
            self._queue.put(pcm16)

    def finish(self, stop: threading.Event | None = None) -> int | None:
        """Let the player play out what it was fed and exit; returns its exit status. Returns
        early (stopping the player) once `stop` is set."""
        self._queue.put(None)
        while True:
            try:
                status = self._process.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                if stop is not None and stop.is_set():
                    self.stop()
                    return None
        self._writer.join(timeout=5)
        return status

    def stop(self) -> None:
        """Silence now: what is queued is dropped and the player is ended."""
        self._stopped = True
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._queue.put(None)  # wakes a writer waiting for audio; one blocked on the pipe got EPIPE
        self._writer.join(timeout=5)

    def _write(self) -> None:
        stdin = self._process.stdin
        try:
            while (pcm16 := self._queue.get()) is not None:
                if self._stopped:
                    continue
                stdin.write(pcm16)
                stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the player ended (stopped, or failed and said why on stderr): nothing to write to
        finally:
            try:
                stdin.close()
            except OSError:
                pass
