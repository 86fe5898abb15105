"""`omni demo MODEL`: serves the app on the requested loopback port; bad models fail clearly."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

from omni.cli import build_parser


def test_demo_options_parse():
    args = build_parser().parse_args(["demo", "ckpt/tiny", "--host", "0.0.0.0", "--port", "8000", "--share", "no",
                                      "--dtype", "fp32"])
    assert (args.model, args.host, args.port, args.share, args.dtype) == ("ckpt/tiny", "0.0.0.0", 8000, "no", "fp32")
    defaults = build_parser().parse_args(["demo", "m"])
    assert (defaults.host, defaults.port, defaults.share) == ("127.0.0.1", 7860, "no")


def test_omni_demo_serves_the_app(tiny_checkpoint):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "omni.cli", "demo", str(tiny_checkpoint), "--port", str(port), "--dtype", "fp32"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        page = None
        while page is None and time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as response:
                    page = response.read().decode()
            except OSError:
                time.sleep(0.5)
        assert page is not None, server.stdout.read() if server.poll() is not None else "no answer in 90 s"
        assert '"title":"omni"' in page.replace(" ", "") and "Spoken reply" in page
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_omni_demo_names_a_missing_model(tmp_path):
    result = subprocess.run([sys.executable, "-m", "omni.cli", "demo", str(tmp_path / "nowhere")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "omni: error:" in result.stderr and "nowhere" in result.stderr
    assert "Traceback" not in result.stderr
