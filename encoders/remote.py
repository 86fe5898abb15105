"""Fetching http(s) media: a size cap, one deadline for the whole body and, when only public hosts are
allowed, a connection to exactly the addresses that were vetted.

Checking a host name and then letting the connection resolve it again leaves a window: a DNS answer
that changes in between (rebinding) passes the check with a public address and connects to a private
one. So each hop (the URL, then every redirect) resolves its host once, is refused if any answer is
not public, and connects to those addresses by IP; the Host header, TLS SNI and the certificate's
host name check still use the name from the URL.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

from omni.encoders.limits import MediaLimits, check_size
from omni.errors import MediaError


class NonPublicHost(MediaError):
    """A media URL's host resolves to a loopback, private, link-local or otherwise non-public address."""


def public_addresses(url: str, kind: str) -> tuple[str, ...]:
    """Every address `url`'s host resolves to, in the resolver's order, when all of them are public.
    Raises NonPublicHost if any is not (one private answer is enough to refuse: a client may pick any),
    MediaError if the URL has no host or its host does not resolve. The one check of remote hosts:
    the server's media policy answers 403/400 from it, the fetch below connects to what it returns."""
    host = urllib.parse.urlparse(url).hostname
    if not host:
        raise MediaError(f"{kind} URL {url[:120]!r} has no host")
    try:
        answers = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:  # UnicodeError: a label over 63 characters
        raise MediaError(f"{kind} URL host {host!r} cannot be resolved: {exc}") from None
    addresses = tuple(dict.fromkeys(answer[4][0] for answer in answers))
    if not addresses:
        raise MediaError(f"{kind} URL host {host!r} cannot be resolved: no addresses")
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 scope ("fe80::1%eth0")
        if not ip.is_global:
            raise NonPublicHost(f"{kind} URL {url[:120]!r}: host {host!r} resolves to the non-public address "
                                f"{ip}; only public addresses may be fetched")
    return addresses


def fetch_remote(url: str, limits: MediaLimits, kind: str) -> bytes:
    """The body of `url`, at most `limits.max_remote_bytes`, fetched within `limits.remote_timeout_s`."""
    if not limits.allow_remote:
        raise MediaError(f"{kind} URL {url[:120]!r}: remote fetching is disabled (enable it with "
                         "MediaLimits(allow_remote=True), or pass a local file, bytes or a data URI)")
    request = urllib.request.Request(url, headers={"User-Agent": "omni-media-fetch/1"})
    if limits.public_remote_only:
        # No proxies: a proxy resolves the name itself, and the vetted address would mean nothing.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _VettedHTTPHandler(kind),
                                             _VettedHTTPSHandler(kind), _HttpRedirects())
    else:
        opener = urllib.request.build_opener(_HttpRedirects())
    try:
        with opener.open(request, timeout=limits.remote_timeout_s) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit():
                check_size(int(declared), limits.max_remote_bytes, f"{kind} URL {url[:120]!r}")
            body_deadline = time.monotonic() + limits.remote_timeout_s
            data = _read_until(response, limits.max_remote_bytes + 1, deadline=body_deadline)
    except MediaError:
        raise
    except TimeoutError:
        raise MediaError(f"{kind} URL {url[:120]!r} was not fetched within {limits.remote_timeout_s:g} s") from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:  # timeouts are OSErrors
        raise MediaError(f"{kind} URL {url[:120]!r} could not be fetched within {limits.remote_timeout_s:g} s: "
                         f"{exc}") from None
    check_size(len(data), limits.max_remote_bytes, f"{kind} URL {url[:120]!r}")
    if not data:
        raise MediaError(f"{kind} URL {url[:120]!r} returned no data")
    return data


def _connect_to_vetted(addresses: tuple[str, ...], address: tuple[str, int], timeout, source_address):
    """http.client's socket factory, given (host name, port): connect to the vetted IPs instead, in
    the resolver's order (as socket.create_connection tries a name's answers)."""
    port = address[1]
    failure: OSError | None = None
    for ip in addresses:
        try:
            return socket.create_connection((ip, port), timeout, source_address)
        except OSError as exc:
            failure = exc
    raise failure if failure is not None else OSError(f"no address to connect to for port {port}")


def _pinned(connection_class, addresses: tuple[str, ...]):
    """A connection class for urllib whose socket goes to `addresses`. http.client opens the socket
    through the instance's `_create_connection` hook and keeps `host` for the Host header and, in
    HTTPS, for SNI and the certificate check, so replacing only the hook pins the IP and nothing else."""

    def build(host: str, **kwargs):
        connection = connection_class(host, **kwargs)
        connection._create_connection = functools.partial(_connect_to_vetted, addresses)
        return connection

    return build


class _Vetted:
    """Mixed into urllib's HTTP(S) handlers: vet each request's host (the URL and every redirect
    reach here) and pin its connection to the vetted addresses."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def do_open(self, http_class, req, **http_conn_args):
        addresses = public_addresses(req.full_url, self.kind)
        return super().do_open(_pinned(http_class, addresses), req, **http_conn_args)


class _VettedHTTPHandler(_Vetted, urllib.request.HTTPHandler):
    pass


class _VettedHTTPSHandler(_Vetted, urllib.request.HTTPSHandler):
    pass


class _HttpRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only: urllib would also follow one to ftp://, which neither the media
    schemes allow nor the vetting covers."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlparse(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise MediaError(f"media URL {req.full_url[:120]!r} redirects to {newurl[:120]!r}; only http(s) "
                             "redirects are followed")
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
