"""Remote fetching restricted to public hosts connects to the addresses it vetted: a DNS answer that
changes between the check and the connection (rebinding), on the URL or on a redirect, cannot reach
loopback; the Host header, TLS SNI and the certificate check still use the host name."""

from __future__ import annotations

import datetime
import http.server
import socket
import ssl
import threading

import pytest

from omni.encoders.limits import MediaLimits
from omni.encoders.remote import NonPublicHost, public_addresses
from omni.encoders.sources import resolve_source
from omni.errors import MediaError

PUBLIC_IP = "93.184.216.34"  # a global address; the tests route connections to it to a local server
VETTED_BYTES = b"bytes from the vetted (public) address"
LOOPBACK_BYTES = b"bytes from loopback: must never be fetched"
STRICT = MediaLimits(allow_remote=True, public_remote_only=True, remote_timeout_s=3.0)


class _Recorder(http.server.BaseHTTPRequestHandler):
    body = b""
    redirects: dict[str, str] = {}

    def do_GET(self):  # noqa: N802 - http.server's name
        self.server.requests.append((self.path, self.headers.get("Host")))
        if self.path in self.redirects:
            self.send_response(302)
            self.send_header("Location", self.redirects[self.path])
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def _serve(body: bytes, redirects: dict[str, str] | None = None, tls: ssl.SSLContext | None = None):
    handler = type("Handler", (_Recorder,), {"body": body, "redirects": redirects or {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.requests = []
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def servers():
    """(vetted, loopback): the server the public address leads to, and one on plain loopback."""
    vetted, loopback = _serve(VETTED_BYTES), _serve(LOOPBACK_BYTES)
    yield vetted, loopback
    for server in (vetted, loopback):
        server.shutdown()
        server.server_close()


class RebindingDns:
    """A resolver whose first answer for each rebinding name is a public address and every later one
    127.0.0.1: an attacker's DNS with a TTL of zero. Other names resolve as usual."""

    def __init__(self, monkeypatch, names: set[str], rebind: bool = True) -> None:
        self.names, self.rebind, self.lookups = names, rebind, []
        self._real = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", self.getaddrinfo)

    def getaddrinfo(self, host, port, *args, **kwargs):
        if host not in self.names:
            return self._real(host, port, *args, **kwargs)
        answered = sum(1 for name in self.lookups if name == host)
        self.lookups.append(host)
        address = PUBLIC_IP if answered == 0 or not self.rebind else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port or 0))]


@pytest.fixture
def public_route(monkeypatch):
    """Connections to PUBLIC_IP:port go to the local server set in route["to"] (the test has no
    internet); every connection's requested address is recorded."""
    route = {"to": None, "attempts": []}
    real_connect = socket.create_connection

    def create_connection(address, *args, **kwargs):
        route["attempts"].append(address)
        if address[0] == PUBLIC_IP:
            address = ("127.0.0.1", route["to"].server_address[1])
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return route


def test_a_rebinding_host_is_fetched_from_the_address_that_was_vetted(servers, public_route, monkeypatch):
    vetted, loopback = servers
    public_route["to"] = vetted
    dns = RebindingDns(monkeypatch, {"media.test"})
    url = f"http://media.test:{loopback.server_address[1]}/clip.png"  # 127.0.0.1 would reach `loopback`
    assert resolve_source(url, STRICT, "image").data == VETTED_BYTES
    assert loopback.requests == []
    assert dns.lookups == ["media.test"]  # resolved once, connected by IP
    assert public_route["attempts"] == [(PUBLIC_IP, loopback.server_address[1])]
    assert vetted.requests == [("/clip.png", f"media.test:{loopback.server_address[1]}")]  # Host: the name


def test_a_redirect_to_a_rebinding_host_is_fetched_from_its_vetted_address(servers, public_route, monkeypatch):
    vetted, loopback = servers
    port = loopback.server_address[1]
    vetted.RequestHandlerClass.redirects = {"/start": f"http://cdn.test:{port}/clip.png"}
    public_route["to"] = vetted
    dns = RebindingDns(monkeypatch, {"media.test", "cdn.test"})
    assert resolve_source(f"http://media.test:{port}/start", STRICT, "image").data == VETTED_BYTES
    assert loopback.requests == []
    assert dns.lookups == ["media.test", "cdn.test"]
    assert [path for path, _ in vetted.requests] == ["/start", "/clip.png"]


def test_one_private_answer_among_public_ones_is_refused(monkeypatch):
    def mixed(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC_IP, 0)),
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", mixed)
    with pytest.raises(NonPublicHost, match="non-public address ::1"):
        public_addresses("http://media.test/clip.png", "image")
    with pytest.raises(MediaError, match="non-public address ::1"):
        resolve_source("http://media.test/clip.png", STRICT, "image")


def test_hosts_that_cannot_be_resolved_are_media_errors():
    with pytest.raises(MediaError, match="no host"):
        resolve_source("http:///clip.png", STRICT, "image")
    # a DNS label over 63 characters fails in the IDNA codec (a UnicodeError), not in the resolver
    with pytest.raises(MediaError, match="cannot be resolved"):
        resolve_source(f"http://{'a' * 64}.example.com/clip.png", STRICT, "image")


def test_a_redirect_to_ftp_is_not_followed(servers):
    vetted, _ = servers
    vetted.RequestHandlerClass.redirects = {"/start": "ftp://127.0.0.1/clip.png"}
    with pytest.raises(MediaError, match="only http\\(s\\) redirects"):
        resolve_source(f"http://127.0.0.1:{vetted.server_address[1]}/start", MediaLimits(allow_remote=True), "image")


def test_a_proxy_from_the_environment_is_not_used_for_vetted_fetches(servers, public_route, monkeypatch):
    vetted, loopback = servers
    public_route["to"] = vetted
    RebindingDns(monkeypatch, {"media.test"}, rebind=False)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{loopback.server_address[1]}")
    assert resolve_source("http://media.test/clip.png", STRICT, "image").data == VETTED_BYTES
    assert loopback.requests == []


# --- TLS: connected by IP, verified by name


def _certificate(tmp_path, host: str):
    """(server context, CA file) for a test CA and a leaf certificate for `host` (a DNS name only, so
    a check against the IP the connection uses would fail)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject, issuer, key, signing_key, ca: bool, extensions):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
                                  critical=False))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "omni test CA")])
    usage = dict(content_commitment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                 decipher_only=False)
    ca = build(ca_name, ca_name, ca_key, ca_key, True, [
        (x509.KeyUsage(digital_signature=False, key_encipherment=False, key_cert_sign=True, crl_sign=True, **usage),
         True)])
    leaf = build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]), ca_name, leaf_key, ca_key, False, [
        (x509.SubjectAlternativeName([x509.DNSName(host)]), False),
        (x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False, **usage),
         True)])
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "leaf.pem", tmp_path / "leaf.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_file, key_file)
    return server_context, ca_file


@pytest.mark.parametrize("certified_host", ["media.test", "other.test"])
def test_https_connects_to_the_vetted_ip_but_verifies_the_host_name(tmp_path, public_route, monkeypatch,
                                                                     certified_host):
    server_context, ca_file = _certificate(tmp_path, certified_host)
    names_seen = []
    server_context.sni_callback = lambda connection, name, context: names_seen.append(name)
    server = _serve(VETTED_BYTES, tls=server_context)
    public_route["to"] = server
    monkeypatch.setattr(ssl, "_create_default_https_context", lambda: ssl.create_default_context(cafile=ca_file))
    RebindingDns(monkeypatch, {"media.test"})
    url = f"https://media.test:{server.server_address[1]}/clip.png"
    try:
        if certified_host == "media.test":
            assert resolve_source(url, STRICT, "image").data == VETTED_BYTES
            assert server.requests == [("/clip.png", f"media.test:{server.server_address[1]}")]
        else:  # the certificate names another host: refused although the IP is the vetted one
            with pytest.raises(MediaError, match="certificate"):
                resolve_source(url, STRICT, "image")
        assert names_seen == ["media.test"]  # SNI carries the name, not the IP
        assert public_route["attempts"] == [(PUBLIC_IP, server.server_address[1])]
    finally:
        server.shutdown()
        server.server_close()
