"""The Qwen3-Omni Talker: a sparse-MoE Qwen3 decoder that writes codec group 0 of each frame.

Unlike Qwen2.5-Omni's Talker it works at its own width: the Thinker's states come in through two
projections (`text_projection` for Thinker input embeddings of text tokens, `hidden_projection` for a
Thinker hidden state at media positions), and the codec tokens are embedded by `model.codec_embedding`.
Each frame's other codec groups come from the `code_predictor`. The decoder uses interleaved M-RoPE
(3-D positions) like the Thinker.

Parameter names follow the checkpoint's `talker.*`: `model.codec_embedding`, `model.layers.N...`,
`model.norm`, `codec_head`, `text_projection.linear_fc1/2`, `hidden_projection.linear_fc1/2`,
`code_predictor.*`.
"""

from __future__ import annotations

import torch
from torch import nn

from omni.kv_cache import KVCache
from omni.layers import activation
from omni.linear import Linear
from omni.qwen3.config import TalkerConfig
from omni.qwen3.decoder import Qwen3Decoder
from omni.talker.qwen3.code_predictor import CodePredictor


class ResizeMLP(nn.Module):
    """Thinker width -> Talker width through the Talker's dense intermediate size (with bias)."""

    def __init__(self, in_size: int, intermediate_size: int, out_size: int, act: str) -> None:
        super().__init__()
        self.linear_fc1 = Linear(in_size, intermediate_size, bias=True)
        self.linear_fc2 = Linear(intermediate_size, out_size, bias=True)
        self.act = activation(act)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(self.act(self.linear_fc1(hidden)))


class Talker(nn.Module):
    def __init__(self, config: TalkerConfig) -> None:
        super().__init__()
        self.config = config
        text = config.text
        self.model = Qwen3Decoder(text, embed=False)
        # The checkpoint names the Talker's token table `model.codec_embedding` (there is no embed_tokens).
        self.model.codec_embedding = nn.Embedding(text.vocab_size, text.hidden_size)
        self.codec_head = Linear(text.hidden_size, text.vocab_size, bias=False)
        self.text_projection = ResizeMLP(config.thinker_hidden_size, text.intermediate_size, text.hidden_size,
                                         text.hidden_act)
        self.hidden_projection = ResizeMLP(config.thinker_hidden_size, text.intermediate_size, text.hidden_size,
                                           text.hidden_act)
        self.code_predictor = CodePredictor(config.code_predictor)

    @property
    def device(self) -> torch.device:
        return self.codec_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.codec_head.weight.dtype

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codec group-0 ids (batch, n) -> embeddings (batch, n, hidden)."""
        return self.model.codec_embedding(codes)

    def new_cache(self, batch_size: int, capacity: int) -> KVCache:
        return self.model.new_cache(batch_size, capacity)

    def forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, cache: KVCache | None = None
                ) -> torch.Tensor:
        """inputs_embeds (batch, seq, hidden) at positions (3, batch, seq) -> final-norm hidden states
        (batch, seq, hidden); `codec_logits` turns them into group-0 logits and the code predictor reads
        them as they are."""
        return self.model(inputs_embeds, position_ids, cache=cache)

    def codec_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.codec_head(hidden).float()
