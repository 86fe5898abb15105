"""Which media URLs a request may name: data URIs always; http(s) only when remote fetching is on
(and, unless allowed, never to private or loopback addresses); local paths and file:// URLs only
under the media root.

The checks run before the encoders see the URL so that a refused source is answered with its own
status (403) and message. They are the encoders' own checks (`within_media_root`, `public_addresses`),
which the loaders repeat where it counts: on the file they opened and the addresses they connect to
(a name checked here can point elsewhere a moment later). The loaders also do the fetching (size cap,
timeout).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from omni.encoders.limits import MediaLimits
from omni.encoders.remote import NonPublicHost, public_addresses
from omni.encoders.sources import within_media_root
from omni.errors import MediaError
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
        resolved = within_media_root(path_text, root)
        if resolved is None:
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
        # The loaders vet the host again and connect to the addresses they vetted; this check only
        # answers a refused host with its own status before any decoding starts.
        try:
            public_addresses(url, kind)
        except NonPublicHost as exc:
            raise ApiError(403, f"{param}: {exc}", code="remote_media_blocked", param=param) from None
        except MediaError as exc:  # no host, or a host that does not resolve
            raise ApiError(400, f"{param}: {exc}", code="invalid_media_url", param=param) from None
