"""Speech for the demo's tests: espeak-ng utterances (real speech for Silero to hear), decoded once."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from omni.tools.media_factory import speech

SPEECH_TEXT = "Hello there. What is the weather like in Paris today?"


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """int16 mono samples and the rate of a PCM WAV file."""
    with wave.open(str(path)) as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16), wav.getframerate()


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    return speech(tmp_path_factory.mktemp("speech") / "question.wav", SPEECH_TEXT)


@pytest.fixture(scope="session")
def spoken(speech_wav) -> tuple[np.ndarray, int]:
    """(int16 samples, rate): espeak's 22.05 kHz speech with its own leading/trailing silence trimmed
    to the voiced part, so tests can place it exactly."""
    samples, rate = read_wav(speech_wav)
    voiced = np.flatnonzero(np.abs(samples.astype(np.int32)) > 300)
    return samples[voiced[0]:voiced[-1] + 1].copy(), rate
