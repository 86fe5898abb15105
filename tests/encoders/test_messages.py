"""qwen-omni-utils' message format: process_mm_info's return values and every item key it honours."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from PIL import Image

from omni.encoders.limits import MediaLimits
from omni.encoders.messages import load_conversation_media, process_mm_info
from omni.errors import InputError, MediaError


def _conversation(*items, text="Describe."):
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [*items, {"type": "text", "text": text}]},
    ]


def test_process_mm_info_returns_qwen_omni_utils_shapes(media):
    conversation = _conversation(
        {"type": "image", "image": str(media.image_png)},
        {"type": "audio", "audio": str(media.speech)},
        {"type": "video", "video": str(media.video_audio["mp4"])},
        {"type": "image", "image_url": str(media.image_jpg)},
    )
    audios, images, videos = process_mm_info(conversation, use_audio_in_video=False)
    assert len(audios) == 1 and audios[0].dtype == np.float32
    assert [image.size for image in images] == [(196, 140), (84, 308)]  # multiples of 28
    assert all(isinstance(image, Image.Image) and image.mode == "RGB" for image in images)
    assert len(videos) == 1 and videos[0].dtype == torch.float32 and videos[0].shape[0] == 6
    # the frames grow to the video's per-frame minimum (128 tokens of 28 x 28 pixels)
    assert videos[0].shape[2] * videos[0].shape[3] >= 128 * 28 * 28
    assert videos[0].shape[2] % 28 == 0 and videos[0].shape[3] % 28 == 0

    audios, _, _, video_kwargs = process_mm_info(conversation, use_audio_in_video=True, return_video_kwargs=True)
    assert len(audios) == 2 and abs(audios[1].size / 16000 - 3.0) < 0.05  # the video's track comes second
    assert video_kwargs == {"do_sample_frames": False, "fps": [pytest.approx(2.0)]}
    assert process_mm_info([{"role": "user", "content": "hi"}], use_audio_in_video=False) == (None, None, None)


def test_batch_of_conversations_keeps_order(media):
    first = _conversation({"type": "image", "image": str(media.image_png)})
    second = _conversation({"type": "image", "image": str(media.image_jpg)}, {"type": "image", "image": str(media.image_rgba)})
    _, images, _ = process_mm_info([first, second], use_audio_in_video=False)
    assert [image.size for image in images] == [(196, 140), (84, 308), (112, 84)]


def test_item_keys_are_honoured(media):
    items = load_conversation_media(_conversation(
        {"type": "image", "image": str(media.image_png), "max_pixels": 10000},
        {"type": "image", "image": str(media.image_png), "resized_height": 280, "resized_width": 56},
        {"type": "audio", "audio": str(media.tone["flac"]), "audio_start": 0.5, "audio_end": 1.0},
        {"type": "video", "video": str(media.video["mkv"]), "nframes": 4, "min_pixels": 784 * 4,
         "max_pixels": 784 * 8},
        {"type": "video", "video": str(media.video["webm"]), "fps": 1.0, "video_start": 1.0, "video_end": 3.0,
         "resized_height": 56, "resized_width": 84},
    ))
    assert items[0].image.size == (112, 84)
    assert items[1].image.size == (56, 280)
    assert items[2].waveform.size == 8000
    assert items[3].frames.shape[0] == 4 and items[3].frames.shape[2] * items[3].frames.shape[3] <= 784 * 8
    assert items[4].frames.shape == (4, 3, 56, 84)
    assert items[4].sample_fps == pytest.approx(4 / 20 * 10)


def test_sources_in_every_form(media):
    data = media.image_png.read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    audio_uri = "data:audio/wav;base64," + base64.b64encode(media.tone["wav"].read_bytes()).decode()
    waveform = np.zeros(16000, np.float32)
    items = load_conversation_media(_conversation(
        {"type": "image", "image": uri},
        {"type": "image", "image": Image.open(media.image_png)},
        {"type": "image_url", "image_url": {"url": media.image_png.as_uri()}},
        {"type": "audio", "audio": audio_uri},
        {"type": "audio", "audio": waveform},
        {"type": "video", "video": [str(media.image_png)] * 3, "sample_fps": 1.0},
    ))
    assert [item.kind for item in items] == ["image", "image", "image", "audio", "audio", "video"]
    assert items[0].image.tobytes() == items[1].image.tobytes() == items[2].image.tobytes()
    assert items[3].waveform.size == 24000 and items[4].waveform.size == 16000
    assert items[5].frames.shape[0] == 4 and items[5].sample_fps == 1.0  # padded to pairs


def test_video_without_audio_track_stays_plain_with_use_audio_in_video(media):
    items = load_conversation_media(_conversation({"type": "video", "video": str(media.video["mov"])}),
                                    use_audio_in_video=True)
    assert items[0].video_audio is None


def test_errors_name_the_item(media):
    with pytest.raises(InputError, match="names no source"):
        load_conversation_media(_conversation({"type": "image"}))
    with pytest.raises(InputError, match="max_pixels must be a number"):
        load_conversation_media(_conversation({"type": "image", "image": str(media.image_png), "max_pixels": "big"}))
    with pytest.raises(MediaError, match="remote fetching is disabled"):
        load_conversation_media(_conversation({"type": "image", "image": "https://example.com/a.png"}))
    with pytest.raises(MediaError, match="longer than the 1 s limit"):
        load_conversation_media(_conversation({"type": "audio", "audio": str(media.tone["wav"])}),
                                limits=MediaLimits(max_audio_seconds=1.0))
