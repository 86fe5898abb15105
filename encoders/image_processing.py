"""Images and video frames to the vision encoder's input: dynamic-resolution resize, normalisation,
and patchify into `pixel_values` (patches, 3 * 2 * 14 * 14) + `grid_thw`.

Sizes follow Qwen2.5-VL's `smart_resize`: both sides a multiple of 28 (patch 14 x merge 2), the pixel
count within [min_pixels, max_pixels], the aspect ratio kept as closely as possible. Patches are laid
out exactly as the transformers processor lays them out: each 2 x 2 block of patches that the merger
fuses is contiguous, and a patch's 1176 values run channel, time, row, column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from omni.encoders.limits import MediaLimits
from omni.config import VisionEncoderConfig
from omni.errors import MediaError

# CLIP's normalisation, which Qwen2.5-VL's vision tower was trained with.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PatchGeometry:
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2

    @property
    def factor(self) -> int:
        """Side of the pixel square one Thinker token covers."""
        return self.patch_size * self.merge_size

    @classmethod
    def from_config(cls, config: VisionEncoderConfig) -> PatchGeometry:
        return cls(config.patch_size, config.temporal_patch_size, config.spatial_merge_size)


@dataclass
class VisionBatch:
    pixel_values: torch.Tensor  # (patches, channels * temporal_patch * patch * patch) float32
    grid_thw: torch.Tensor  # (items, 3) long: temporal patches, patch rows, patch columns

    def token_counts(self, merge_size: int = 2) -> list[int]:
        return (self.grid_thw.prod(-1) // merge_size**2).tolist()


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int | None = None, max_pixels: int | None = None,
    max_ratio: float = 200.0, label: str = "image",
) -> tuple[int, int]:
    """(height, width): multiples of `factor`, pixel count within [min_pixels, max_pixels], aspect ratio
    as close to the source's as the grid allows."""
    max_pixels = max_pixels if max_pixels is not None else 16384 * factor * factor
    min_pixels = min_pixels if min_pixels is not None else 4 * factor * factor
    if max_pixels < min_pixels:
        raise MediaError(f"{label}: max_pixels={max_pixels} is smaller than min_pixels={min_pixels}")
    if min(height, width) <= 0:
        raise MediaError(f"{label}: size {width}x{height} has no pixels")
    if max(height, width) / min(height, width) > max_ratio:
        raise MediaError(
            f"{label}: {width}x{height} has an aspect ratio of {max(height, width) / min(height, width):.0f}:1; "
            f"the limit is {max_ratio:g}:1"
        )
    rounded_h = max(factor, round(height / factor) * factor)
    rounded_w = max(factor, round(width / factor) * factor)
    if rounded_h * rounded_w > max_pixels:
        shrink = math.sqrt(height * width / max_pixels)
        rounded_h = math.floor(height / shrink / factor) * factor
        rounded_w = math.floor(width / shrink / factor) * factor
    elif rounded_h * rounded_w < min_pixels:
        grow = math.sqrt(min_pixels / (height * width))
        rounded_h = math.ceil(height * grow / factor) * factor
        rounded_w = math.ceil(width * grow / factor) * factor
    if rounded_h < factor or rounded_w < factor:
        raise MediaError(f"{label}: {width}x{height} cannot fit {max_pixels} pixels at a multiple of {factor}")
    return rounded_h, rounded_w


def image_size_for(
    width: int, height: int, limits: MediaLimits, geometry: PatchGeometry, label: str,
    min_pixels: int | None = None, max_pixels: int | None = None,
    resized_height: int | None = None, resized_width: int | None = None,
) -> tuple[int, int]:
    """Target (height, width) of an image item, honouring its min/max_pixels or resized_* keys."""
    factor = geometry.factor
    if resized_height is not None and resized_width is not None:
        size = smart_resize(int(resized_height), int(resized_width), factor, max_ratio=limits.max_aspect_ratio,
                            label=label)
    else:
        min_pixels = int(min_pixels) if min_pixels is not None else limits.min_image_pixels
        max_pixels = int(max_pixels) if max_pixels is not None else limits.max_image_pixels
        if max_pixels > limits.max_image_pixels:
            raise MediaError(f"{label}: max_pixels={max_pixels} is over the {limits.max_image_pixels} pixel limit")
        size = smart_resize(height, width, factor, min_pixels, max_pixels, limits.max_aspect_ratio, label)
    if size[0] * size[1] > limits.max_image_pixels:
        raise MediaError(
            f"{label}: resizing to {size[1]}x{size[0]} exceeds the {limits.max_image_pixels} pixel limit per image"
        )
    return size


def video_size_for(
    frames: int, width: int, height: int, limits: MediaLimits, geometry: PatchGeometry, label: str,
    min_pixels: int | None = None, max_pixels: int | None = None, total_pixels: int | None = None,
    resized_height: int | None = None, resized_width: int | None = None,
) -> tuple[int, int]:
    """Target frame (height, width): the per-frame budget shrinks as frames grow so that the video
    fits `total_pixels` (counted per temporal patch, as qwen-omni-utils counts it)."""
    factor = geometry.factor
    if resized_height is not None and resized_width is not None:
        size = smart_resize(int(resized_height), int(resized_width), factor, max_ratio=limits.max_aspect_ratio,
                            label=label)
    else:
        min_pixels = int(min_pixels) if min_pixels is not None else limits.min_video_frame_pixels
        total = total_pixels if total_pixels is not None else limits.max_video_total_pixels
        if total > limits.max_video_total_pixels:
            raise MediaError(f"{label}: total_pixels={total} is over the {limits.max_video_total_pixels} limit")
        if min_pixels > limits.max_video_frame_pixels:
            raise MediaError(
                f"{label}: min_pixels={min_pixels} is over the {limits.max_video_frame_pixels} pixel limit per frame"
            )
        budget = max(min(limits.max_video_frame_pixels, total / frames * geometry.temporal_patch_size),
                     int(min_pixels * 1.05))
        # a larger max_pixels than the budget is clamped (qwen-omni-utils warns and does the same)
        budget = min(max_pixels, budget) if max_pixels is not None else budget
        size = smart_resize(height, width, factor, min_pixels, int(budget), limits.max_aspect_ratio, label)
    patch_pairs = math.ceil(frames / geometry.temporal_patch_size)
    if patch_pairs * size[0] * size[1] > limits.max_video_total_pixels:
        raise MediaError(
            f"{label}: {frames} frames of {size[1]}x{size[0]} exceed the {limits.max_video_total_pixels} pixel "
            "budget per video; sample fewer frames (fps / nframes / max_frames) or lower min_pixels"
        )
    return size


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(T, 3, H, W) uint8 -> (T, 3, height, width) uint8: torchvision's bicubic with antialiasing on
    uint8, the resize the transformers processor applies to images and video frames (and
    qwen-omni-utils to video frames), so that omni's pixels are the processor's pixels."""
    if tuple(frames.shape[-2:]) == (height, width):
        return frames
    from torchvision.transforms.v2 import functional as tvf

    return tvf.resize(frames, [height, width], interpolation=tvf.InterpolationMode.BICUBIC, antialias=True)


def image_frames(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (1, 3, H, W) uint8."""
    array = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)


def frames_to_image(frames: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) uint8 -> RGB PIL image."""
    return Image.fromarray(frames[0].permute(1, 2, 0).contiguous().numpy(), "RGB")


def normalize(frames: torch.Tensor) -> torch.Tensor:
    """Pixel values in [0, 255] (uint8 or float, any layout with channels in dim -3) -> float32,
    CLIP-normalised. Rescale and normalise are one affine map, x / (255 std) - mean / std."""
    scale, shift = _affine(frames.shape[-3])
    return torch.addcmul(shift, frames, scale)


def patchify(frames: torch.Tensor, geometry: PatchGeometry) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(T, C, H, W) pixels in [0, 255] -> normalised (patches, C * temporal * patch * patch) float32 and
    (grid_t, grid_h, grid_w). An odd frame count repeats the last frame; a single image fills both
    temporal slots. The regrouping runs on the 1-byte pixels; the float output is written once and
    normalised in place (allocating it dominates the cost: no float intermediates)."""
    temporal, patch, merge = geometry.temporal_patch_size, geometry.patch_size, geometry.merge_size
    count, channels, height, width = frames.shape
    grid_h, grid_w = height // patch, width // patch
    if count == 1:
        blocks = frames.reshape(channels, grid_h // merge, merge, patch, grid_w // merge, merge, patch)
        blocks = blocks.permute(1, 4, 2, 5, 0, 3, 6).reshape(grid_h * grid_w, channels, 1, patch * patch)
        patches = torch.empty(grid_h * grid_w, channels, temporal, patch * patch, dtype=torch.float32)
        patches.copy_(blocks.expand(-1, -1, temporal, -1))
        grid = (1, grid_h, grid_w)
    else:
        if count % temporal:
            frames = torch.cat([frames, frames[-1:].expand(temporal - count % temporal, -1, -1, -1)])
            count = frames.shape[0]
        grid = (count // temporal, grid_h, grid_w)
        blocks = frames.reshape(grid[0], temporal, channels, grid_h // merge, merge, patch, grid_w // merge, merge,
                                patch)
        blocks = blocks.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (t, h/m, w/m, m, m, C, temporal, p, p)
        blocks = blocks.contiguous().view(grid[0] * grid_h * grid_w, channels, temporal, patch * patch)
        patches = blocks.to(torch.float32)
    scale, shift = _affine(channels)
    patches.mul_(scale.view(channels, 1, 1)).add_(shift.view(channels, 1, 1))
    return patches.view(grid[0] * grid_h * grid_w, -1), grid


def process_images(images: list[torch.Tensor | Image.Image], geometry: PatchGeometry) -> VisionBatch:
    """Images already at their target size (multiples of 28), as (1, 3, H, W) uint8 or PIL -> one
    batch for the vision encoder."""
    frames = [image_frames(image) if isinstance(image, Image.Image) else image for image in images]
    return _batch([patchify(item, geometry) for item in frames])


def process_videos(videos: list[torch.Tensor], geometry: PatchGeometry) -> VisionBatch:
    """Videos (T, 3, H, W) in [0, 255] already at their target size -> one batch for the vision encoder."""
    return _batch([patchify(frames, geometry) for frames in videos])


def _affine(channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    std = torch.tensor(IMAGE_STD[:channels], dtype=torch.float32) * 255.0
    mean = torch.tensor(IMAGE_MEAN[:channels], dtype=torch.float32) * 255.0
    return (1.0 / std).view(channels, 1, 1), (-mean / std).view(channels, 1, 1)


def _batch(items: list[tuple[torch.Tensor, tuple[int, int, int]]]) -> VisionBatch:
    return VisionBatch(
        pixel_values=torch.cat([patches for patches, _ in items]) if items else torch.zeros(0, 0),
        grid_thw=torch.tensor([grid for _, grid in items], dtype=torch.long).reshape(-1, 3),
    )
