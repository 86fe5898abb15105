"""Whisper's 128-bin log-mel front end as Qwen3-Omni's processor calls it.

Same features as `omni.encoders.audio_features` (16 kHz, n_fft 400, hop 160, the same mel filters, the
same dynamic-range clamp), but Qwen3OmniMoeProcessor asks the feature extractor for `padding=True`:
the clips of one call are zero-padded to the longest clip, not to 300 s as Qwen2.5-Omni's processor
does. Two visible consequences, both reproduced here so that omni's features are the processor's:

- the longest clip has no zeros after it: its last frames see torch.stft's reflection of its own end;
- frame counts are batch-dependent. The extractor computes padded_samples // 160 frames and trims
  the frame mask to that, so a clip gets min(ceil(samples / 160), longest_samples // 160) frames: the
  longest clip (or any clip in the longest one's last 160-sample hop) loses its partial last frame
  unless its length is a multiple of 160.

`longest_samples` is the length of the longest clip of the processor call the clip belongs to (all
audios of one prompt batch, which the processor handles in one call).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from omni.encoders.audio_features import HOP_SAMPLES, MEL_BINS, N_FFT, AudioFeatures, _hann_window, mel_filters


def feature_frames(samples: int, longest_samples: int | None = None) -> int:
    """Valid log-mel frames of a clip of `samples` in a call whose longest clip has `longest_samples`."""
    longest = samples if longest_samples is None else longest_samples
    return min(math.ceil(samples / HOP_SAMPLES), longest // HOP_SAMPLES)


def log_mel(waveform: np.ndarray | torch.Tensor, longest_samples: int | None = None) -> torch.Tensor:
    """(samples,) float waveform at 16 kHz -> (mel_bins, feature_frames(samples, longest_samples)) float32."""
    audio = torch.as_tensor(waveform, dtype=torch.float32).reshape(-1)
    samples = audio.shape[0]
    longest = samples if longest_samples is None else longest_samples
    valid = feature_frames(samples, longest)
    if longest - samples <= N_FFT:
        # The end of the padded call is within reach of this clip's windows: pad exactly as the reference
        # does (its reflection at the end included) and drop the last frame as it does.
        audio, drop_last = F.pad(audio, (0, longest - samples)), True
    else:
        # Zeros to the end of the call: N_FFT of them cover every window reaching into the clip; the frames
        # this adds past the clip are pure padding (log10(1e-10) = -10) and cannot raise the clamp's maximum.
        audio, drop_last = F.pad(audio, (0, N_FFT)), False
    spectrum = torch.stft(audio, N_FFT, HOP_SAMPLES, window=_hann_window(N_FFT), return_complex=True)
    if drop_last:
        spectrum = spectrum[:, :-1]
    power = spectrum.abs() ** 2
    logs = torch.clamp(mel_filters() @ power, min=1e-10).log10()
    logs = torch.maximum(logs, logs.max() - 8.0)
    return ((logs + 4.0) / 4.0)[:, :valid].contiguous()


def extract_features(waveforms: list[np.ndarray | torch.Tensor]) -> AudioFeatures:
    """The clips of one processor call -> their valid frames concatenated and the frames per clip."""
    longest = max((len(waveform) for waveform in waveforms), default=0)
    clips = [log_mel(waveform, longest) for waveform in waveforms]
    return AudioFeatures(
        input_features=torch.cat(clips, dim=1) if clips else torch.zeros(MEL_BINS, 0),
        feature_lens=torch.tensor([clip.shape[1] for clip in clips], dtype=torch.long),
    )
