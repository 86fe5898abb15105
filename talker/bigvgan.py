"""BigVGAN vocoder of Qwen2.5-Omni's Token2Wav: mel (80 bins, 100 frames/s) -> 24 kHz waveform.

Anti-aliased periodic activations (snake-beta between 2x up- and down-sampling with Kaiser-windowed
sinc filters) inside AMP residual blocks, after transposed-convolution upsampling by 240 in all.
Parameter names follow the checkpoint's `token2wav.code2wav_bigvgan_model.*`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from omni.config import BigVGANConfig

MIN_DB = -115.0  # the mel floor the vocoder was trained with
DB_OFFSET = -20.0  # reference level subtracted from the dB mel before normalising


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

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        frequency = self.alpha.exp()[None, :, None]
        magnitude = 1.0 / (self.beta.exp()[None, :, None] + 1e-9)
        return hidden + magnitude * torch.sin(hidden * frequency).pow(2)


class AntiAliasedSnake(nn.Module):
    """Snake-beta evaluated at twice the rate: upsample 2x, activate, low-pass and downsample 2x."""

    ratio = 2
    kernel_size = 12

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.act = SnakeBeta(channels)
        self.register_buffer("filter", self._filter(), persistent=False)
        # transposed-conv upsampling: replicate-pad by `pad` input samples, then crop the filter's tails
        self.up_pad = self.kernel_size // self.ratio - 1
        self.up_crop_left = self.up_pad * self.ratio + (self.kernel_size - self.ratio) // 2
        self.up_crop_right = self.up_pad * self.ratio + (self.kernel_size - self.ratio + 1) // 2
        self.down_pad_left = self.kernel_size // 2 - 1  # even kernel
        self.down_pad_right = self.kernel_size // 2

    def _filter(self, device=None) -> torch.Tensor:
        ratio = self.ratio
        return kaiser_sinc_lowpass(0.5 / ratio, 0.6 / ratio, self.kernel_size).to(device)

    def reset_buffers(self) -> None:
        self.filter = self._filter(self.act.alpha.device)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        channels = hidden.shape[1]
        taps = self.filter.expand(channels, -1, -1)
        hidden = F.pad(hidden, (self.up_pad, self.up_pad), mode="replicate")
        hidden = self.ratio * F.conv_transpose1d(hidden, taps, stride=self.ratio, groups=channels)
        hidden = hidden[..., self.up_crop_left : -self.up_crop_right]
        hidden = self.act(hidden)
        hidden = F.pad(hidden, (self.down_pad_left, self.down_pad_right), mode="replicate")
        return F.conv1d(hidden, taps, stride=self.ratio, groups=channels)


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
            hidden = sum(block(hidden) for block in blocks) / self.blocks_per_stage
        waveform = self.conv_post(self.activation_post(hidden))
        return waveform.clamp(-1.0, 1.0)[:, 0]
