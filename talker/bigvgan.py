"""BigVGAN vocoder of Qwen2.5-Omni's Token2Wav: mel (80 bins, 100 frames/s) -> 24 kHz waveform.

Anti-aliased periodic activations (snake-beta between 2x up- and down-sampling with Kaiser-windowed
sinc filters) inside AMP residual blocks, after transposed-convolution upsampling by 240 in all.
Parameter names follow the checkpoint's `token2wav.code2wav_bigvgan_model.*`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from omni.config import BigVGANConfig

MIN_DB = -115.0  # the mel floor the vocoder was trained with
DB_OFFSET = -20.0  # reference level subtracted from the dB mel before normalising
# When a stage's parallel AMP blocks run side by side (`amp_blocks_side_by_side`, same results):
# while one block's activations are small, where fewer operations pay (a streaming window of ~100
# frames or less), and at 8 channels or fewer, where oneDNN's depthwise kernels (8 or 16 channels
# per vector) waste most of each vector on one block. Larger blocks run one after the other: three
# side by side (several MB) no longer fit the caches and ran up to 2x slower for 800 frames.
SIDE_BY_SIDE_ELEMENTS = 2**17
SIDE_BY_SIDE_CHANNELS = 8


def kaiser_sinc_lowpass(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """A Kaiser-windowed sinc low-pass filter (1, 1, kernel_size), unit DC gain (BigVGAN's filter)."""
    half = kernel_size // 2
    attenuation_db = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation_db > 50.0:
        beta = 0.1102 * (attenuation_db - 8.7)
    elif attenuation_db >= 21.0:
        beta = 0.5842 * (attenuation_db - 21) ** 0.4 + 0.07886 * (attenuation_db - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, beta=beta, periodic=False, dtype=torch.float32)
    if kernel_size % 2 == 0:
        taps = torch.arange(-half, half) + 0.5
    else:
        taps = torch.arange(kernel_size) - half
    if cutoff == 0:
        return torch.zeros((1, 1, kernel_size), dtype=torch.float32)
    response = 2 * cutoff * window * torch.sinc(2 * cutoff * taps)
    return (response / response.sum()).view(1, 1, kernel_size)


class SnakeBeta(nn.Module):
    """x + sin^2(x e^alpha) / e^beta, per channel (log-scale parameters, as trained)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(frequency e^alpha, magnitude 1 / e^beta), each (channels,)."""
        return self.alpha.exp(), 1.0 / (self.beta.exp() + 1e-9)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return snake(hidden, *self.coefficients())


def snake(hidden: torch.Tensor, frequency: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """hidden (batch, channels, samples) + magnitude * sin^2(hidden * frequency), per channel."""
    # one pass per operation, all but the first in place: no temporaries (each pass is a parallel region)
    return (hidden * frequency[:, None]).sin_().square_().mul_(magnitude[:, None]).add_(hidden)


class AntiAliasedSnake(nn.Module):
    """Snake-beta evaluated at twice the rate: upsample 2x, activate, low-pass and downsample 2x.

    BigVGAN pads both resampling filters' inputs by replicating the edge samples (`_resample`
    with replicate=True, the checkpoint's definition). Here the filters run with zero padding
    inside the convolution and the few outputs the padding reaches are then corrected by the edge
    sample times the taps that fell on the padding (`up_edges`, `down_edges`): the same sums,
    without writing a padded copy of every activation (two full passes over the samples each).
    """

    ratio = 2
    kernel_size = 12
    # transposed-conv upsampling: replicate-pad by `up_pad` input samples, then crop the filter's tails
    up_pad = kernel_size // ratio - 1
    up_crop_left = up_pad * ratio + (kernel_size - ratio) // 2
    up_crop_right = up_pad * ratio + (kernel_size - ratio + 1) // 2
    down_pad_left = kernel_size // 2 - 1  # even kernel
    down_pad_right = kernel_size // 2  # the last padded sample is never read (stride 2, even input)

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.act = SnakeBeta(channels)
        filters = self._filters()
        for name, tensor in zip(("up_taps", "down_taps", "up_edges", "down_edges"), filters):
            self.register_buffer(name, tensor, persistent=False)

    def _filters(self, device=None) -> tuple[torch.Tensor, ...]:
        """Per-channel taps (channels, 1, kernel_size) of the upsampling, with its gain `ratio`
        folded in (exact: a power of two), and of the downsampling; then for each, the correction
        (2, outputs) that replicate padding adds over zero padding at the (first, last) outputs,
        per unit of the (first, last) input sample."""
        lowpass = kaiser_sinc_lowpass(0.5 / self.ratio, 0.6 / self.ratio, self.kernel_size)
        up_taps, down_taps = self.ratio * lowpass, lowpass
        # how many outputs at each end the padding reaches: those of the edge sample's nearest copy
        up_reach = self.kernel_size - (self.up_crop_left - self.ratio * self.up_pad) - self.ratio
        down_reach = (self.down_pad_left - 1) // self.ratio + 1
        edges = []
        for step, taps, reach in (("up", up_taps, up_reach), ("down", down_taps, down_reach)):
            impulses = torch.zeros(2, 1, 8 * self.kernel_size)
            impulses[0, 0, 0] = impulses[1, 0, -1] = 1.0
            padding = self._resample(step, impulses, taps, replicate=True) - self._resample(step, impulses, taps)
            edges.append(torch.stack([padding[0, 0, :reach], padding[1, 0, -reach:]]))
        return tuple(t.to(device) for t in (up_taps.expand(self.channels, -1, -1).contiguous(),
                                             down_taps.expand(self.channels, -1, -1).contiguous(), *edges))

    def reset_buffers(self) -> None:
        self.up_taps, self.down_taps, self.up_edges, self.down_edges = self._filters(self.act.alpha.device)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._activate(hidden, *self.act.coefficients(), self.up_taps, self.down_taps)

    @classmethod
    def side_by_side(cls, activations: Sequence[AntiAliasedSnake], hidden: torch.Tensor) -> torch.Tensor:
        """Several activations at once, on their channels stacked in order in `hidden`. Every step
        is per channel, so each gets exactly its own result, and each step is one operation."""
        frequency, magnitude = (torch.cat(parts) for parts in zip(*(a.act.coefficients() for a in activations)))
        first = activations[0]
        return first._activate(hidden, frequency, magnitude, torch.cat([a.up_taps for a in activations]),
                               torch.cat([a.down_taps for a in activations]))

    def _activate(self, hidden: torch.Tensor, frequency: torch.Tensor, magnitude: torch.Tensor,
                  up_taps: torch.Tensor, down_taps: torch.Tensor) -> torch.Tensor:
        upsampled = _add_edges(self._resample("up", hidden, up_taps), hidden, self.up_edges)
        activated = snake(upsampled, frequency, magnitude)
        return _add_edges(self._resample("down", activated, down_taps), activated, self.down_edges)

    @classmethod
    def _resample(cls, step: str, hidden: torch.Tensor, taps: torch.Tensor, replicate: bool = False) -> torch.Tensor:
        """One filter ("up" or "down") over hidden (batch, channels, samples), its input padded with
        replicated edge samples (BigVGAN's definition) or with zeros (inside the convolution)."""
        channels = hidden.shape[1]
        if step == "up":
            if replicate:
                padded = F.pad(hidden, (cls.up_pad, cls.up_pad), mode="replicate")
                upsampled = F.conv_transpose1d(padded, taps, stride=cls.ratio, groups=channels)
                return upsampled[..., cls.up_crop_left : -cls.up_crop_right]
            # crops equal (even kernel): the transposed convolution's own padding crops them
            return F.conv_transpose1d(hidden, taps, stride=cls.ratio, padding=cls.up_crop_left - cls.ratio * cls.up_pad,
                                      groups=channels)
        if replicate:
            padded = F.pad(hidden, (cls.down_pad_left, cls.down_pad_right), mode="replicate")
            return F.conv1d(padded, taps, stride=cls.ratio, groups=channels)
        return F.conv1d(hidden, taps, stride=cls.ratio, padding=cls.down_pad_left, groups=channels)


def _add_edges(filtered: torch.Tensor, source: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """filtered (zero-padded) + what replicate padding adds: the first / last source sample times
    the (first, last) edge responses (2, reach), over at most all of filtered's samples."""
    reach = min(edges.shape[1], filtered.shape[-1])
    filtered[..., :reach].addcmul_(source[..., :1], edges[0, :reach])
    filtered[..., filtered.shape[-1] - reach :].addcmul_(source[..., -1:], edges[1, edges.shape[1] - reach :])
    return filtered


class AMPBlock(nn.Module):
    """Three (activation, dilated conv, activation, conv) residual units."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size - 1) * d // 2) for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations
        )
        self.activations = nn.ModuleList(AntiAliasedSnake(channels) for _ in range(2 * len(dilations)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for index, (conv1, conv2) in enumerate(zip(self.convs1, self.convs2)):
            residual = hidden
            hidden = conv1(self.activations[2 * index](hidden))
            hidden = conv2(self.activations[2 * index + 1](hidden))
            hidden = residual + hidden
        return hidden


def amp_blocks_side_by_side(blocks: Sequence[AMPBlock], hidden: torch.Tensor) -> torch.Tensor:
    """sum(block(hidden) for block in blocks), for the parallel AMP blocks of one stage, computed
    side by side on one tensor of len(blocks) x channels: their activations (per-channel filters
    and snakes, most of the vocoder's operations) then take one operation per step for all blocks;
    only the convolutions, whose kernels differ, run block by block. The results are the same;
    the vocoder makes about half as many (and larger) operations, which matters most in short
    streaming windows, where an operation's fixed cost and thread synchronisation weigh most."""
    channels = hidden.shape[1]
    lanes = [slice(i * channels, (i + 1) * channels) for i in range(len(blocks))]
    wide = hidden.repeat(1, len(blocks), 1)
    for unit in range(len(blocks[0].convs1)):
        residual = wide
        for step, convs in ((2 * unit, [b.convs1[unit] for b in blocks]), (2 * unit + 1, [b.convs2[unit] for b in blocks])):
            activated = AntiAliasedSnake.side_by_side([b.activations[step] for b in blocks], wide)
            wide = torch.cat([conv(activated[:, lane]) for conv, lane in zip(convs, lanes)], dim=1)
        wide = residual + wide
    total = wide[:, lanes[0]]
    for lane in lanes[1:]:
        total = total + wide[:, lane]
    return total


class BigVGAN(nn.Module):
    def __init__(self, config: BigVGANConfig) -> None:
        super().__init__()
        self.config = config
        channels = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.mel_dim, channels, 7, 1, padding=3)
        # one ModuleList per stage: the checkpoint names the layers `ups.N.0`
        self.ups = nn.ModuleList(
            nn.ModuleList([nn.ConvTranspose1d(channels // 2**i, channels // 2 ** (i + 1), k, rate, padding=(k - rate) // 2)])
            for i, (rate, k) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes))
        )
        self.blocks_per_stage = len(config.resblock_kernel_sizes)
        self.resblocks = nn.ModuleList(
            AMPBlock(channels // 2 ** (i + 1), k, tuple(d))
            for i in range(len(config.upsample_rates))
            for k, d in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes)
        )
        final_channels = channels // 2 ** len(config.upsample_rates)
        self.activation_post = AntiAliasedSnake(final_channels)
        self.conv_post = nn.Conv1d(final_channels, 1, 7, 1, padding=3, bias=False)

    @property
    def samples_per_mel_frame(self) -> int:
        return self.config.samples_per_mel_frame

    @staticmethod
    def normalise_mel(log_mel: torch.Tensor) -> torch.Tensor:
        """Natural-log mel -> dB relative to DB_OFFSET, scaled to [-1, 1] over [MIN_DB, 0] dB."""
        floor = math.exp(MIN_DB / 20.0 * math.log(10))
        decibels = 20 * torch.log10(log_mel.exp().clamp(min=floor)) + DB_OFFSET
        return torch.clamp(2 * (decibels - MIN_DB) / (-MIN_DB) - 1, -1.0, 1.0)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        """log_mel (batch, mel_dim, frames) -> waveform (batch, frames * samples_per_mel_frame) in [-1, 1]."""
        hidden = self.conv_pre(self.normalise_mel(log_mel))
        for stage, (upsample,) in enumerate(self.ups):
            hidden = upsample(hidden)
            blocks = self.resblocks[stage * self.blocks_per_stage : (stage + 1) * self.blocks_per_stage]
            channels, samples = hidden.shape[1:]
            if channels <= SIDE_BY_SIDE_CHANNELS or channels * samples <= SIDE_BY_SIDE_ELEMENTS:
                hidden = amp_blocks_side_by_side(blocks, hidden) / self.blocks_per_stage
            else:
                hidden = sum(block(hidden) for block in blocks) / self.blocks_per_stage
        waveform = self.conv_post(self.activation_post(hidden))
        return waveform.clamp(-1.0, 1.0)[:, 0]
