"""omni's log-mel front end against transformers' WhisperFeatureExtractor as the Qwen2.5-Omni processor
calls it (padding to 300 s): the valid frames, their count and mask, without omni padding to 300 s."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omni.encoders.audio_features import extract_features, feature_frames, log_mel, mel_filters
from omni.encoders.audio_loader import load_audio
from omni.encoders.limits import MediaLimits


@pytest.fixture(scope="module")
def whisper(tiny_checkpoint):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor.from_pretrained(tiny_checkpoint)


def _reference(whisper, waveforms):
    return whisper(waveforms, sampling_rate=16000, padding="max_length", return_attention_mask=True,
                   return_tensors="pt")


def _clips():
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(16000 * 2 + 77) * 0.1).astype(np.float32)
    loud_tail = noise.copy()
    loud_tail[-40:] = 4.0  # the loudest frames are past the last valid one: they set the clamp
    return {
        "noise": noise,
        "loud_tail": loud_tail,
        "short": np.sin(np.arange(321) / 3).astype(np.float32),
        "exact_hops": np.sin(np.arange(1600) / 7).astype(np.float32),
        "silence": np.zeros(4000, np.float32),
    }


def test_mel_filters_equal_the_reference(whisper):
    assert (mel_filters() - torch.from_numpy(whisper.mel_filters.T).float()).abs().max().item() < 1e-7


@pytest.mark.parity
def test_valid_frames_equal_the_reference(whisper, media):
    clips = _clips()
    clips["speech"] = load_audio(str(media.speech), MediaLimits())
    waveforms = list(clips.values())
    expected = _reference(whisper, waveforms)
    ours = extract_features(waveforms)
    assert ours.feature_lens.tolist() == expected["attention_mask"].sum(-1).tolist()
    assert ours.feature_lens.tolist() == [feature_frames(len(w)) for w in waveforms]
    padded, mask = ours.padded()
    assert torch.equal(mask, expected["attention_mask"][:, : mask.shape[1]].long())
    for row, (name, frames) in enumerate(zip(clips, ours.feature_lens.tolist())):
        difference = (padded[row, :, :frames] - expected["input_features"][row, :, :frames]).abs().max().item()
        assert difference <= 1e-4, f"{name}: max abs difference {difference}"


@pytest.mark.parity
def test_a_clip_filling_the_300_second_window(whisper):
    waveform = np.sin(np.arange(300 * 16000) / 11).astype(np.float32) * 0.3
    waveform[-100:] = 0.9
    expected = _reference(whisper, [waveform])["input_features"][0]
    ours = log_mel(waveform)
    assert ours.shape == (128, 30000)
    assert (ours - expected).abs().max().item() <= 1e-4


def test_concatenated_layout_and_padding():
    clips = list(_clips().values())[:3]
    features = extract_features(clips)
    lens = features.feature_lens.tolist()
    assert features.input_features.shape == (128, sum(lens))
    assert torch.equal(features.input_features[:, lens[0]: lens[0] + lens[1]], log_mel(clips[1]))
    padded, mask = features.padded()
    assert padded.shape == (3, 128, max(lens)) and mask.sum(-1).tolist() == lens
    assert padded[2, :, lens[2]:].abs().sum() == 0
