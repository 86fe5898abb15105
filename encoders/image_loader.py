"""Decode an image (path, bytes, data URI, URL or PIL image) to an RGB PIL image, with typed errors.

Transparent RGBA images are composited on white, everything else converted to RGB, as qwen-omni-utils
does, so that the same picture gives the same pixels as in Qwen's own pipeline.
"""

from __future__ import annotations

from typing import Any

from PIL import Image, UnidentifiedImageError

from omni.encoders.limits import MediaLimits
from omni.encoders.sources import resolve_source
from omni.errors import MediaError


def load_image(value: Any, limits: MediaLimits, name: str | None = None) -> Image.Image:
    if isinstance(value, Image.Image):
        image, label = value, name or f"PIL image {value.width}x{value.height}"
        _check_source_pixels(image, limits, label)
        try:
            image.load()
        except (OSError, ValueError) as exc:
            raise MediaError(f"{label} cannot be read: {exc}") from None
    else:
        source = resolve_source(value, limits, "image")
        label = name or source.name
        try:
            image = Image.open(source.open())
            _check_source_pixels(image, limits, label)
            image.load()
        except MediaError:
            raise
        except UnidentifiedImageError:
            raise MediaError(f"image {label!r} is not an image format Pillow can read") from None
        except Image.DecompressionBombError:
            raise MediaError(f"image {label!r} decodes to more than {limits.max_image_source_pixels} pixels") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt data
            raise MediaError(f"image {label!r} is truncated or corrupt: {exc}") from None
    check_image_shape(image.width, image.height, limits, label)
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        return background
    return image if image.mode == "RGB" else image.convert("RGB")


def check_image_shape(width: int, height: int, limits: MediaLimits, label: str) -> None:
    if min(width, height) < limits.min_image_side_px:
        raise MediaError(
            f"image {label!r} is {width}x{height} pixels; each side must be at least {limits.min_image_side_px} "
            "pixels (one vision patch)"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise MediaError(
            f"image {label!r} is {width}x{height} pixels, an aspect ratio of {ratio:.0f}:1; the limit is "
            f"{limits.max_aspect_ratio:g}:1"
        )


def _check_source_pixels(image: Image.Image, limits: MediaLimits, label: str) -> None:
    # Checked on the header, before decoding: a small file can declare a huge canvas.
    if image.width * image.height > limits.max_image_source_pixels:
        raise MediaError(
            f"image {label!r} is {image.width}x{image.height} = {image.width * image.height} pixels, over the "
            f"{limits.max_image_source_pixels} pixel limit for source images"
        )
