"""The `omni` command line, run as users run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

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


# --------------------------------------------------------------------------------------------------
# Ctrl-C during a reply: the reply stops, the chat goes on, nothing crashes.


class _Console:
    """A CLI process talked to line by line: its stdout and stderr are read as they come."""

    def __init__(self, *args) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "omni.cli", *args], cwd=REPO, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out, self.err = bytearray(), bytearray()
        self._readers = [threading.Thread(target=self._read, args=(pipe, sink), daemon=True)
                         for pipe, sink in ((self.process.stdout, self.out), (self.process.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(pipe, sink: bytearray) -> None:
        while block := os.read(pipe.fileno(), 4096):
            sink.extend(block)

    @property
    def stdout(self) -> str:
        return self.out.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.err.decode("utf-8", "replace")

    def send(self, line: str) -> None:
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def wait_for(self, condition, what: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition(self.stdout):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"never saw {what}; stdout: {self.stdout[-500:]!r}; stderr: {self.stderr[-2000:]}")
            time.sleep(0.02)

    def finish(self, timeout_s: float = 120) -> int:
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        code = self.process.wait(timeout=timeout_s)
        for reader in self._readers:
            reader.join(timeout=10)
        return code


def _replying(nth: int, characters: int = 3):
    """True once the nth reply ("omni> " in chat) has streamed at least `characters` characters."""
    def condition(stdout: str) -> bool:
        parts = stdout.split("omni> ")
        return len(parts) > nth and len(parts[nth].strip()) >= characters
    return condition


def test_ctrl_c_stops_a_chat_reply_and_the_chat_takes_the_next_line(tiny_checkpoint):
    # 2000 tokens stream for many seconds on the tiny model: Ctrl-C lands mid-reply
    chat = _Console("chat", str(tiny_checkpoint), "--max-new-tokens", "2000", "--dtype", "fp32")
    chat.send("tell me a long story")
    chat.wait_for(_replying(1), "the first reply streaming")
    chat.process.send_signal(signal.SIGINT)
    chat.wait_for(lambda out: out.count("[stopped]") == 1, "the first reply stopped")
    chat.send("and another one")
    chat.wait_for(_replying(2), "the second line answered")
    chat.process.send_signal(signal.SIGINT)
    chat.wait_for(lambda out: out.count("[stopped]") == 2, "the second reply stopped")
    chat.send("/quit")
    assert chat.finish() == 0, chat.stderr
    assert "Traceback" not in chat.stderr and "omni: error" not in chat.stderr, chat.stderr
    second_reply = chat.stdout.split("omni> ")[2]
    assert second_reply.split("[stopped]")[0].strip()  # answered with text before it was stopped


def test_ctrl_c_ends_omni_run_cleanly(tiny_checkpoint):
    run = _Console("run", str(tiny_checkpoint), "--prompt", "tell me a long story", "--max-new-tokens", "2000",
                   "--dtype", "fp32")
    run.wait_for(lambda out: len(out.strip()) >= 3, "the reply streaming")
    run.process.send_signal(signal.SIGINT)
    assert run.finish() == 130  # the shell's code for a command stopped by Ctrl-C
    assert run.stdout.rstrip().endswith("[stopped]")
    assert "Traceback" not in run.stderr, run.stderr


# --------------------------------------------------------------------------------------------------
# Speech: made only when someone hears or keeps it, played as it arrives.


@pytest.fixture
def recorded_replies(monkeypatch):
    """Every reply the CLI starts, run in this process: the stream() arguments, the loaded model
    and the events. Hooks: `on_start` runs as a reply starts; `before_last_audio` just before the
    reply's final audio chunk is handed to the CLI (the reply is still streaming then)."""
    from omni.events import AudioChunk, ReplyDone
    from omni.session import OmniSession

    replies = []
    original = OmniSession.stream

    class Recorded:
        def __init__(self, stream, record):
            self.stream, self.record = stream, record

        def __iter__(self):
            held = None
            for event in self.stream:
                self.record["events"].append(event)
                if isinstance(event, AudioChunk):
                    if held is not None:
                        yield held
                    held = event
                    continue
                if held is not None:
                    if isinstance(event, ReplyDone) and replies.before_last_audio is not None:
                        self.record["before_last_audio"] = replies.before_last_audio()
                    yield held
                    held = None
                yield event
            if held is not None:
                yield held

        def cancel(self):
            self.stream.cancel()

        def close(self):
            self.stream.close()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.stream.close()

    def stream(session, message, **options):
        record = {"options": options, "audio_loaded": session.model.audio_output, "events": []}
        if replies.on_start is not None:
            record["on_start"] = replies.on_start()
        replies.append(record)
        return Recorded(original(session, message, **options), record)

    class Replies(list):
        on_start = None
        before_last_audio = None

    replies = Replies()
    monkeypatch.setattr(OmniSession, "stream", stream)
    return replies


@pytest.fixture
def fake_player(tmp_path, monkeypatch):
    """An `aplay` that copies its stdin to a file, alone on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    capture, argv = tmp_path / "played.raw", tmp_path / "player-argv.json"
    script = bin_dir / "aplay"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"open({str(argv)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
        f"with open({str(capture)!r}, 'wb') as sink:\n"
        "    while block := sys.stdin.buffer.read1(65536):\n"
        "        sink.write(block)\n"
        "        sink.flush()\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return capture, argv


def _size_within(path: Path, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return path.stat().st_size
        time.sleep(0.02)
    return 0


def test_play_streams_the_speech_to_the_player_as_it_is_generated(tiny_checkpoint, tmp_path, fake_player,
                                                                  recorded_replies, capsys):
    import wave

    from omni import cli
    from omni.events import AudioChunk

    capture, argv = fake_player
    recorded_replies.before_last_audio = lambda: _size_within(capture, timeout_s=30)
    out = tmp_path / "reply.wav"
    code = cli.main(["run", str(tiny_checkpoint), "--prompt", "Hello", "--max-new-tokens", "4", "--seed", "1",
                     "--max-speech-seconds", "3", "--play", "--out", str(out), "--dtype", "fp32"])
    assert code == 0, capsys.readouterr().err
    (reply,) = recorded_replies
    chunks = [event for event in reply["events"] if isinstance(event, AudioChunk)]
    assert len(chunks) >= 2 and reply["options"]["return_audio"]
    # the player had audio before the reply's last chunk existed for the CLI: it plays as it arrives
    assert reply["before_last_audio"] > 0
    assert reply["before_last_audio"] <= sum(len(c.pcm16()) for c in chunks[:-1])
    with wave.open(str(out)) as wav:
        saved = wav.readframes(wav.getnframes())
    assert capture.read_bytes() == saved == b"".join(c.pcm16() for c in chunks)  # all of it, in order
    assert json.loads(argv.read_text()) == ["-q", "-t", "raw", "-f", "S16_LE", "-r", "24000", "-c", "1", "-"]


def test_a_missing_player_is_named_at_startup_and_no_speech_is_made(tiny_checkpoint, tmp_path, monkeypatch,
                                                                      recorded_replies, capsys):
    from omni import cli

    monkeypatch.setenv("PATH", str(tmp_path))  # no player anywhere
    recorded_replies.on_start = lambda: capsys.readouterr().err  # what was said before the reply began
    code = cli.main(["run", str(tiny_checkpoint), "--prompt", "Hello", "--max-new-tokens", "4", "--play"])
    assert code == 0
    (reply,) = recorded_replies
    message = reply["on_start"]
    assert "no audio player found" in message and "replying in text only" in message
    for name in ("aplay", "paplay", "pw-play", "ffplay", "sox"):
        assert name in message
    assert reply["options"]["return_audio"] is False and reply["audio_loaded"] is False
    assert reply["events"][-1].usage.codec_tokens == 0


def test_a_reply_nobody_hears_never_runs_the_talker(tiny_checkpoint, recorded_replies, capsys):
    from omni import cli

    code = cli.main(["run", str(tiny_checkpoint), "--prompt", "Hello", "--max-new-tokens", "4", "--dtype", "fp32"])
    assert code == 0
    (reply,) = recorded_replies
    # the Talker and codec are not even loaded, and the reply asks for no audio
    assert reply["audio_loaded"] is False and reply["options"]["return_audio"] is False
    assert reply["events"][-1].usage.codec_tokens == 0
    assert capsys.readouterr().out.strip()


def test_text_only_with_out_is_refused(tiny_checkpoint, tmp_path):
    result = _omni("run", str(tiny_checkpoint), "--prompt", "x", "--text-only", "--out", str(tmp_path / "a.wav"))
    assert result.returncode == 2 and result.stderr.startswith("omni: error: --text-only contradicts --out")
    assert len(result.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------------
# make-checkpoint replaces only what it wrote.


def test_make_checkpoint_refuses_a_directory_it_did_not_write(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    refused = _omni("make-checkpoint", str(target))
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith("omni: error:") and len(refused.stderr.strip().splitlines()) == 1
    assert "--force" in refused.stderr and "notes.txt" in refused.stderr
    assert (target / "notes.txt").read_text() == "keep me"

    forced = _omni("make-checkpoint", str(target), "--force")
    assert forced.returncode == 0, forced.stderr
    assert not (target / "notes.txt").exists() and (target / "config.json").is_file()

    (target / "stale.txt").write_text("from an earlier build")
    again = _omni("make-checkpoint", str(target))  # its own output: replaced without --force
    assert again.returncode == 0, again.stderr
    assert (target / "config.json").is_file() and not (target / "stale.txt").exists()


def test_make_checkpoint_refuses_a_file_and_never_empties_the_current_directory(tmp_path):
    (tmp_path / "a-file").write_text("x")
    as_file = _omni("make-checkpoint", str(tmp_path / "a-file"))
    assert as_file.returncode == 2 and "not a directory" in as_file.stderr
    assert (tmp_path / "a-file").read_text() == "x"

    inside = tmp_path / "inside"
    inside.mkdir()
    here = subprocess.run([sys.executable, "-m", "omni.cli", "make-checkpoint", str(tmp_path), "--force"],
                          capture_output=True, text=True, cwd=inside, timeout=180)
    assert here.returncode == 2 and "current directory" in here.stderr, here.stderr
    assert (tmp_path / "a-file").exists()


def test_a_player_that_cannot_start_leaves_the_text_reply(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from omni import cli

    broken = tmp_path / "aplay"
    broken.write_text("#!/nonexistent/interpreter\n")  # on PATH and executable, yet exec fails
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    code = cli.main(["run", str(tiny_checkpoint), "--prompt", "Hello", "--max-new-tokens", "4", "--play",
                     "--max-speech-seconds", "1", "--dtype", "fp32"])
    captured = capsys.readouterr()
    assert code == 0 and captured.out.strip()
    assert f"cannot start {broken}" in captured.err and "Traceback" not in captured.err
