"""Which media URLs a request may name: data URIs always; http(s) only when remote fetching is on
(and, unless allowed, never to private or loopback addresses); local paths and file:// URLs only
under the media root.

The checks run before the encoders see the URL so that a refused source is answered with its own
status (403) and message; `MediaLimits` repeats the media-root and remote checks as a backstop and
does the fetching (size cap, timeout) itself.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from omni.encoders.limits import MediaLimits
from omni.server.errors import ApiError


@dataclass(frozen=True)
class MediaPolicy:
    limits: MediaLimits
    # Fetching from private, loopback and link-local addresses lets a client reach the server's own
    # network (SSRF); tests and trusted deployments turn it on explicitly.
    allow_private_remote: bool = False

    def source(self, url: str, kind: str, param: str) -> str:
        """The source string omni's loaders receive for `url`, or an ApiError saying why not."""
        text = url.strip()
        head = text[:16].lower()
        if head.startswith("data:"):
            return text
        if head.startswith(("http://", "https://")):
            self._check_remote(text, kind, param)
            return text
        if head.startswith("file://"):
            parsed = urllib.parse.urlparse(text)
            return str(self._local_path(urllib.parse.unquote(parsed.netloc + parsed.path), kind, param))
        if "://" in text[:12]:
            scheme = text.split("://", 1)[0]
            raise ApiError(400, f"{param}: URL scheme {scheme!r} is not supported for {kind}s (use a data: URI, "
                                "http(s):// when the server allows remote media, or a path under the media root)",
                           code="invalid_media_url", param=param)
        if not text:
            raise ApiError(400, f"{param}: the {kind} URL is empty", code="invalid_media_url", param=param)
        return str(self._local_path(text, kind, param))

    def _local_path(self, path_text: str, kind: str, param: str) -> Path:
        root = self.limits.media_root
        if root is None:
            raise ApiError(403, f"{param}: local {kind} paths are disabled on this server (start it with "
                                "--media-root DIR to serve files under DIR); send a data: URI instead",
                           code="local_media_disabled", param=param)
        root = Path(root).resolve()
        path = Path(path_text).expanduser()
        resolved = path.resolve() if path.is_absolute() else (root / path).resolve()
        if not resolved.is_relative_to(root):
            raise ApiError(403, f"{param}: {kind} path {path_text[:200]!r} is outside the media root",
                           code="media_outside_root", param=param)
        return resolved

    def _check_remote(self, url: str, kind: str, param: str) -> None:
        if not self.limits.allow_remote:
            raise ApiError(400, f"{param}: remote {kind} URLs are disabled on this server (start it with "
                                "--allow-remote-media); send a data: URI instead",
                           code="remote_media_disabled", param=param)
        if self.allow_private_remote:
            return
        host = urllib.parse.urlparse(url).hostname
        if not host:
            raise ApiError(400, f"{param}: {kind} URL {url[:200]!r} has no host", code="invalid_media_url", param=param)
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
        except OSError as exc:
            raise ApiError(400, f"{param}: {kind} URL host {host!r} cannot be resolved: {exc}",
                           code="invalid_media_url", param=param) from None
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if not ip.is_global:
                raise ApiError(403, f"{param}: {kind} URL host {host!r} resolves to the non-public address {ip}; "
                                    "this server only fetches from public addresses",
                               code="remote_media_blocked", param=param)
