"""Whisper's 128-bin log-mel front end in torch: 16 kHz, 25 ms Hann window (n_fft 400), 10 ms hop.

A clip of n samples gives ceil(n / 160) valid frames, computed exactly as the transformers
feature extractor computes them when it pads the clip with zeros to its 300 s window — without
padding to 300 s here. Two details make that exact: the frames near the end see zeros after the
clip (not the reflection torch.stft would add at the clip's own end), and the dynamic-range clamp
(max - 8, in log10 units) uses the maximum over every frame the clip reaches into, including the few
past the valid count that the reference computes and then masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

SAMPLE_RATE_HZ = 16000
N_FFT = 400
HOP_SAMPLES = 160
MEL_BINS = 128
WINDOW_SAMPLES = 300 * SAMPLE_RATE_HZ  # the reference pads every clip to this (chunk_length 300 s)


@dataclass
class AudioFeatures:
    input_features: torch.Tensor  # (mel_bins, total_frames) float32: the valid frames of all clips, concatenated
    feature_lens: torch.Tensor  # (clips,) long: frames per clip

    def padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(clips, mel_bins, longest) features right-padded with zeros and the (clips, longest) frame mask,
        the layout of the reference's input_features / feature_attention_mask (without 300 s padding)."""
        lens = self.feature_lens.tolist()
        longest = max(lens) if lens else 0
        out = self.input_features.new_zeros(len(lens), self.input_features.shape[0], longest)
        mask = torch.zeros(len(lens), longest, dtype=torch.long)
        for row, clip in enumerate(self.input_features.split(lens, dim=1)):
            out[row, :, : clip.shape[1]] = clip
            mask[row, : clip.shape[1]] = 1
        return out, mask


def feature_frames(samples: int) -> int:
    """Valid log-mel frames of a clip of `samples` samples."""
    return math.ceil(samples / HOP_SAMPLES)


@lru_cache(maxsize=4)
def mel_filters(mel_bins: int = MEL_BINS, n_fft: int = N_FFT, sample_rate_hz: int = SAMPLE_RATE_HZ) -> torch.Tensor:
    """(mel_bins, n_fft // 2 + 1) Slaney-scale, Slaney-normalised triangular filters from 0 to 8 kHz
    (librosa's `filters.mel` defaults, which Whisper uses), computed in float64, returned float32."""
    bins = n_fft // 2 + 1
    fft_hz = torch.linspace(0, sample_rate_hz // 2, bins, dtype=torch.float64)
    mel_edges = torch.linspace(_hz_to_mel(0.0), _hz_to_mel(8000.0), mel_bins + 2, dtype=torch.float64)
    edges_hz = _mel_to_hz(mel_edges)
    widths = edges_hz[1:] - edges_hz[:-1]
    offsets = edges_hz[None, :] - fft_hz[:, None]  # (bins, mel_bins + 2)
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    triangles = torch.clamp(torch.minimum(rising, falling), min=0.0)  # (bins, mel_bins)
    area = 2.0 / (edges_hz[2:] - edges_hz[:-2])
    return (triangles * area[None, :]).T.contiguous().to(torch.float32)


def log_mel(waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(samples,) float waveform at 16 kHz -> (mel_bins, ceil(samples / 160)) float32 log-mel."""
    audio = torch.as_tensor(waveform, dtype=torch.float32).reshape(-1)
    samples = audio.shape[0]
    valid = feature_frames(samples)
    # Zeros after the clip, as in the reference's 300 s window: N_FFT of them cover every window that
    # reaches into the clip (each extends N_FFT / 2 samples either side of its centre).
    if samples + N_FFT < WINDOW_SAMPLES:
        audio, drop_last = F.pad(audio, (0, N_FFT)), False
    else:  # the clip fills the reference's window: pad to it and drop its last frame as it does
        audio, drop_last = F.pad(audio, (0, max(0, WINDOW_SAMPLES - samples))), True
    spectrum = torch.stft(audio, N_FFT, HOP_SAMPLES, window=_hann_window(N_FFT), return_complex=True)
    if drop_last:
        spectrum = spectrum[:, :-1]
    power = spectrum.real.square() + spectrum.imag.square()
    mel = mel_filters() @ power
    logs = torch.clamp(mel, min=1e-10).log10()
    # Frames past the ones computed here are pure padding (log10(1e-10) = -10), which can only raise
    # the maximum when everything is -10 anyway.
    logs = torch.maximum(logs, logs.max() - 8.0)
    return ((logs + 4.0) / 4.0)[:, :valid].contiguous()


def extract_features(waveforms: list[np.ndarray | torch.Tensor]) -> AudioFeatures:
    clips = [log_mel(waveform) for waveform in waveforms]
    return AudioFeatures(
        input_features=torch.cat(clips, dim=1) if clips else torch.zeros(MEL_BINS, 0),
        feature_lens=torch.tensor([clip.shape[1] for clip in clips], dtype=torch.long),
    )


def _hz_to_mel(hz):
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    if isinstance(hz, torch.Tensor):
        linear = 3.0 * hz / 200.0
        log = 15.0 + torch.log(torch.clamp(hz, min=1e-9) / 1000.0) * (27.0 / math.log(6.4))
        return torch.where(hz >= 1000.0, log, linear)
    return 3.0 * hz / 200.0 if hz < 1000.0 else 15.0 + math.log(hz / 1000.0) * (27.0 / math.log(6.4))


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    linear = 200.0 * mel / 3.0
    log = 1000.0 * torch.exp((math.log(6.4) / 27.0) * (mel - 15.0))
    return torch.where(mel >= 15.0, log, linear)


@lru_cache(maxsize=2)
def _hann_window(length: int) -> torch.Tensor:
    return torch.hann_window(length)
