"""The server's media policy answers refused sources with their own status and code, using the
encoders' own checks (one public-address check, one media-root check) rather than copies of them."""

from __future__ import annotations

import socket

import pytest

from omni.encoders.limits import MediaLimits
from omni.encoders.sources import resolve_source
from omni.errors import MediaError
from omni.server.errors import ApiError
from omni.server.media_policy import MediaPolicy

REMOTE = MediaPolicy(MediaLimits(allow_remote=True, public_remote_only=True))


@pytest.fixture
def dns(monkeypatch):
    """Names the tests resolve: media.test is public, intranet.test private, split.test both."""
    answers = {"media.test": ["93.184.216.34"], "intranet.test": ["10.0.0.5"],
               "split.test": ["93.184.216.34", "169.254.169.254"]}
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host.replace(".", "").isdigit() or ":" in host:  # an IP literal: no DNS involved
            return real_getaddrinfo(host, port, *args, **kwargs)
        host.encode("idna")  # as the real resolver does first: a label over 63 characters is a UnicodeError
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port or 0)) for address in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def _refusal(policy: MediaPolicy, url: str) -> ApiError:
    with pytest.raises(ApiError) as caught:
        policy.source(url, "image", "messages[0].content[0].image_url")
    return caught.value


def test_a_public_host_passes_and_private_ones_are_403(dns):
    assert REMOTE.source(" http://media.test/a.png ", "image", "p") == "http://media.test/a.png"
    for url in ("http://intranet.test/a.png", "https://split.test/a.png", "http://127.0.0.1:8000/a.png",
                "http://[::1]/a.png"):
        error = _refusal(REMOTE, url)
        assert (error.status_code, error.code) == (403, "remote_media_blocked"), url
        assert "non-public address" in error.message and error.message.startswith("messages[0]")


def test_hosts_that_do_not_resolve_are_400(dns):
    for url in ("http://nowhere.test/a.png", "http:///a.png", f"http://{'a' * 64}.example.com/a.png"):
        error = _refusal(REMOTE, url)
        assert (error.status_code, error.code) == (400, "invalid_media_url"), url


def test_the_policy_and_the_loader_give_the_same_verdict(dns):
    # one check serves both: the loader refuses what the policy refuses, with the same reason
    for url in ("http://intranet.test/a.png", "https://split.test/a.png", "http://nowhere.test/a.png"):
        error = _refusal(REMOTE, url)
        with pytest.raises(MediaError) as loader_error:
            resolve_source(url, REMOTE.limits, "image")
        assert str(loader_error.value) in error.message


def test_private_hosts_pass_when_the_server_allows_them():
    policy = MediaPolicy(MediaLimits(allow_remote=True), allow_private_remote=True)
    assert policy.source("http://127.0.0.1:9/a.png", "image", "p") == "http://127.0.0.1:9/a.png"


def test_local_paths_stay_under_the_media_root(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(b"png")
    (tmp_path / "secret.png").write_bytes(b"secret")
    (root / "escape.png").symlink_to(tmp_path / "secret.png")
    policy = MediaPolicy(MediaLimits(media_root=root))
    resolved = str((root / "sub" / "a.png").resolve())
    assert policy.source("sub/a.png", "image", "p") == resolved
    assert policy.source((root / "sub" / "a.png").as_uri(), "image", "p") == resolved
    for path in ("../secret.png", str(tmp_path / "secret.png"), "escape.png", "sub/../../secret.png"):
        error = _refusal(policy, path)
        assert (error.status_code, error.code) == (403, "media_outside_root"), path
    error = _refusal(MediaPolicy(MediaLimits()), "sub/a.png")
    assert (error.status_code, error.code) == (403, "local_media_disabled")
