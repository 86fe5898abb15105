"""Real omni servers (uvicorn on a free loopback port, in a background thread) over the tiny
checkpoint, built once per test session, and the media the requests send."""

from __future__ import annotations

import base64
import http.server
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from omni.encoders.limits import MediaLimits
from omni.server.app import ServerConfig, create_app
from omni.tools.media_factory import drawing, tone, video_frames, write_audio, write_video

MIB = 1024 * 1024


@dataclass
class RunningServer:
    base_url: str
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def openai(self, **options):
        from openai import OpenAI

        return OpenAI(base_url=self.v1, api_key="unused", max_retries=0, **options)

    def stats(self) -> dict:
        return httpx.get(f"{self.base_url}/stats", timeout=10).json()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(loaded, config: ServerConfig) -> RunningServer:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(loaded, config), log_config=None, timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"omni-test-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    return RunningServer(f"http://127.0.0.1:{port}", server, thread)


@dataclass
class ServerMedia:
    root: Path  # the servers' --media-root
    image_png: Path
    big_image_png: Path  # over the pixel limit of the main server
    speech_wav: Path  # 1.5 s tone
    video_mp4: Path
    outside: Path  # an image outside the media root


@pytest.fixture(scope="session")
def server_media(tmp_path_factory) -> ServerMedia:
    root = tmp_path_factory.mktemp("media-root")
    outside = tmp_path_factory.mktemp("outside") / "secret.png"
    drawing(64, 48, seed=3).save(outside)
    media = ServerMedia(root, root / "drawing.png", root / "big.png", root / "tone.wav",
                        root / "clip.mp4", outside)
    drawing(200, 150, seed=1).save(media.image_png)
    drawing(1200, 1000, seed=2).save(media.big_image_png)
    write_audio(media.speech_wav, tone(1.5, 440.0), 16000, "wav")
    write_video(media.video_mp4, video_frames(20, 112, 84, seed=4), 10, "mp4")
    return media


@pytest.fixture(scope="session")
def served_model(tiny_checkpoint):
    """The tiny checkpoint with audio output when this build has it."""
    from omni.loading import load_model

    return load_model(tiny_checkpoint, dtype="fp32")


MAIN_LIMITS = {"max_audio_seconds": 5.0, "max_image_source_pixels": 1000 * 1000, "max_remote_bytes": 256 * 1024,
               "remote_timeout_s": 1.0}


@pytest.fixture(scope="session")
def server(served_model, server_media):
    """Media root set, remote fetching on (loopback allowed, for the test HTTP server), 2 MiB bodies."""
    limits = MediaLimits(allow_remote=True, media_root=server_media.root, **MAIN_LIMITS)
    config = ServerConfig(model_name="omni-tiny", max_concurrent=4, max_queue=8, max_body_bytes=2 * MIB,
                          media_limits=limits, allow_private_remote=True, default_max_tokens=16)
    running = start_server(served_model, config)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def strict_server(tiny_text_model):
    """A text-only model; no media root; remote fetching on but only to public addresses; one slot, no queue."""
    config = ServerConfig(model_name="omni-text", max_concurrent=1, max_queue=0,
                          media_limits=MediaLimits(allow_remote=True), default_max_tokens=16)
    running = start_server(tiny_text_model, config)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def closed_server(tiny_text_model):
    """Defaults: remote fetching off, local paths refused."""
    running = start_server(tiny_text_model, ServerConfig(model_name="omni-closed", default_max_tokens=8))
    yield running
    running.stop()


class _MediaHandler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            for _ in range(40):  # drips bytes for ~4 s, past the server's 1 s fetch timeout
                try:
                    self.wfile.write(b"\x89")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.1)
            return
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="session")
def media_http(server_media):
    """A loopback HTTP server holding the test media: /drawing.png, /big.bin (over the remote cap), /slow."""
    _MediaHandler.files = {"/drawing.png": server_media.image_png.read_bytes(), "/big.bin": b"\0" * (512 * 1024)}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MediaHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def data_uri(path: Path, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(path.read_bytes()).decode()}"


def b64_file(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def greedy(**extra) -> dict:
    return {"temperature": 0, **extra}


def pcm16_samples(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2")
