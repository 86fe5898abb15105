"""`omni serve` in a child process on a free loopback port, for the benches that load it over HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """`omni serve CHECKPOINT --port P --log-level warning OPTIONS...`, started at once."""

    def __init__(self, checkpoint: Path, options: list[str], ready_timeout_s: float = 600.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_timeout_s = ready_timeout_s
        command = [sys.executable, "-m", "omni.cli", "serve", str(checkpoint), "--port", str(self.port),
                   "--log-level", "warning", *options]
        self.process = subprocess.Popen(command, cwd=REPO)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the server did not start within {self.ready_timeout_s:.0f} s")
            time.sleep(0.2)

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/stats", timeout=10).json()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
