"""AuT, the audio encoder of Qwen3-Omni (`thinker.audio_tower.*`).

128-bin log-mel frames (100 per second) are cut into chunks of 2 * n_window frames. Each chunk is a
small (mel bins x frames) image: three stride-2 Conv2d layers shrink it 8x both ways, and `conv_out`
flattens the remaining (channels x mel) of each time step into one d_model vector. A full 100-frame
chunk gives 13 vectors (100 -> 50 -> 25 -> 13: 12.5 per second, one Thinker token each). Sinusoidal
positions restart at every chunk. The transformer layers then attend within windows of
n_window_infer mel frames (800 frames = 8 chunks = 104 tokens); ln_post, proj1, GELU and proj2 map to
the Thinker's width. There is no pooling after the layers (unlike Qwen2.5-Omni's encoder).

Chunks are convolved together after right-padding with zeros to the longest chunk of the call, as the
reference does. The padding is not masked between the convolutions, so a short last chunk sees the
second and third layers' response to that padding at its edge: its output depends on whether a longer
chunk shares the call (an audio under 2 * n_window frames alone is not padded at all). omni keeps this
to stay bit-compatible with the checkpoint's reference implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omni.encoders.audio_encoder import AudioEncoderLayer, sinusoid_table
from torch import nn

from omni.layers import activation
from omni.qwen3.config import AudioEncoderConfig


def conv_frames(frames: torch.Tensor | int) -> torch.Tensor | int:
    """Frames after one kernel-3, stride-2, padding-1 convolution."""
    return (frames - 1) // 2 + 1


def chunk_tokens(chunk_mel_frames: torch.Tensor | int) -> torch.Tensor | int:
    """Tokens one chunk of `chunk_mel_frames` (1 .. 2 * n_window) frames becomes after the three convolutions."""
    return conv_frames(conv_frames(conv_frames(chunk_mel_frames)))


def output_lengths(mel_frames: torch.Tensor | int, n_window: int = 50) -> torch.Tensor | int:
    """Tokens an audio of `mel_frames` log-mel frames becomes: 13 per full chunk of 2 * n_window frames
    plus the tail's. (The reference's `_get_feat_extract_output_lengths` writes the 13 as a literal, so it
    only agrees with this for the published n_window of 50.)"""
    chunk = 2 * n_window
    tail = mel_frames % chunk
    # (tail - 1) // 2 + 1 is 0 for an empty tail, and stays 0 through the next two layers.
    return chunk_tokens(tail) + (mel_frames // chunk) * chunk_tokens(chunk)


def chunk_lengths(feature_lens: torch.Tensor, n_window: int) -> torch.Tensor:
    """(chunks,) mel frames of each conv chunk, audio after audio: full chunks of 2 * n_window, then the tail."""
    chunk = 2 * n_window
    counts = (feature_lens + chunk - 1) // chunk
    lengths = torch.full((int(counts.sum()),), chunk, dtype=torch.long)
    last = counts.cumsum(0) - 1
    has_chunks = counts > 0
    tails = feature_lens - (counts - 1) * chunk
    lengths[last[has_chunks]] = tails[has_chunks]
    return lengths


def window_cu_seqlens(feature_lens: torch.Tensor, n_window: int, n_window_infer: int) -> torch.Tensor:
    """Attention segments (cumulative token counts): each audio's tokens in windows of n_window_infer mel
    frames' worth (n_window_infer // (2 * n_window) chunks of 13 tokens), the last window of an audio shorter.

    The reference sizes the window from the longest chunk of the call; when no chunk is full that longest
    chunk is the audio itself, so every audio is one window either way and the two sizings agree."""
    window_tokens = chunk_tokens(2 * n_window) * (n_window_infer // (2 * n_window))
    tokens = output_lengths(feature_lens, n_window)
    full, rest = tokens // window_tokens, tokens % window_tokens
    windows = torch.stack([full, (rest > 0).long()], dim=1).flatten()
    sizes = torch.stack([torch.full_like(rest, window_tokens), rest], dim=1).flatten()
    lengths = torch.repeat_interleave(sizes, windows)
    return F.pad(lengths.cumsum(0), (1, 0))


class AudioEncoder(nn.Module):
    def __init__(self, config: AudioEncoderConfig) -> None:
        super().__init__()
        if config.n_window_infer < 2 * config.n_window:
            raise ValueError(
                f"n_window_infer ({config.n_window_infer} mel frames) must hold at least one conv chunk "
                f"(2 * n_window = {2 * config.n_window} frames)"
            )
        self.config = config
        channels = config.downsample_hidden_size
        self.conv2d1 = nn.Conv2d(1, channels, 3, 2, padding=1)
        self.conv2d2 = nn.Conv2d(channels, channels, 3, 2, padding=1)
        self.conv2d3 = nn.Conv2d(channels, channels, 3, 2, padding=1)
        self.conv_out = nn.Linear(channels * chunk_tokens(config.num_mel_bins), config.d_model, bias=False)
        # Qwen2.5-Omni's encoder layer, with AuT's key-projection bias
        self.layers = nn.ModuleList(AudioEncoderLayer(config, key_bias=True) for _ in range(config.num_layers))
        self.ln_post = nn.LayerNorm(config.d_model)
        self.proj1 = nn.Linear(config.d_model, config.d_model)
        self.act = activation(config.activation)
        self.proj2 = nn.Linear(config.d_model, config.output_dim)
        self.register_buffer(
            "positional_embedding", sinusoid_table(config.max_source_positions, config.d_model), persistent=False
        )

    def reset_buffers(self) -> None:
        """Recompute the non-persistent position table (after building the module on the meta device)."""
        device = self.proj2.weight.device
        self.positional_embedding = sinusoid_table(self.config.max_source_positions, self.config.d_model, device=device)

    def output_lengths(self, mel_frames: torch.Tensor | int) -> torch.Tensor | int:
        return output_lengths(mel_frames, self.config.n_window)

    def forward(self, input_features: torch.Tensor, feature_lens: torch.Tensor) -> torch.Tensor:
        """input_features: (mel_bins, total_frames), the frames of all audios concatenated;
        feature_lens: (audios,) frames per audio. Returns (sum of output_lengths(feature_lens), output_dim)."""
        config = self.config
        feature_lens = feature_lens.detach().to("cpu", torch.long)
        lengths = chunk_lengths(feature_lens, config.n_window)
        chunks = input_features.T.split(lengths.tolist(), dim=0)
        # (chunks, 1, mel_bins, longest chunk): one single-channel image per chunk
        padded = nn.utils.rnn.pad_sequence(chunks, batch_first=True).transpose(1, 2).unsqueeze(1)
        padded = padded.to(self.conv2d1.weight.dtype)
        # conv_chunksize bounds the memory of the first convolution's output (480 channels at half resolution)
        convolved = torch.cat([self._convolve(group) for group in padded.split(config.conv_chunksize, dim=0)])
        count, channels, mel, frames = convolved.shape
        hidden = self.conv_out(convolved.permute(0, 3, 1, 2).reshape(count, frames, channels * mel))
        hidden = hidden + self.positional_embedding[:frames].unsqueeze(0).to(hidden.dtype)
        kept = chunk_tokens(lengths).to(hidden.device)
        valid = torch.arange(frames, device=hidden.device)[None, :] < kept[:, None]
        hidden = hidden[valid]  # packed (tokens, d_model), audio after audio

        cu_seqlens = window_cu_seqlens(feature_lens, config.n_window, config.n_window_infer).to(hidden.device)
        for layer in self.layers:
            hidden = layer(hidden, cu_seqlens)
        return self.proj2(self.act(self.proj1(self.ln_post(hidden))))

    def _convolve(self, chunks: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(self.conv2d1(chunks))
        hidden = F.gelu(self.conv2d2(hidden))
        return F.gelu(self.conv2d3(hidden))
