"""Remote fetching restricted to public hosts follows no redirect into a private network."""

import http.server
import threading

import pytest

from omni.encoders.limits import MediaLimits
from omni.encoders.sources import resolve_source
from omni.errors import MediaError


@pytest.fixture
def redirecting_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:1/secret")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/picture.png"
    server.shutdown()


def test_loopback_url_is_refused_when_only_public_hosts_are_allowed(redirecting_server):
    limits = MediaLimits(allow_remote=True, public_remote_only=True)
    with pytest.raises(MediaError, match="non-public address 127.0.0.1"):
        resolve_source(redirecting_server, limits, "image")


def test_redirect_to_a_private_host_is_refused(redirecting_server, monkeypatch):
    import omni.encoders.remote as remote

    checked = []
    real_check = remote.public_addresses

    def first_hop_is_public(url, kind):  # pretend the first server is public; its redirect is not
        checked.append(url)
        return ("127.0.0.1",) if len(checked) == 1 else real_check(url, kind)

    monkeypatch.setattr(remote, "public_addresses", first_hop_is_public)
    with pytest.raises(MediaError, match="non-public address 127.0.0.1"):
        resolve_source(redirecting_server, MediaLimits(allow_remote=True, public_remote_only=True), "image")
    assert checked[1] == "http://127.0.0.1:1/secret"
