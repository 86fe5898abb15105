"""BigVGAN's fast paths against their plain definitions: the anti-aliased snake's zero-padded
filters with edge corrections against BigVGAN's replicate padding, and a stage's AMP blocks run side
by side against one after the other. Both compute the same sums, so the bounds are float32 rounding
(oneDNN may pick another kernel for another channel count or padding, which orders sums
differently; on the small preset's 4-128 channel blocks side by side is bit-identical)."""

import pytest
import torch
import torch.nn.functional as F

from omni.talker.bigvgan import AntiAliasedSnake, amp_blocks_side_by_side, snake


def _replicate_padded(activation: AntiAliasedSnake, hidden: torch.Tensor) -> torch.Tensor:
    """The checkpoint's definition, written out: replicate-pad, transposed conv, crop, x2; snake;
    replicate-pad, strided conv."""
    channels = hidden.shape[1]
    taps = activation.down_taps  # the plain low-pass filter, per channel
    padded = F.pad(hidden, (activation.up_pad, activation.up_pad), mode="replicate")
    upsampled = 2 * F.conv_transpose1d(padded, taps, stride=2, groups=channels)
    upsampled = upsampled[..., activation.up_crop_left : -activation.up_crop_right]
    activated = snake(upsampled, *activation.act.coefficients())
    padded = F.pad(activated, (activation.down_pad_left, activation.down_pad_right), mode="replicate")
    return F.conv1d(padded, taps, stride=2, groups=channels)


@pytest.mark.parametrize("samples", [1, 2, 3, 7, 64, 1000])
def test_zero_padded_resampling_with_edge_corrections_is_replicate_padding(samples):
    activation = AntiAliasedSnake(16)
    activation.reset_buffers()
    generator = torch.Generator().manual_seed(samples)
    with torch.no_grad():
        activation.act.alpha.copy_(torch.randn(16, generator=generator) * 0.5)
        activation.act.beta.copy_(torch.randn(16, generator=generator) * 0.5)
        hidden = torch.randn(2, 16, samples, generator=generator)
        expected = _replicate_padded(activation, hidden)
        result = activation(hidden)
    assert result.shape == expected.shape == (2, 16, samples)
    # the same sums in another order: float32 rounding only, at the edges as in the middle
    assert (result - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


def test_amp_blocks_side_by_side_equal_the_blocks_one_after_the_other(tiny_speech_model):
    vocoder = tiny_speech_model.model.token2wav.code2wav_bigvgan_model
    per_stage = vocoder.blocks_per_stage
    with torch.inference_mode():
        for stage in range(len(vocoder.ups)):
            blocks = vocoder.resblocks[stage * per_stage : (stage + 1) * per_stage]
            channels = blocks[0].convs1[0].in_channels
            hidden = torch.randn(1, channels, 300, generator=torch.Generator().manual_seed(stage))
            expected = sum(block(hidden) for block in blocks)
            difference = (amp_blocks_side_by_side(blocks, hidden) - expected).abs().max().item()
            assert difference <= 1e-5 * expected.abs().max().item(), (stage, difference)
