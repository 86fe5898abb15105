"""`omni serve`: the arguments become the server's limits, and the command serves requests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from omni.cli import build_parser
from omni.errors import InputError
from omni.server.cli import config_from_args

REPO = Path(__file__).resolve().parents[3]


def test_serve_arguments_become_the_config(tmp_path):
    args = build_parser().parse_args([
        "serve", "ckpt/tiny", "--max-concurrent", "3", "--max-queue", "5", "--max-body-mb", "1.5",
        "--media-root", str(tmp_path), "--allow-remote-media", "--max-audio-seconds", "30",
        "--max-image-source-pixels", "4000000", "--max-decode-seconds", "45"])
    config = config_from_args(args)
    assert (config.model_name, config.max_concurrent, config.max_queue) == ("tiny", 3, 5)
    assert config.max_body_bytes == int(1.5 * 1024 * 1024) and not config.allow_private_remote
    limits = config.media_limits
    assert limits.allow_remote and limits.media_root == tmp_path.resolve()
    assert (limits.max_audio_seconds, limits.max_image_source_pixels) == (30.0, 4_000_000)
    assert limits.max_decode_seconds == 45.0
    closed = config_from_args(build_parser().parse_args(["serve", "ckpt/tiny", "--served-model-name", "omni"]))
    assert closed.model_name == "omni" and closed.media_limits.media_root is None
    assert not closed.media_limits.allow_remote
    with pytest.raises(InputError, match="--max-concurrent must be >= 1"):
        config_from_args(build_parser().parse_args(["serve", "ckpt/tiny", "--max-concurrent", "0"]))


def test_serve_command_answers_over_http(tiny_checkpoint):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "omni.cli", "serve", str(tiny_checkpoint), "--port", str(port), "--dtype", "fp32",
               "--served-model-name", "omni-cli", "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "omni serve did not start"
            time.sleep(0.2)
        assert httpx.get(f"{base}/v1/models").json()["data"][0]["id"] == "omni-cli"
        reply = httpx.post(f"{base}/v1/chat/completions", timeout=60, json={
            "model": "omni-cli", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_bad_count_is_refused_before_the_model_loads(tmp_path):
    result = subprocess.run([sys.executable, "-m", "omni.cli", "serve", str(tmp_path / "no-model"), "--max-queue", "-1"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert "--max-queue must be >= 0" in result.stderr and "Traceback" not in result.stderr
