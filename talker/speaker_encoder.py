"""ECAPA-TDNN speaker encoder of the Token2Wav DiT: a voice's reference mel -> one conditioning vector.

(Desplanques et al., 2020: TDNN, SE-Res2Net blocks, multi-layer aggregation, attentive statistics
pooling.) Parameter names follow the checkpoint's `...input_embed.spk_encoder.*`.
"""

from __future__ import annotations

import torch
from torch import nn

from omni.config import DiTConfig

STATS_EPS = 1e-12


class TimeDelayBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, padding="same",
                              padding_mode="reflect")

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(hidden))


class Res2NetBlock(nn.Module):
    """Channels split in `scale` groups; group i (i >= 1) is convolved after adding group i-1's output."""

    def __init__(self, channels: int, scale: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.scale = scale
        width = channels // scale
        self.blocks = nn.ModuleList(TimeDelayBlock(width, width, kernel_size, dilation) for _ in range(scale - 1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        groups = torch.chunk(hidden, self.scale, dim=1)
        outputs = [groups[0]]
        previous = None
        for block, group in zip(self.blocks, groups[1:]):
            previous = block(group if previous is None else group + previous)
            outputs.append(previous)
        return torch.cat(outputs, dim=1)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, se_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(channels, se_channels, 1)
        self.conv2 = nn.Conv1d(se_channels, channels, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.conv2(torch.relu(self.conv1(hidden.mean(dim=2, keepdim=True)))))
        return hidden * gate


class SERes2NetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, scale: int, se_channels: int, kernel_size: int,
                 dilation: int) -> None:
        super().__init__()
        self.tdnn1 = TimeDelayBlock(in_channels, out_channels, 1, 1)
        self.res2net_block = Res2NetBlock(out_channels, scale, kernel_size, dilation)
        self.tdnn2 = TimeDelayBlock(out_channels, out_channels, 1, 1)
        self.se_block = SqueezeExcitation(out_channels, se_channels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(hidden))))


def _weighted_stats(hidden: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = (weights * hidden).sum(dim=2)
    variance = (weights * (hidden - mean.unsqueeze(2)).pow(2)).sum(dim=2)
    return mean, variance.clamp(min=STATS_EPS).sqrt()


class AttentiveStatsPooling(nn.Module):
    """Mean and std over time, weighted by an attention that sees each frame and the global stats."""

    def __init__(self, channels: int, attention_channels: int) -> None:
        super().__init__()
        self.tdnn = TimeDelayBlock(channels * 3, attention_channels, 1, 1)
        self.conv = nn.Conv1d(attention_channels, channels, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        frames = hidden.shape[-1]
        uniform = torch.full((hidden.shape[0], 1, frames), 1.0 / frames, dtype=hidden.dtype, device=hidden.device)
        mean, std = _weighted_stats(hidden, uniform)
        context = torch.cat([hidden, mean.unsqueeze(2).expand_as(hidden), std.unsqueeze(2).expand_as(hidden)], dim=1)
        attention = torch.softmax(self.conv(torch.tanh(self.tdnn(context))), dim=2)
        mean, std = _weighted_stats(hidden, attention)
        return torch.cat([mean, std], dim=1).unsqueeze(2)


class SpeakerEncoder(nn.Module):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        channels, kernels, dilations = config.enc_channels, config.enc_kernel_sizes, config.enc_dilations
        self.blocks = nn.ModuleList([TimeDelayBlock(config.mel_dim, channels[0], kernels[0], dilations[0])])
        for i in range(1, len(channels) - 1):
            self.blocks.append(SERes2NetBlock(channels[i - 1], channels[i], config.enc_res2net_scale,
                                              config.enc_se_channels, kernels[i], dilations[i]))
        self.mfa = TimeDelayBlock(channels[-1], channels[-1], kernels[-1], dilations[-1])
        self.asp = AttentiveStatsPooling(channels[-1], config.enc_attention_channels)
        self.fc = nn.Conv1d(channels[-1] * 2, config.enc_dim, 1)

    def forward(self, reference_mel: torch.Tensor) -> torch.Tensor:
        """reference_mel (batch, frames, mel_dim) -> (batch, enc_dim)."""
        hidden = reference_mel.transpose(1, 2)
        outputs = []
        for block in self.blocks:
            hidden = block(hidden)
            outputs.append(hidden)
        hidden = self.mfa(torch.cat(outputs[1:], dim=1))
        return self.fc(self.asp(hidden)).squeeze(-1)
