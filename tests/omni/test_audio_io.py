from __future__ import annotations

import wave

import numpy as np

from omni.audio_io import pcm16_bytes, write_wav
from omni.events import AudioChunk


def test_pcm16_scaling_and_clipping():
    data = np.frombuffer(pcm16_bytes(np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -3.0], dtype=np.float32)), dtype="<i2")
    assert data.tolist() == [0, 16384, -16384, 32767, -32767, 32767, -32767]


def test_wav_roundtrip(tmp_path):
    samples = (0.25 * np.sin(np.linspace(0, 100, 24000))).astype(np.float32)
    path = write_wav(tmp_path / "out" / "a.wav", samples, 24000)
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes()) == (1, 2, 24000, 24000)
        back = np.frombuffer(wav.readframes(24000), dtype="<i2") / 32767.0
    assert np.abs(back - samples).max() < 1e-4
    chunk = AudioChunk(samples, 24000, 0)
    assert chunk.pcm16() == pcm16_bytes(samples) and chunk.duration_s == 1.0
