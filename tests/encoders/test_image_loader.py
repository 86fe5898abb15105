"""Images from every kind of source to RGB, and the typed errors of broken or unusable images."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from omni.encoders.image_loader import load_image
from omni.encoders.limits import MediaLimits
from omni.errors import MediaError
from omni.tools.media_factory import drawing


def test_png_jpeg_and_every_source_kind_decode_to_rgb(media):
    limits = MediaLimits()
    png = load_image(str(media.image_png), limits)
    assert png.mode == "RGB" and png.size == (200, 150)
    assert np.array_equal(np.asarray(png), np.asarray(Image.open(media.image_png).convert("RGB")))
    jpg = load_image(media.image_jpg.as_uri(), limits)
    assert jpg.mode == "RGB" and jpg.size == (90, 300)
    data = media.image_png.read_bytes()
    from_bytes = load_image(data, limits)
    from_uri = load_image("data:image/png;base64," + base64.b64encode(data).decode(), limits)
    from_pil = load_image(Image.open(io.BytesIO(data)), limits)
    for image in (from_bytes, from_uri, from_pil):
        assert np.array_equal(np.asarray(image), np.asarray(png))


def test_transparent_pixels_become_white(media):
    image = load_image(str(media.image_rgba), MediaLimits())
    assert image.mode == "RGB"
    # alpha is 0 in the first column: pure white there
    assert (np.asarray(image)[:, 0] == 255).all()
    assert not (np.asarray(image)[:, -1] == 255).all()


def test_grayscale_and_palette_images_convert():
    for mode in ("L", "P", "CMYK"):
        buffer = io.BytesIO()
        drawing(64, 48, seed=5, mode=mode).save(buffer, format="TIFF" if mode == "CMYK" else "PNG")
        image = load_image(buffer.getvalue(), MediaLimits())
        assert image.mode == "RGB" and image.size == (64, 48)


def test_truncated_and_non_image_files_are_media_errors(media, tmp_path):
    data = media.image_jpg.read_bytes()
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(MediaError, match="truncated or corrupt"):
        load_image(str(truncated), MediaLimits())
    wrong = tmp_path / "speech.png"
    wrong.write_bytes(media.speech.read_bytes())
    with pytest.raises(MediaError, match="not an image format"):
        load_image(str(wrong), MediaLimits())
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(MediaError):
        load_image(str(empty), MediaLimits())


def test_tiny_and_extreme_images_are_refused_with_the_limit():
    with pytest.raises(MediaError, match=r"1x1 pixels; each side must be at least 14"):
        load_image(Image.new("RGB", (1, 1)), MediaLimits())
    with pytest.raises(MediaError, match="aspect ratio of 1000:1; the limit is 200:1"):
        load_image(Image.new("RGB", (14000, 14)), MediaLimits())
    with pytest.raises(MediaError, match="aspect ratio"):
        load_image(Image.new("RGB", (20, 5000)), MediaLimits())


def test_source_pixel_cap_is_checked_before_decoding():
    buffer = io.BytesIO()
    Image.new("RGB", (3000, 3000)).save(buffer, format="PNG")
    with pytest.raises(MediaError, match="9000000 pixels, over the 1000000 pixel limit"):
        load_image(buffer.getvalue(), MediaLimits(max_image_source_pixels=1_000_000))
