"""Where a media item's bytes come from: a local path (or file:// URL), raw bytes, a base64 data URI,
or an http(s) URL when the caller enabled remote fetching.

Every source is checked against `MediaLimits` before any decoder sees it (size caps, the media root
for local paths, the remote switch), so decoders never read more than the limits allow.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from omni.encoders.limits import MIB, MediaLimits
from omni.errors import MediaError


@dataclass(frozen=True)
class MediaBytes:
    """A resolved source: exactly one of `path` / `data` is set; `name` is what errors call it."""

    name: str
    path: Path | None = None
    data: bytes | None = None

    def open(self) -> BinaryIO:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        return open(self.path, "rb")

    @property
    def size_bytes(self) -> int:
        return len(self.data) if self.data is not None else self.path.stat().st_size  # type: ignore[union-attr]

    @property
    def suffix(self) -> str:
        return self.path.suffix.lower() if self.path is not None else ""


def is_source(value: Any) -> bool:
    """True for values `resolve_source` understands (as opposed to decoded media: arrays, images)."""
    return isinstance(value, (str, bytes, bytearray, memoryview, os.PathLike))


def resolve_source(value: Any, limits: MediaLimits, kind: str) -> MediaBytes:
    """kind ('image', 'audio', 'video') only shapes the error messages."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        _check_size(len(data), limits.max_file_bytes, f"the {kind} bytes")
        return MediaBytes(name=f"{kind} bytes ({len(data)} bytes)", data=data)
    if isinstance(value, os.PathLike):
        return _local_path(Path(value), limits, kind)
    if not isinstance(value, str):
        raise MediaError(
            f"a {kind} must be a path, file:// or http(s) URL, data URI or bytes; got {type(value).__name__}"
        )
    text = value.strip()
    lowered = text[:16].lower()
    if lowered.startswith("data:"):
        return _data_uri(text, limits, kind)
    if lowered.startswith(("http://", "https://")):
        return _remote(text, limits, kind)
    if lowered.startswith("file://"):
        parsed = urllib.parse.urlparse(text)
        return _local_path(Path(urllib.parse.unquote(parsed.netloc + parsed.path)), limits, kind)
    if "://" in text[:12]:
        scheme = text.split("://", 1)[0]
        raise MediaError(f"{kind} source {text[:80]!r}: scheme {scheme!r} is not supported (use a path, file://, "
                         "http(s):// or a data URI)")
    return _local_path(Path(text), limits, kind)


def _check_size(size: int, limit: int, name: str) -> None:
    if size > limit:
        raise MediaError(f"{name} is {size / MIB:.1f} MiB, over the {limit / MIB:.1f} MiB limit")


def _local_path(path: Path, limits: MediaLimits, kind: str) -> MediaBytes:
    path = path.expanduser()
    if limits.media_root is not None:
        root = Path(limits.media_root).resolve()
        resolved = path.resolve() if path.is_absolute() else (root / path).resolve()
        if not resolved.is_relative_to(root):
            raise MediaError(f"{kind} file {str(path)!r} is outside the media root {str(root)!r}; only files under "
                             "it may be read")
        path = resolved
    if not path.exists():
        raise MediaError(f"{kind} file {str(path)!r} does not exist")
    if not path.is_file():
        raise MediaError(f"{kind} file {str(path)!r} is not a regular file")
    _check_size(path.stat().st_size, limits.max_file_bytes, f"{kind} file {str(path)!r}")
    return MediaBytes(name=str(path), path=path)


def _data_uri(text: str, limits: MediaLimits, kind: str) -> MediaBytes:
    header, separator, payload = text.partition(",")
    if not separator:
        raise MediaError(f"{kind} data URI has no ',' separating its header from its data")
    # base64 needs 4 characters per 3 bytes: refuse before decoding what would exceed the cap
    _check_size(len(payload) * 3 // 4, limits.max_file_bytes, f"the {kind} data URI")
    media_type = header[5:].split(";", 1)[0] or "unknown type"
    if header.lower().endswith(";base64"):
        try:
            data = base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise MediaError(f"{kind} data URI ({media_type}) is not valid base64: {exc}") from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if not data:
        raise MediaError(f"{kind} data URI ({media_type}) holds no data")
    return MediaBytes(name=f"{kind} data URI ({media_type}, {len(data)} bytes)", data=data)


def _remote(url: str, limits: MediaLimits, kind: str) -> MediaBytes:
    if not limits.allow_remote:
        raise MediaError(f"{kind} URL {url[:120]!r}: remote fetching is disabled (enable it with "
                         "MediaLimits(allow_remote=True), or pass a local file, bytes or a data URI)")
    request = urllib.request.Request(url, headers={"User-Agent": "omni-media-fetch/1"})
    opener = urllib.request.build_opener()
    if limits.public_remote_only:
        _require_public_host(url, kind)
        opener = urllib.request.build_opener(_PublicRedirects(kind))
    try:
        with opener.open(request, timeout=limits.remote_timeout_s) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit():
                _check_size(int(declared), limits.max_remote_bytes, f"{kind} URL {url[:120]!r}")
            data = _read_until(response, limits.max_remote_bytes + 1, deadline=time.monotonic() + limits.remote_timeout_s)
    except MediaError:
        raise
    except TimeoutError:
        raise MediaError(f"{kind} URL {url[:120]!r} was not fetched within {limits.remote_timeout_s:g} s") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:  # timeouts are OSErrors
        raise MediaError(f"{kind} URL {url[:120]!r} could not be fetched within {limits.remote_timeout_s:g} s: "
                         f"{exc}") from None
    _check_size(len(data), limits.max_remote_bytes, f"{kind} URL {url[:120]!r}")
    if not data:
        raise MediaError(f"{kind} URL {url[:120]!r} returned no data")
    return MediaBytes(name=url[:200], data=data)


def _require_public_host(url: str, kind: str) -> None:
    """Refuse a URL whose host resolves to any non-public address (loopback, private, link-local...).
    The connection resolves the name again, so a DNS answer that changes in between is not covered."""
    host = urllib.parse.urlparse(url).hostname
    if not host:
        raise MediaError(f"{kind} URL {url[:120]!r} has no host")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except OSError as exc:
        raise MediaError(f"{kind} URL host {host!r} cannot be resolved: {exc}") from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global:
            raise MediaError(f"{kind} URL {url[:120]!r}: host {host!r} resolves to the non-public address {ip}; "
                             "only public addresses may be fetched")


class _PublicRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to a public host, checked like the first URL."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        _require_public_host(newurl, self.kind)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _read_until(response, max_bytes: int, deadline: float) -> bytes:
    """Read at most `max_bytes`; the socket timeout bounds each read, the deadline the whole body (a
    server that drips bytes must not hold a request forever)."""
    chunks, total = [], 0
    while total < max_bytes:
        # read1 returns what has arrived instead of waiting for the whole chunk
        chunk = response.read1(min(64 * 1024, max_bytes - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if time.monotonic() > deadline:
            raise TimeoutError
    return b"".join(chunks)
