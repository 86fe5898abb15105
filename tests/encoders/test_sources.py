"""Where media bytes come from: paths, file:// URLs, bytes, data URIs, http(s) only when enabled, with
size caps, a fetch timeout and an optional media root."""

from __future__ import annotations

import base64
import http.server
import threading
import time

import pytest

from omni.encoders.limits import MediaLimits
from omni.encoders.sources import resolve_source
from omni.errors import MediaError


def test_path_file_url_bytes_and_data_uri_give_the_same_bytes(media):
    data = media.image_png.read_bytes()
    limits = MediaLimits()
    by_path = resolve_source(str(media.image_png), limits, "image")
    by_pathlike = resolve_source(media.image_png, limits, "image")
    by_url = resolve_source(media.image_png.as_uri(), limits, "image")
    by_bytes = resolve_source(data, limits, "image")
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    by_uri = resolve_source(uri, limits, "image")
    for source in (by_path, by_pathlike, by_url, by_bytes, by_uri):
        with source.open() as handle:
            assert handle.read() == data
    assert by_path.path == media.image_png and by_path.name == str(media.image_png)
    assert "image/png" in by_uri.name


def test_missing_file_and_directory_are_media_errors(tmp_path):
    with pytest.raises(MediaError, match="does not exist"):
        resolve_source(str(tmp_path / "nope.wav"), MediaLimits(), "audio")
    with pytest.raises(MediaError, match="not a regular file"):
        resolve_source(str(tmp_path), MediaLimits(), "audio")


def test_size_caps_name_the_limit(media):
    small = MediaLimits(max_file_bytes=100)
    with pytest.raises(MediaError, match="over the .* MiB limit"):
        resolve_source(str(media.image_png), small, "image")
    with pytest.raises(MediaError, match="MiB limit"):
        resolve_source(b"x" * 101, small, "image")
    with pytest.raises(MediaError, match="data URI"):
        resolve_source("data:image/png;base64," + "A" * 400, small, "image")


def test_bad_data_uris_and_schemes():
    with pytest.raises(MediaError, match="base64"):
        resolve_source("data:image/png;base64,@@@notbase64", MediaLimits(), "image")
    with pytest.raises(MediaError, match="separating"):
        resolve_source("data:image/png;base64", MediaLimits(), "image")
    with pytest.raises(MediaError, match="scheme 'ftp'"):
        resolve_source("ftp://example.com/a.png", MediaLimits(), "image")
    with pytest.raises(MediaError, match="bytes"):
        resolve_source(12345, MediaLimits(), "image")


def test_media_root_keeps_paths_inside(media, tmp_path):
    limits = MediaLimits(media_root=media.directory)
    assert resolve_source(media.image_png.name, limits, "image").path == media.image_png.resolve()
    assert resolve_source(str(media.image_png), limits, "image").path == media.image_png.resolve()
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    with pytest.raises(MediaError, match="outside the media root"):
        resolve_source(str(outside), limits, "image")
    with pytest.raises(MediaError, match="outside the media root"):
        resolve_source("../" * 8 + "etc/passwd", limits, "image")


class _Handler(http.server.BaseHTTPRequestHandler):
    payload = b""

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            for _ in range(50):
                self.wfile.write(b"x" * 10)
                self.wfile.flush()
                time.sleep(0.05)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(media):
    _Handler.payload = media.image_png.read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_remote_fetch_is_off_by_default_and_works_when_enabled(http_server, media):
    url = f"{http_server}/picture.png"
    with pytest.raises(MediaError, match="remote fetching is disabled"):
        resolve_source(url, MediaLimits(), "image")
    fetched = resolve_source(url, MediaLimits(allow_remote=True), "image")
    assert fetched.data == media.image_png.read_bytes()
    with pytest.raises(MediaError, match="MiB limit"):
        resolve_source(url, MediaLimits(allow_remote=True, max_remote_bytes=100), "image")


def test_remote_fetch_has_a_deadline(http_server):
    start = time.monotonic()
    with pytest.raises(MediaError, match="within 0.5 s"):
        resolve_source(f"{http_server}/slow", MediaLimits(allow_remote=True, remote_timeout_s=0.5), "image")
    assert time.monotonic() - start < 2.0


def test_unreachable_host_is_a_media_error():
    limits = MediaLimits(allow_remote=True, remote_timeout_s=1.0)
    with pytest.raises(MediaError, match="could not be fetched"):
        resolve_source("http://127.0.0.1:9/none.png", limits, "image")
