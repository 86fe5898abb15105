"""Images and video frames to Qwen3-Omni's vision encoder input.

Qwen3-Omni's processor uses the same Qwen2-VL image processor class as Qwen2.5-Omni, configured by its
preprocessor_config.json with patch 16 (so sides are multiples of 32, one Thinker token per 32 x 32
pixels) and mean = std = 0.5 per channel instead of CLIP's statistics. Resizing is shared with
`omni.encoders.image_processing` (`smart_resize` takes the factor, `resize_frames` is the same bicubic);
only the patch layout's normalisation is Qwen3's, and it lives here because the shared `patchify`
fixes CLIP's mean and std.

The normalisation is written as the processor computes it, (x - 127.5) / 127.5 in float32 (it fuses
rescale and normalise into mean = 0.5 * 255, std = 0.5 * 255), so the pixel values are bit-identical.
"""

from __future__ import annotations

import torch
from PIL import Image

from omni.encoders.image_processing import PatchGeometry, VisionBatch, _batch, image_frames

GEOMETRY = PatchGeometry(patch_size=16, temporal_patch_size=2, merge_size=2)
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
# preprocessor_config.json of the published checkpoints (images)
MIN_IMAGE_PIXELS = 3136
MAX_IMAGE_PIXELS = 12845056
# Qwen3OmniMoeProcessor's own video defaults (size shortest_edge / longest_edge), per frame
MIN_VIDEO_FRAME_PIXELS = 128 * 32 * 32
MAX_VIDEO_FRAME_PIXELS = 768 * 32 * 32


def patchify(frames: torch.Tensor, geometry: PatchGeometry = GEOMETRY) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(T, C, H, W) pixels in [0, 255], H and W multiples of patch * merge -> normalised
    (patches, C * temporal * patch * patch) float32 in merge-block order, and (grid_t, grid_h, grid_w).
    An odd frame count repeats the last frame; a single image fills every temporal slot."""
    temporal, patch, merge = geometry.temporal_patch_size, geometry.patch_size, geometry.merge_size
    count, channels, height, width = frames.shape
    grid_h, grid_w = height // patch, width // patch
    if count % temporal:
        frames = torch.cat([frames, frames[-1:].expand(temporal - count % temporal, -1, -1, -1)])
    grid_t = frames.shape[0] // temporal
    blocks = frames.reshape(grid_t, temporal, channels, grid_h // merge, merge, patch, grid_w // merge, merge, patch)
    blocks = blocks.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (t, h/m, w/m, m, m, C, temporal, p, p)
    patches = blocks.reshape(grid_t * grid_h * grid_w, -1).to(torch.float32)
    mean = torch.tensor(IMAGE_MEAN[:channels], dtype=torch.float32) * 255.0
    std = torch.tensor(IMAGE_STD[:channels], dtype=torch.float32) * 255.0
    view = patches.view(-1, channels, temporal * patch * patch)
    view.sub_(mean.view(1, channels, 1)).div_(std.view(1, channels, 1))
    return patches, (grid_t, grid_h, grid_w)


def process_images(images: list[torch.Tensor | Image.Image], geometry: PatchGeometry = GEOMETRY) -> VisionBatch:
    """Images already at their target size (multiples of 32), as (1, 3, H, W) uint8 or PIL -> one batch."""
    frames = [image_frames(image) if isinstance(image, Image.Image) else image for image in images]
    return _batch([patchify(item, geometry) for item in frames])


def process_videos(videos: list[torch.Tensor], geometry: PatchGeometry = GEOMETRY) -> VisionBatch:
    """Videos (T, 3, H, W) in [0, 255] already at their target size -> one batch."""
    return _batch([patchify(frames, geometry) for frames in videos])

