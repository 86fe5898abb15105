"""Qwen3-Omni's audio encoder (AuT) against transformers' Qwen3OmniMoeAudioEncoder with copied weights, fp32."""

from __future__ import annotations

import pytest
import torch

from omni.encoders.qwen3.audio_encoder import AudioEncoder, output_lengths
from omni.qwen3.config import AudioEncoderConfig

# Across the 100-frame conv chunk and the 800-frame attention window: 1 frame, just under / at / over one chunk
# (98: its conv lengths differ from a padded chunk's), just under / at / over one window, two windows and a bit.
LENGTHS = [1, 98, 99, 100, 101, 799, 800, 801, 1700]


def _reference_config(n_window_infer: int = 800, layers: int = 2):
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig

    config = Qwen3OmniMoeAudioEncoderConfig(
        num_mel_bins=128, encoder_layers=layers, encoder_attention_heads=4, encoder_ffn_dim=96, d_model=64,
        output_dim=48, downsample_hidden_size=16, n_window=50, n_window_infer=n_window_infer,
        max_source_positions=1500, conv_chunksize=3,
    )
    config._attn_implementation = "eager"
    return config


def _omni_config(reference) -> AudioEncoderConfig:
    return AudioEncoderConfig(
        num_mel_bins=reference.num_mel_bins, num_layers=reference.encoder_layers,
        num_heads=reference.encoder_attention_heads, ffn_dim=reference.encoder_ffn_dim, d_model=reference.d_model,
        activation=reference.activation_function, max_source_positions=reference.max_source_positions,
        n_window=reference.n_window, n_window_infer=reference.n_window_infer,
        conv_chunksize=reference.conv_chunksize, downsample_hidden_size=reference.downsample_hidden_size,
        output_dim=reference.output_dim, scale_embedding=reference.scale_embedding,
    )


def _towers(n_window_infer: int = 800):
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeAudioEncoder

    torch.manual_seed(0)
    reference_config = _reference_config(n_window_infer)
    reference = Qwen3OmniMoeAudioEncoder(reference_config).eval()
    with torch.no_grad():  # random init leaves the LayerNorms at identity and outputs small: perturb everything
        for parameter in reference.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.15)
    ours = AudioEncoder(_omni_config(reference_config)).eval()
    missing, unexpected = ours.load_state_dict(reference.state_dict(), strict=True)
    assert not missing and not unexpected
    return ours, reference


@pytest.fixture(scope="module")
def towers():
    return _towers()


def _features(lengths: list[int], seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(128, sum(lengths), generator=generator), torch.tensor(lengths)


def _compare(ours, reference, lengths: list[int]) -> float:
    features, lens = _features(lengths)
    with torch.no_grad():
        actual = ours(features, lens)
        expected = reference(features, lens).last_hidden_state
    assert actual.shape == expected.shape == (int(output_lengths(lens).sum()), ours.config.output_dim)
    assert expected.std().item() > 0.3  # outputs of magnitude ~1, not a vanishing signal
    return (actual - expected).abs().max().item()


def test_weight_names_match_the_checkpoint():
    """The published checkpoint's `thinker.audio_tower.*` names, one to one (the reference's state_dict)."""
    ours, reference = _towers()
    assert set(ours.state_dict()) == set(reference.state_dict())
    for name in ["conv2d1.weight", "conv2d3.bias", "conv_out.weight", "layers.1.self_attn.k_proj.bias",
                 "layers.0.self_attn.q_proj.weight", "ln_post.weight", "proj1.weight", "proj2.bias"]:
        assert name in ours.state_dict()
    assert "conv_out.bias" not in ours.state_dict()


def test_output_lengths_match_reference():
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

    frames = torch.cat([torch.arange(0, 2001), torch.tensor([29999, 30000, 30001])])
    expected = _get_feat_extract_output_lengths(frames)
    assert torch.equal(output_lengths(frames), expected)
    assert [output_lengths(int(count)) for count in frames[:300]] == expected[:300].tolist()
    assert output_lengths(1000) == 130  # 10 s of audio: 12.5 tokens per second (13 per 100-frame chunk)


@pytest.mark.parity
@pytest.mark.parametrize("frames", LENGTHS)
def test_single_audio_matches_reference(towers, frames):
    ours, reference = towers
    assert _compare(ours, reference, [frames]) <= 1e-4


@pytest.mark.parity
def test_several_audios_at_once_match_reference(towers):
    ours, reference = towers
    assert _compare(ours, reference, [801, 37, 1700, 100, 250]) <= 1e-4


@pytest.mark.parity
def test_several_short_audios_match_reference(towers):
    """No full chunk in the call: conv chunks are padded to the longest audio, windows are whole audios."""
    ours, reference = towers
    assert _compare(ours, reference, [20, 99, 3, 64]) <= 1e-4


@pytest.mark.parity
def test_short_attention_windows_match_reference():
    """n_window_infer 200 (26-token windows): several windows in under 5 s, tails in and out of a window."""
    ours, reference = _towers(n_window_infer=200)
    assert _compare(ours, reference, [450, 199, 201, 1]) <= 1e-4
    assert _compare(ours, reference, [399]) <= 1e-4


@pytest.mark.parity
def test_windows_separate_attention(towers):
    """Changing frames in one 800-frame window leaves the other window's tokens unchanged, and vice versa the
    changed window's tokens do change (the window restriction is real, not an accident of the test sizes)."""
    ours, _ = towers
    features, lens = _features([1600])
    changed = features.clone()
    changed[:, 900:] = torch.randn(128, 700, generator=torch.Generator().manual_seed(3)) * 3
    with torch.no_grad():
        before, after = ours(features, lens), ours(changed, lens)
    assert torch.equal(before[:104], after[:104])
    assert (before[104:] - after[104:]).abs().max().item() > 1e-2


@pytest.mark.parity
def test_conv_padding_is_batch_dependent_in_the_reference(towers):
    """A documented quirk both implementations share: the conv chunks are zero-padded to the longest chunk of
    the call and the padding is not masked, so a 98-frame audio alone differs from the same audio next to a
    full chunk (99 frames would not show it: 99 and 100 frames give the same length after every convolution).
    omni reproduces it (the batch tests above cover it); this proves the reference does it."""
    ours, reference = towers
    features, lens = _features([98, 200])
    with torch.no_grad():
        alone = reference(features[:, :98], lens[:1]).last_hidden_state
        assert (ours(features[:, :98], lens[:1]) - alone).abs().max().item() <= 1e-4
        batched = reference(features, lens).last_hidden_state[: alone.shape[0]]
    assert (alone - batched).abs().max().item() > 1e-3


@pytest.mark.parity
def test_meta_device_build_and_reset_buffers(towers):
    """The loader builds the tree on the meta device, materialises it and loads weights; the non-persistent
    position table comes back through reset_buffers."""
    ours, reference = towers
    with torch.device("meta"):
        built = AudioEncoder(ours.config)
    built = built.to_empty(device="cpu").eval()
    built.load_state_dict(reference.state_dict(), strict=True)
    built.reset_buffers()
    features, lens = _features([801, 37])
    with torch.no_grad():
        assert torch.equal(built(features, lens), ours(features, lens))
