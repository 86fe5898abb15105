"""Audio out of omni: float32 mono samples to 16-bit PCM, WAV files/bytes, and local playback."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import wave
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


def play(path: str | os.PathLike) -> bool:
    """Play a WAV file with the first player found (aplay, paplay, ffplay, afplay); False when none."""
    for player, args in (("aplay", ["-q"]), ("paplay", []), ("ffplay", ["-nodisp", "-autoexit", "-loglevel", "quiet"]),
                         ("afplay", [])):
        if shutil.which(player):
            return subprocess.run([player, *args, str(path)], check=False).returncode == 0
    return False
