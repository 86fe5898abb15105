"""Where a media item's bytes come from: a local path (or file:// URL), raw bytes, a base64 data URI,
or an http(s) URL when the caller enabled remote fetching (encoders/remote.py).

Every source is checked against `MediaLimits` before any decoder sees it (size caps, the media root
for local paths, the remote switch), so decoders never read more than the limits allow. A local file
is opened once, here, and checked as opened: decoders read that open file (never the path again), so
a path swapped for a symlink after the check cannot make them read something else.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import stat
import threading
import urllib.parse
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from omni.encoders.limits import MediaLimits, check_size
from omni.encoders.remote import fetch_remote
from omni.errors import MediaError

# Not blocking: opening a FIFO (or a device) for reading would wait for a writer; the regular-file
# check after the open refuses it instead. No controlling terminal from opening a tty.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


class _OpenedFile:
    """A local file opened once; every reader of the source shares its descriptor, which is closed
    when the source and its last reader are gone (or by `close`)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seek_lock = threading.Lock()  # where os.pread is missing (Windows): seek + read as one step
        self._closer = weakref.finalize(self, os.close, fd)

    def close(self) -> None:
        self._closer()

    def reader(self) -> BinaryIO:
        return io.BufferedReader(_PositionalReader(self))


class _PositionalReader(io.RawIOBase):
    """A file object over the shared descriptor with a position of its own (os.pread): two decoders
    reading one source at once (a container and its packet count, a video and its audio track) do not
    move each other's offset, as readers of a dup()ed descriptor would."""

    def __init__(self, opened: _OpenedFile) -> None:
        self._opened = opened  # keeps the descriptor open while this reader lives
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        fd = self._opened.fd
        if hasattr(os, "pread"):
            chunk = os.pread(fd, len(buffer), self._position)
        else:
            with self._opened.seek_lock:
                os.lseek(fd, self._position, os.SEEK_SET)
                chunk = os.read(fd, len(buffer))
        buffer[: len(chunk)] = chunk
        self._position += len(chunk)
        return len(chunk)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position}.get(whence)
        if base is None:
            base = os.fstat(self._opened.fd).st_size
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position


@dataclass(frozen=True)
class MediaBytes:
    """A resolved source: its bytes in memory (`data`) or a local file opened once (`path` says what it
    was called; it is never opened again). `name` is what errors call it."""

    name: str
    path: Path | None = None
    data: bytes | None = None
    opened: _OpenedFile | None = field(default=None, repr=False, compare=False)

    def open(self) -> BinaryIO:
        """A fresh reader from the start, independent of other readers of this source."""
        if self.data is not None:
            return io.BytesIO(self.data)
        if self.opened is None:
            raise MediaError(f"{self.name!r} holds neither bytes nor an opened file; resolve it with resolve_source")
        return self.opened.reader()

    @property
    def size_bytes(self) -> int:
        return len(self.data) if self.data is not None else os.fstat(self.opened.fd).st_size  # type: ignore[union-attr]

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
        check_size(len(data), limits.max_file_bytes, f"the {kind} bytes")
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


def within_media_root(path: str | os.PathLike, root: str | os.PathLike) -> Path | None:
    """`path` with symlinks resolved (a relative path is taken under `root`) if that lies under `root`,
    else None. The one media-root check (the server's media policy uses it too). It reads names only:
    what they point to can change before anything is opened, so `_local_path` checks the open file too."""
    root = Path(root).resolve()
    path = Path(path).expanduser()
    resolved = path.resolve() if path.is_absolute() else (root / path).resolve()
    return resolved if resolved.is_relative_to(root) else None


def _local_path(path: Path, limits: MediaLimits, kind: str) -> MediaBytes:
    path = path.expanduser()
    root = None
    if limits.media_root is not None:
        root = Path(limits.media_root).resolve()
        # Checked before opening too: a path outside the root is refused without touching (or
        # revealing whether there is) a file there.
        inside = within_media_root(path, root)
        if inside is None:
            raise MediaError(f"{kind} file {str(path)!r} is outside the media root {str(root)!r}; only files under "
                             "it may be read")
        path = inside
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise MediaError(f"{kind} file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise MediaError(f"{kind} file {str(path)!r} cannot be opened: {exc.strerror or exc}") from None
    opened = _OpenedFile(fd)
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise MediaError(f"{kind} file {str(path)!r} is not a regular file")
        if root is not None and not _opened_under(fd, path, root):
            raise MediaError(f"{kind} file {str(path)!r} is outside the media root {str(root)!r} (a link in its "
                             "path was changed while it was opened); only files under it may be read")
        check_size(status.st_size, limits.max_file_bytes, f"{kind} file {str(path)!r}")
    except BaseException:
        opened.close()
        raise
    return MediaBytes(name=str(path), path=path, opened=opened)


def _opened_under(fd: int, path: Path, root: Path) -> bool:
    """Whether the file open as `fd` (opened through `path`) lies under `root`. Linux names an open
    file in /proc; elsewhere, `path` resolved now must be under the root and still be that same file
    (device and inode), so a link swapped before or after the open is caught either way."""
    try:
        opened_path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        opened_path = None
    if opened_path is not None and opened_path.startswith("/"):
        return Path(opened_path).is_relative_to(root)
    return _same_file_under(fd, path, root)


def _same_file_under(fd: int, path: Path, root: Path) -> bool:
    current = Path(os.path.realpath(path))
    if not current.is_relative_to(root):
        return False
    try:
        named = os.stat(current)
    except OSError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _data_uri(text: str, limits: MediaLimits, kind: str) -> MediaBytes:
    header, separator, payload = text.partition(",")
    if not separator:
        raise MediaError(f"{kind} data URI has no ',' separating its header from its data")
    # base64 needs 4 characters per 3 bytes: refuse before decoding what would exceed the cap
    check_size(len(payload) * 3 // 4, limits.max_file_bytes, f"the {kind} data URI")
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
    return MediaBytes(name=url[:200], data=fetch_remote(url, limits, kind))
