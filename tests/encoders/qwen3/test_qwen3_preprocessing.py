"""Qwen3-Omni's preprocessing against the processors its preprocessor_config.json names (Qwen2VLImageProcessor
with patch 16 and mean = std = 0.5, WhisperFeatureExtractor), called as Qwen3OmniMoeProcessor calls them,
on real media nobody here made: gradio's media_assets (a dev dependency)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from PIL import Image

from omni.encoders.image_processing import image_frames, resize_frames, smart_resize
from omni.encoders.qwen3 import audio_features as qwen3_audio
from omni.encoders.qwen3.image_processing import (
    GEOMETRY,
    IMAGE_MEAN,
    IMAGE_STD,
    MAX_IMAGE_PIXELS,
    MIN_IMAGE_PIXELS,
    process_images,
    process_videos,
)

pytestmark = pytest.mark.parity

# Qwen3OmniMoeProcessor.audio_kwargs
AUDIO_KWARGS = {"sampling_rate": 16000, "padding": True, "truncation": False, "return_attention_mask": True}


@pytest.fixture(scope="module")
def assets() -> Path:
    spec = importlib.util.find_spec("gradio")
    if spec is None or spec.origin is None:
        pytest.skip("gradio (omni[dev]) is not installed; its media_assets hold the real media")
    return Path(spec.origin).parent / "media_assets"


@pytest.fixture(scope="module")
def image_processor():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=list(IMAGE_MEAN),
                                 image_std=list(IMAGE_STD), min_pixels=MIN_IMAGE_PIXELS, max_pixels=MAX_IMAGE_PIXELS)


@pytest.fixture(scope="module")
def whisper():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, n_fft=400, chunk_length=300,
                                   padding_value=0.0, return_attention_mask=True, dither=0.0)


def _resized(image: Image.Image, min_pixels=MIN_IMAGE_PIXELS, max_pixels=MAX_IMAGE_PIXELS) -> torch.Tensor:
    height, width = smart_resize(image.height, image.width, GEOMETRY.factor, min_pixels, max_pixels)
    return resize_frames(image_frames(image), height, width)


@pytest.mark.parametrize("name,pixels", [("cheetah1.jpg", None), ("bus.png", None), ("lion.jpg", (3136, 200_000))])
def test_real_photos_give_the_processor_pixels_exactly(assets, image_processor, name, pixels):
    image = Image.open(assets / "images" / name).convert("RGB")
    limits = {} if pixels is None else {"size": {"shortest_edge": pixels[0], "longest_edge": pixels[1]}}
    expected = image_processor(images=[image], return_tensors="pt", **limits)
    ours = process_images([_resized(image, *(pixels or (MIN_IMAGE_PIXELS, MAX_IMAGE_PIXELS)))])
    assert torch.equal(ours.grid_thw, expected["image_grid_thw"])
    assert all(side % 2 == 0 for side in ours.grid_thw[0, 1:].tolist())
    assert torch.equal(ours.pixel_values, expected["pixel_values"])  # bit for bit
    assert ours.pixel_values.shape[1] == 3 * 2 * 16 * 16


def test_several_photos_in_one_call(assets, image_processor):
    images = [Image.open(assets / "images" / name).convert("RGB") for name in ("tower.jpg", "groot.jpeg")]
    expected = image_processor(images=images, return_tensors="pt")
    ours = process_images([_resized(image) for image in images])
    assert torch.equal(ours.grid_thw, expected["image_grid_thw"])
    assert torch.equal(ours.pixel_values, expected["pixel_values"])


def test_video_frames_give_the_processor_pixels(assets):
    """Qwen2VLVideoProcessor (the class Qwen3-Omni's processor loads) on the same decoded frames."""
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    processor = Qwen2VLVideoProcessor(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=list(IMAGE_MEAN),
                                      image_std=list(IMAGE_STD), do_sample_frames=False)
    photo = image_frames(Image.open(assets / "images" / "cheetah.jpg").convert("RGB"))
    frames = torch.cat([photo, photo.flip(-1), photo.flip(-2)])  # 3 frames: the odd one is repeated
    size = {"shortest_edge": 16 * 1024, "longest_edge": 64 * 1024}
    expected = processor(videos=[frames], size=size, return_tensors="pt")
    height, width = smart_resize(frames.shape[-2], frames.shape[-1], 32, size["shortest_edge"], size["longest_edge"])
    ours = process_videos([resize_frames(frames, height, width)])
    assert ours.grid_thw.tolist() == expected["video_grid_thw"].tolist() == [[2, height // 16, width // 16]]
    assert (ours.pixel_values - expected["pixel_values_videos"]).abs().max().item() <= 1e-6


def _speech(assets, *names):
    from omni.encoders.audio_loader import load_audio
    from omni.encoders.limits import MediaLimits

    return [load_audio(str(assets / "audio" / name), MediaLimits()) for name in names]


def _check_features(whisper, waveforms) -> float:
    expected = whisper(waveforms, return_tensors="pt", **AUDIO_KWARGS)
    ours = qwen3_audio.extract_features(waveforms)
    assert ours.feature_lens.tolist() == expected["attention_mask"].sum(-1).tolist()
    worst = 0.0
    for row, clip in enumerate(ours.input_features.split(ours.feature_lens.tolist(), dim=1)):
        reference = expected["input_features"][row, :, : clip.shape[1]]
        worst = max(worst, (clip - reference).abs().max().item())
    return worst


def test_real_speech_gives_the_processor_features(assets, whisper):
    waveforms = _speech(assets, "heath_ledger.mp3")
    assert len(waveforms[0]) % 160 != 0  # the partial last frame is dropped, as the processor drops it
    assert _check_features(whisper, waveforms) <= 1e-6


def test_qwen25_front_end_would_differ(assets, whisper):
    """Why Qwen3 has its own front end: the shared one pads to 300 s as Qwen2.5-Omni's processor does, so for
    a lone clip it keeps the partial last frame Qwen3-Omni's processor (padding=True) drops."""
    from omni.encoders.audio_features import extract_features as qwen25_features

    waveforms = _speech(assets, "heath_ledger.mp3")
    expected = whisper(waveforms, return_tensors="pt", **AUDIO_KWARGS)["attention_mask"].sum(-1).tolist()
    assert qwen25_features(waveforms).feature_lens.tolist() == [expected[0] + 1]
    assert qwen3_audio.extract_features(waveforms).feature_lens.tolist() == expected


def test_several_clips_in_one_call(assets, whisper):
    """Padded to the longest clip of the call: the longest loses its partial frame, the others keep theirs."""
    waveforms = _speech(assets, "heath_ledger.mp3", "cate_blanch.mp3", "recording1.wav")
    assert _check_features(whisper, waveforms) <= 1e-6
    lens = qwen3_audio.extract_features(waveforms).feature_lens.tolist()
    assert lens == [-(-len(w) // 160) if w is not waveforms[1] else len(w) // 160 for w in waveforms]


@pytest.mark.parametrize("lengths", [[16000], [16000 * 3 + 77, 16000 * 3 + 5], [3200, 3300, 9000], [48000, 47800]])
def test_edge_lengths(whisper, lengths):
    """A multiple of 160, two clips ending in the same last hop, short clips, a clip within n_fft of the end."""
    generator = torch.Generator().manual_seed(0)
    waveforms = [(torch.randn(length, generator=generator) * 0.1).numpy() for length in lengths]
    assert _check_features(whisper, waveforms) <= 1e-6
