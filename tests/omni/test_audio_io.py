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


def _script(path, body: str):
    import sys

    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


def test_streaming_playback_delivers_every_byte_in_order(tmp_path):
    from omni.audio_io import PcmPlayer, StreamingPlayback

    capture = tmp_path / "played.raw"
    player = _script(tmp_path / "player",
                     f"import shutil, sys\nshutil.copyfileobj(sys.stdin.buffer, open({str(capture)!r}, 'wb'))\n")
    playback = StreamingPlayback(PcmPlayer("player", "test", (), executable=str(player)), 24000)
    pieces = [bytes([i]) * 30000 for i in range(10)]  # more than a pipe holds
    for piece in pieces:
        playback.feed(piece)
    assert playback.finish() == 0
    assert capture.read_bytes() == b"".join(pieces)


def test_a_stalled_player_never_blocks_the_feeder_and_stops_at_once(tmp_path):
    import threading
    import time

    from omni.audio_io import PcmPlayer, StreamingPlayback

    stalled = _script(tmp_path / "player", "import time\ntime.sleep(60)\n")  # never reads its stdin
    playback = StreamingPlayback(PcmPlayer("player", "test", (), executable=str(stalled)), 24000)
    started = time.monotonic()
    for _ in range(40):
        playback.feed(b"\0" * 48000)  # 40 s of audio, far past the pipe's buffer
    assert time.monotonic() - started < 1.0
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    assert playback.finish(stop) is None  # Ctrl-C while it plays out: ends the player
    assert time.monotonic() - started < 5.0
    assert playback._process.poll() is not None and not playback._writer.is_alive()
