"""The `omni` command line, run as users run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _omni(*args, stdin=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "omni.cli", *args], input=stdin, capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def test_run_streams_a_text_reply(tiny_checkpoint):
    result = _omni("run", str(tiny_checkpoint), "--prompt", "Hello", "--max-new-tokens", "6", "--text-only", "--dtype", "fp32")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_run_with_an_image(tiny_checkpoint, tmp_path):
    from omni.tools.media_factory import drawing

    drawing(64, 64).save(tmp_path / "a.png")
    result = _omni("run", str(tiny_checkpoint), "--prompt", "What is this?", "--image", str(tmp_path / "a.png"),
                   "--max-new-tokens", "4", "--text-only")
    assert result.returncode == 0, result.stderr


def test_chat_keeps_turns_and_resets(tiny_checkpoint):
    result = _omni("chat", str(tiny_checkpoint), "--max-new-tokens", "4", "--text-only",
                   stdin="first\nsecond\n/reset\nthird\n/quit\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("omni> ") == 3
    assert "[conversation reset]" in result.stderr


def test_errors_are_one_clear_line(tiny_checkpoint, tmp_path):
    missing = _omni("run", str(tmp_path / "nowhere"), "--prompt", "x")
    assert missing.returncode == 2 and missing.stderr.startswith("omni: error: checkpoint directory")
    bad_image = _omni("run", str(tiny_checkpoint), "--prompt", "x", "--image", str(tmp_path / "none.png"), "--text-only")
    assert bad_image.returncode == 2 and "none.png" in bad_image.stderr and "Traceback" not in bad_image.stderr


def test_make_checkpoint_command(tmp_path):
    result = _omni("make-checkpoint", str(tmp_path / "ck"), "--preset", "tiny")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ck" / "config.json").is_file() and (tmp_path / "ck" / "spk_dict.pt").is_file()


def test_run_speaks_into_a_wav_file(tiny_checkpoint, tmp_path):
    import wave

    out = tmp_path / "reply.wav"
    result = _omni("run", str(tiny_checkpoint), "--prompt", "Hello", "--max-new-tokens", "3", "--voice", "Ethan",
                   "--max-speech-seconds", "1", "--seed", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    with wave.open(str(out)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)
        assert 0 < wav.getnframes() <= 24000
    assert "audio:" in result.stderr
