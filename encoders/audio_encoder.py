"""The Whisper-style audio encoder of Qwen2.5-Omni (`thinker.audio_tower.*`).

128-bin log-mel frames (100 per second) are cut into chunks of 2 * n_window frames; each chunk goes
through two convolutions (the second halves the frame rate), gets sinusoidal positions from its own
start, and attends only within itself. Each audio's frames are then average-pooled in pairs (25 per
second, one Thinker token each) and projected to the Thinker's width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from omni.encoders.segment_attention import segment_attention
from omni.config import AudioEncoderConfig
from omni.layers import activation


def conv_output_frames(mel_frames: torch.Tensor) -> torch.Tensor:
    """Frames after the stride-2 convolution."""
    return (mel_frames - 1) // 2 + 1


def audio_token_count(mel_frames: torch.Tensor | int) -> torch.Tensor | int:
    """Thinker tokens one audio of `mel_frames` log-mel frames becomes (conv stride 2, then pooling 2)."""
    return (((mel_frames - 1) // 2 + 1) - 2) // 2 + 1


def sinusoid_table(length: int, channels: int, max_timescale: float = 10000.0, device=None) -> torch.Tensor:
    log_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_increment * torch.arange(channels // 2, device=device).float())
    scaled_time = torch.arange(length, device=device)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


class AudioAttention(nn.Module):
    """Whisper-style attention within segments. key_bias: Qwen3-Omni's AuT has a bias on its key
    projection; Qwen2.5-Omni's encoder (Whisper's) has none."""

    def __init__(self, config: AudioEncoderConfig, key_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.d_model // config.num_heads
        self.k_proj = nn.Linear(config.d_model, config.d_model, bias=key_bias)
        self.v_proj = nn.Linear(config.d_model, config.d_model, bias=True)
        self.q_proj = nn.Linear(config.d_model, config.d_model, bias=True)
        self.out_proj = nn.Linear(config.d_model, config.d_model, bias=True)

    def forward(self, hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        seq = hidden.shape[0]
        q = self.q_proj(hidden).reshape(seq, self.num_heads, self.head_dim)
        k = self.k_proj(hidden).reshape(seq, self.num_heads, self.head_dim)
        v = self.v_proj(hidden).reshape(seq, self.num_heads, self.head_dim)
        out = segment_attention(q, k, v, cu_seqlens, scale=self.head_dim**-0.5)
        return self.out_proj(out.reshape(seq, -1))


class AudioEncoderLayer(nn.Module):
    def __init__(self, config: AudioEncoderConfig, key_bias: bool = False) -> None:
        super().__init__()
        self.self_attn = AudioAttention(config, key_bias)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.fc1 = nn.Linear(config.d_model, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, config.d_model)
        self.final_layer_norm = nn.LayerNorm(config.d_model)
        self.act = activation(config.activation)

    def forward(self, hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.self_attn_layer_norm(hidden), cu_seqlens)
        hidden = hidden + self.fc2(self.act(self.fc1(self.final_layer_norm(hidden))))
        if hidden.dtype == torch.float16:
            # fp16 activations of this encoder overflow on loud inputs (the reference clamps too)
            limit = torch.finfo(torch.float16).max - 1000
            hidden = hidden.clamp(-limit, limit)
        return hidden


class AudioEncoder(nn.Module):
    def __init__(self, config: AudioEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv1d(config.num_mel_bins, config.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(config.d_model, config.d_model, kernel_size=3, stride=2, padding=1)
        # Learned begin/end-of-audio embeddings ship in the checkpoint; the prompt uses the
        # <|audio_bos|>/<|audio_eos|> text tokens instead, so the forward pass never reads them.
        self.audio_bos_eos_token = nn.Embedding(2, config.output_dim)
        self.layers = nn.ModuleList(AudioEncoderLayer(config) for _ in range(config.num_layers))
        self.ln_post = nn.LayerNorm(config.d_model)
        self.proj = nn.Linear(config.d_model, config.output_dim)
        self.register_buffer(
            "positional_embedding", sinusoid_table(config.max_source_positions, config.d_model), persistent=False
        )

    def reset_buffers(self) -> None:
        device = self.proj.weight.device
        self.positional_embedding = sinusoid_table(self.config.max_source_positions, self.config.d_model, device=device)

    def forward(self, input_features: torch.Tensor, feature_lens: torch.Tensor) -> torch.Tensor:
        """input_features: (mel_bins, total_frames), the frames of all audios concatenated;
        feature_lens: (audios,) frames per audio. Returns (total tokens, output_dim)."""
        chunk_frames = 2 * self.config.n_window
        chunk_lengths: list[int] = []
        for frames in feature_lens.tolist():
            full, rest = divmod(int(frames), chunk_frames)
            chunk_lengths.extend([chunk_frames] * full + ([rest] if rest else []))
        chunks = input_features.T.split(chunk_lengths, dim=0)
        padded = nn.utils.rnn.pad_sequence(chunks, batch_first=True).transpose(1, 2).to(self.conv1.weight.dtype)
        lengths = torch.tensor(chunk_lengths, device=padded.device)
        frame_mask = (torch.arange(padded.shape[2], device=padded.device)[None, :] < lengths[:, None]).unsqueeze(1)

        hidden = F.gelu(self.conv1(padded)) * frame_mask
        hidden = F.gelu(self.conv2(hidden)).transpose(1, 2)  # (chunks, frames / 2, d_model)
        hidden = hidden + self.positional_embedding[: hidden.shape[1]].unsqueeze(0).to(hidden.dtype)
        kept = conv_output_frames(lengths)
        valid = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < kept[:, None]
        hidden = hidden[valid]  # packed (total frames / 2, d_model)

        cu_seqlens = F.pad(kept.cumsum(0), (1, 0))
        for layer in self.layers:
            hidden = layer(hidden, cu_seqlens)

        hidden = hidden[_pool_pairs(feature_lens.to(hidden.device))]  # (tokens, 2, d_model)
        hidden = (hidden[:, 0] + hidden[:, 1]) / 2
        return self.proj(self.ln_post(hidden))


def _pool_pairs(feature_lens: torch.Tensor) -> torch.Tensor:
    """Indices (tokens, 2) of the frame pairs each audio averages into one token; an odd last frame
    of an audio is dropped, as AvgPool1d(2, 2) does."""
    frames = conv_output_frames(feature_lens)
    tokens = (frames - 2) // 2 + 1
    audio_start = F.pad(frames[:-1].cumsum(0), (1, 0))
    token_start = F.pad(tokens[:-1].cumsum(0), (1, 0))
    token_audio = torch.repeat_interleave(torch.arange(len(tokens), device=frames.device), tokens)
    local = torch.arange(int(tokens.sum()), device=frames.device) - token_start[token_audio]
    first = audio_start[token_audio] + 2 * local
    return torch.stack([first, first + 1], dim=1)
