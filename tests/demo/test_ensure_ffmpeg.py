"""Without a system ffmpeg the demo puts imageio-ffmpeg's binary on PATH through a directory only it
could have made: a directory another local user planted at a guessable name is never trusted."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from omni.demo.app import ensure_ffmpeg


def _plant(directory: Path, mode: int) -> Path:
    """A directory at the name the demo used to reuse, holding an `ffmpeg` that leaves a mark when run."""
    directory.mkdir()
    marker = directory / "ran"
    fake = directory / "ffmpeg"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\necho 'ffmpeg version planted'\n")
    fake.chmod(0o755)
    directory.chmod(mode)
    return marker


@pytest.mark.parametrize("mode", [0o777, 0o700], ids=["world-writable", "private-but-not-ours-to-trust"])
def test_a_planted_ffmpeg_directory_is_not_trusted(tmp_path, monkeypatch, mode):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))  # no system ffmpeg
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # mkdtemp / gettempdir use it
    planted = tmp_path / f"omni-ffmpeg-{os.getuid()}"
    marker = _plant(planted, mode)

    assert ensure_ffmpeg()
    found = Path(shutil.which("ffmpeg"))
    bin_dir = found.parent
    assert bin_dir != planted and str(planted) not in os.environ["PATH"].split(os.pathsep)
    status = bin_dir.stat()
    assert status.st_uid == os.getuid() and stat.S_IMODE(status.st_mode) == 0o700
    assert found.resolve() == Path(imageio_ffmpeg.get_ffmpeg_exe()).resolve()
    version = subprocess.run([str(found), "-version"], capture_output=True, text=True, timeout=60).stdout
    assert version.startswith("ffmpeg version") and "planted" not in version
    assert not marker.exists()


def test_a_system_ffmpeg_is_used_as_it_is(tmp_path, monkeypatch):
    system_bin = tmp_path / "bin"
    system_bin.mkdir()
    (system_bin / "ffmpeg").write_text("#!/bin/sh\n")
    (system_bin / "ffmpeg").chmod(0o755)
    monkeypatch.setenv("PATH", str(system_bin))
    assert ensure_ffmpeg()
    assert os.environ["PATH"] == str(system_bin)
