"""A local file is opened once, checked as opened (its real path under the media root) and read from
that open file by every decoder: swapping a symlink in after the check reads nothing outside the root."""

from __future__ import annotations

import os
import shutil
import threading

import pytest

import omni.encoders.sources as sources
from omni.encoders.audio_loader import decode_audio_track, has_audio_track
from omni.encoders.deadline import DecodeDeadline
from omni.encoders.limits import MediaLimits
from omni.encoders.sources import resolve_source
from omni.encoders.video_loader import _count_packets, load_video
from omni.errors import MediaError

SECRET = b"outside the media root: must never be read"


@pytest.fixture
def tree(tmp_path, media):
    """root/ holds a picture and a webm with audio; secret.txt lies outside it."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    shutil.copy(media.image_png, root / "sub" / "picture.png")
    shutil.copy(media.video_audio["webm"], root / "clip.webm")
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    return root, secret


def _swap_for_symlink(path, target) -> None:
    """Replace `path` by a symlink to `target` in one rename, as an attacker racing the check would."""
    staged = path.with_name(path.name + ".swap")
    if staged.is_symlink() or staged.exists():
        staged.unlink()
    staged.symlink_to(target)
    os.replace(staged, path)


def test_a_symlink_swapped_in_after_the_check_is_not_read(tree):
    root, secret = tree
    original = (root / "sub" / "picture.png").read_bytes()
    source = resolve_source("sub/picture.png", MediaLimits(media_root=root), "image")
    _swap_for_symlink(root / "sub" / "picture.png", secret)
    with source.open() as reader:
        assert reader.read() == original
    assert source.size_bytes == len(original)


def test_a_symlink_swapped_in_between_the_check_and_the_open_is_refused(tree, monkeypatch):
    root, secret = tree
    real_check = sources.within_media_root

    def check_then_race(path, media_root):  # the name passes, then the link changes under it
        checked = real_check(path, media_root)
        _swap_for_symlink(root / "sub" / "picture.png", secret)
        return checked

    monkeypatch.setattr(sources, "within_media_root", check_then_race)
    with pytest.raises(MediaError, match="outside the media root"):
        resolve_source("sub/picture.png", MediaLimits(media_root=root), "image")


def test_a_directory_swapped_for_a_symlink_before_the_open_is_refused(tree, monkeypatch):
    root, secret = tree
    (secret.parent / "elsewhere").mkdir()
    (secret.parent / "elsewhere" / "picture.png").write_bytes(SECRET)
    real_check = sources.within_media_root

    def check_then_race(path, media_root):
        checked = real_check(path, media_root)
        shutil.rmtree(root / "sub")
        (root / "sub").symlink_to(secret.parent / "elsewhere")
        return checked

    monkeypatch.setattr(sources, "within_media_root", check_then_race)
    with pytest.raises(MediaError, match="outside the media root"):
        resolve_source(str(root / "sub" / "picture.png"), MediaLimits(media_root=root), "image")


def test_without_proc_the_opened_file_must_still_be_the_one_its_path_names(tree, monkeypatch):
    root, secret = tree
    real_readlink = os.readlink

    def no_proc(path, *args, **kwargs):  # as on macOS: no /proc/self/fd
        if str(path).startswith("/proc/self/fd/"):
            raise FileNotFoundError(path)
        return real_readlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "readlink", no_proc)
    limits = MediaLimits(media_root=root)
    assert resolve_source("sub/picture.png", limits, "image").path == (root / "sub" / "picture.png").resolve()
    real_check = sources.within_media_root

    def check_then_race(path, media_root):
        checked = real_check(path, media_root)
        _swap_for_symlink(root / "sub" / "picture.png", secret)
        return checked

    monkeypatch.setattr(sources, "within_media_root", check_then_race)
    with pytest.raises(MediaError, match="outside the media root"):
        resolve_source("sub/picture.png", limits, "image")


def test_symlinks_that_stay_inside_the_root_still_work(tree):
    root, _ = tree
    (root / "alias.png").symlink_to(root / "sub" / "picture.png")
    source = resolve_source("alias.png", MediaLimits(media_root=root), "image")
    with source.open() as reader:
        assert reader.read() == (root / "sub" / "picture.png").read_bytes()


def test_every_decoder_reads_the_file_that_was_opened(tree):
    # Counting a webm's packets and decoding its audio track open the source again: they must get the
    # file that was checked, not whatever the path names by then.
    root, secret = tree
    source = resolve_source("clip.webm", MediaLimits(media_root=root), "video")
    _swap_for_symlink(root / "clip.webm", secret)
    assert _count_packets(source, "clip.webm", DecodeDeadline.start(MediaLimits())) == 30
    assert has_audio_track(source)
    track = decode_audio_track(source, MediaLimits(), 0.0, None, "clip.webm", in_video=True)
    assert 2.9 < track.size / 16000 < 3.1
    with pytest.raises(MediaError, match="outside the media root"):  # a fresh load sees the swap
        load_video("clip.webm", MediaLimits(media_root=root))


@pytest.mark.parametrize("pread", [True, False], ids=["pread", "seek-and-read"])
def test_readers_of_one_source_keep_their_own_positions(media, monkeypatch, pread):
    if not pread:  # Windows has no os.pread: readers take turns seeking the shared descriptor
        monkeypatch.delattr(os, "pread")
    source = resolve_source(str(media.image_png), MediaLimits(), "image")
    data = media.image_png.read_bytes()
    first, second = source.open(), source.open()
    assert first.read(100) == data[:100]
    assert second.read(50) == data[:50]
    assert first.read(100) == data[100:200]
    second.seek(-10, os.SEEK_END)
    assert second.read() == data[-10:] and first.tell() == 200
    chunks: dict[int, bytes] = {}

    def read_all(slot: int) -> None:
        with source.open() as reader:
            chunks[slot] = b"".join(iter(lambda: reader.read(997), b""))

    threads = [threading.Thread(target=read_all, args=(slot,)) for slot in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(chunk == data for chunk in chunks.values())


def test_the_descriptor_is_closed_with_the_source(media):
    source = resolve_source(str(media.image_png), MediaLimits(), "image")
    fd = source.opened.fd
    os.fstat(fd)
    reader = source.open()
    del source
    os.fstat(fd)  # a reader keeps it open
    del reader
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    with pytest.raises(MediaError, match="not a regular file"):
        resolve_source(str(fifo), MediaLimits(media_root=tmp_path), "audio")

