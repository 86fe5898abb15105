"""omni's preprocessing and placeholder expansion against the transformers Qwen2.5-Omni processor fed
the same decoded media: pixel values, grids, seconds per grid, log-mel features and masks, input ids."""

from __future__ import annotations

import pytest
import torch

from omni.config import load_config
from omni.prompt import prepare_prompt
from omni.tokenizer import Tokenizer
from tests.conftest import PAD_ID
from omni.tools.reference import reference_inputs

pytestmark = pytest.mark.parity

VIDEO_PIXELS = (16 * 784, 32 * 784)  # small frames keep the tests fast


@pytest.fixture(scope="module")
def setup(tiny_checkpoint):
    from transformers import Qwen2_5OmniProcessor

    return (Tokenizer.from_checkpoint(tiny_checkpoint), load_config(tiny_checkpoint).thinker,
            Qwen2_5OmniProcessor.from_pretrained(tiny_checkpoint))


def _video(path, **keys):
    return {"type": "video", "video": str(path), "min_pixels": VIDEO_PIXELS[0], "max_pixels": VIDEO_PIXELS[1], **keys}


def _cases(media):
    user = lambda *items: [{"role": "user", "content": list(items)}]  # noqa: E731
    text = {"type": "text", "text": "What happens here?"}
    return {
        "image": ([user({"type": "image", "image": str(media.image_png)}, text)], False),
        "two_images_and_audio": ([user({"type": "image", "image": str(media.image_png)},
                                       {"type": "audio", "audio": str(media.speech)},
                                       {"type": "image", "image": str(media.image_jpg)}, text)], False),
        "video": ([user(_video(media.video["webm"]), text)], False),
        "video_with_audio": ([user(_video(media.long_video_audio), text)], True),
        "audio_then_video_with_audio": ([user({"type": "audio", "audio": str(media.tone["opus"])},
                                              _video(media.video_audio["mkv"]), text)], True),
        "batch": ([user({"type": "image", "image": str(media.image_jpg)}, text),
                   user(text), user({"type": "audio", "audio": str(media.tone["mp3"])},
                                    {"type": "image", "image": str(media.image_rgba)})], False),
    }


@pytest.mark.parametrize("case", ["image", "two_images_and_audio", "video", "video_with_audio",
                                  "audio_then_video_with_audio", "batch"])
def test_processor_outputs_match(setup, media, case):
    tokenizer, config, processor = setup
    conversations, use_audio_in_video = _cases(media)[case]
    prepared = prepare_prompt(tokenizer, config, conversations, pad_token_id=PAD_ID,
                              use_audio_in_video=use_audio_in_video)
    expected = reference_inputs(processor, conversations, prepared.items, use_audio_in_video,
                                video_pixels=VIDEO_PIXELS)

    assert torch.equal(prepared.input_ids, expected["input_ids"])
    mask = prepared.token_mask if prepared.token_mask is not None else torch.ones_like(prepared.input_ids).bool()
    assert torch.equal(mask.long(), expected["attention_mask"])
    media_inputs = prepared.media
    if "pixel_values" in expected:
        assert torch.equal(media_inputs.images.grid_thw, expected["image_grid_thw"])
        assert (media_inputs.images.pixel_values - expected["pixel_values"]).abs().max().item() <= 1e-4
    else:
        assert media_inputs.images is None
    if "pixel_values_videos" in expected:
        assert torch.equal(media_inputs.videos.grid_thw, expected["video_grid_thw"])
        assert (media_inputs.videos.pixel_values - expected["pixel_values_videos"]).abs().max().item() <= 1e-4
        assert torch.allclose(media_inputs.video_second_per_grid, expected["video_second_per_grid"].float())
    else:
        assert media_inputs.videos is None
    if "input_features" in expected:
        lens = media_inputs.audio.feature_lens
        assert lens.tolist() == expected["feature_attention_mask"].sum(-1).tolist()
        features, feature_mask = media_inputs.audio.padded()
        assert torch.equal(feature_mask, expected["feature_attention_mask"][:, : feature_mask.shape[1]])
        for row, frames in enumerate(lens.tolist()):
            difference = features[row, :, :frames] - expected["input_features"][row, :, :frames]
            assert difference.abs().max().item() <= 1e-4
    else:
        assert media_inputs.audio is None
    if case == "video_with_audio":
        # 5 s of video and audio interleave in three 2-second chunks: V A V A V A
        ids = prepared.input_ids[0].tolist()
        runs = [token for index, token in enumerate(ids) if token in (config.token_ids.video, config.token_ids.audio)
                and (index == 0 or ids[index - 1] != token)]
        assert runs == [config.token_ids.video, config.token_ids.audio] * 3
