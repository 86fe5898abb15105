"""Dynamic resolution, normalisation and patch layout of images and video frames."""

from __future__ import annotations

import warnings

import pytest
import torch
from PIL import Image

from omni.encoders.image_processing import (
    PatchGeometry,
    frames_to_image,
    image_frames,
    image_size_for,
    process_images,
    process_videos,
    resize_frames,
    smart_resize,
    video_size_for,
)
from omni.encoders.limits import MediaLimits
from omni.errors import MediaError
from omni.tools.media_factory import drawing, video_frames

GEOMETRY = PatchGeometry()


@pytest.mark.parametrize("height,width", [(150, 200), (300, 90), (28, 28), (1080, 1920), (4000, 3000), (57, 999)])
def test_smart_resize_matches_the_reference_rule(height, width):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as reference

    for min_pixels, max_pixels in ((3136, 12845056), (100352, 602112), (784, 50000)):
        ours = smart_resize(height, width, 28, min_pixels, max_pixels)
        assert ours == reference(height, width, 28, min_pixels, max_pixels)
        assert ours[0] % 28 == 0 and ours[1] % 28 == 0
        assert min_pixels <= ours[0] * ours[1] <= max_pixels


def test_smart_resize_errors_name_the_problem():
    with pytest.raises(MediaError, match="aspect ratio of 300:1"):
        smart_resize(10, 3000)
    with pytest.raises(MediaError, match="smaller than min_pixels"):
        smart_resize(100, 100, min_pixels=5000, max_pixels=4000)


def test_image_size_honours_item_keys_and_limits():
    limits = MediaLimits()
    assert image_size_for(200, 150, limits, GEOMETRY, "x") == (140, 196)
    assert image_size_for(200, 150, limits, GEOMETRY, "x", max_pixels=10000) == (84, 112)
    assert image_size_for(200, 150, limits, GEOMETRY, "x", min_pixels=200000) == (392, 532)
    assert image_size_for(200, 150, limits, GEOMETRY, "x", resized_height=50, resized_width=300) == (56, 308)
    with pytest.raises(MediaError, match="over the 12845056 pixel limit"):
        image_size_for(200, 150, limits, GEOMETRY, "x", max_pixels=20_000_000)
    with pytest.raises(MediaError, match="smaller than min_pixels"):
        image_size_for(200, 150, limits, GEOMETRY, "x", min_pixels=20000, max_pixels=5000)
    with pytest.raises(MediaError, match="exceeds the 5000 pixel limit"):
        image_size_for(200, 150, MediaLimits(max_image_pixels=5000), GEOMETRY, "x", resized_height=100,
                       resized_width=100)


def test_video_frame_budget_shrinks_with_frame_count():
    limits = MediaLimits()
    few = video_size_for(8, 1280, 720, limits, GEOMETRY, "v")
    many = video_size_for(768, 1280, 720, limits, GEOMETRY, "v")
    assert few[0] * few[1] <= limits.max_video_frame_pixels
    assert many[0] * many[1] < few[0] * few[1]
    assert 384 * many[0] * many[1] <= limits.max_video_total_pixels
    # a larger max_pixels than the budget is clamped, not an error (qwen-omni-utils' rule)
    assert video_size_for(8, 1280, 720, limits, GEOMETRY, "v", max_pixels=10**9) == few
    with pytest.raises(MediaError, match="total_pixels=.* is over"):
        video_size_for(8, 1280, 720, limits, GEOMETRY, "v", total_pixels=limits.max_video_total_pixels + 1)
    with pytest.raises(MediaError, match="pixel budget per video"):
        video_size_for(768, 1280, 720, MediaLimits(max_video_total_pixels=10**6), GEOMETRY, "v",
                       min_pixels=100352, total_pixels=10**6)


@pytest.mark.parity
def test_images_at_source_size_give_the_reference_processor_outputs(tiny_checkpoint):
    """From the decoded picture on: omni's resize, normalisation and patches equal the processor's
    own (it resizes with the same torchvision kernel)."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(tiny_checkpoint)
    images = [drawing(w, h, seed) for seed, (w, h) in enumerate([(200, 150), (90, 300), (64, 64), (1001, 333)])]
    resized = [resize_frames(image_frames(image), *image_size_for(image.width, image.height, MediaLimits(), GEOMETRY,
                                                                  "x")) for image in images]
    ours = process_images(resized, GEOMETRY)
    expected = processor(images=images, return_tensors="pt")
    assert torch.equal(ours.grid_thw, expected["image_grid_thw"])
    assert ours.pixel_values.shape == expected["pixel_values"].shape
    assert (ours.pixel_values - expected["pixel_values"]).abs().max().item() <= 1e-5
    # handing the processor omni's resized pixels instead changes nothing (its resize is the identity)
    again = processor(images=[frames_to_image(frames) for frames in resized], return_tensors="pt")
    assert (again["pixel_values"] - expected["pixel_values"]).abs().max().item() == 0


@pytest.mark.parity
@pytest.mark.parametrize("frames", [6, 5])
def test_video_frames_at_source_size_give_the_reference_processor_outputs(tiny_checkpoint, frames):
    from transformers import AutoVideoProcessor

    processor = AutoVideoProcessor.from_pretrained(tiny_checkpoint)
    raw = torch.from_numpy(video_frames(frames, 160, 120, seed=1)).permute(0, 3, 1, 2).contiguous()
    size = video_size_for(frames, 160, 120, MediaLimits(), GEOMETRY, "v", min_pixels=16 * 784, max_pixels=32 * 784)
    ours = process_videos([resize_frames(raw, *size)], GEOMETRY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = processor(videos=[raw], size={"shortest_edge": 16 * 784, "longest_edge": 32 * 784},
                             return_tensors="pt")
    assert ours.grid_thw.tolist() == expected["video_grid_thw"].tolist() == [[3, size[0] // 14, size[1] // 14]]
    assert (ours.pixel_values - expected["pixel_values_videos"]).abs().max().item() <= 1e-5


def test_frames_round_trip_and_resize():
    image = drawing(200, 150, seed=3)
    frames = image_frames(image)
    assert frames.shape == (1, 3, 150, 200) and frames.dtype == torch.uint8
    assert frames_to_image(frames).tobytes() == image.tobytes()
    assert resize_frames(frames, 150, 200) is frames
    resized = resize_frames(frames.expand(2, -1, -1, -1), 140, 196)
    assert resized.shape == (2, 3, 140, 196) and resized.dtype == torch.uint8
    # a bicubic resize of the same picture by Pillow agrees closely (different kernel, same geometry)
    pillow = image_frames(image.resize((196, 140), Image.Resampling.BICUBIC))
    assert (resized[0].float() - pillow[0].float()).abs().mean().item() < 3.0
