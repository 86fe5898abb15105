"""The Talker: a Qwen2.5 decoder that reads the Thinker's states and writes codec tokens.

Its inputs live at the Thinker's width: per position, the Thinker's input embedding plus its final
hidden state (the "reply part"), plus the embedding of a codec token; `thinker_to_talker_proj`
brings them to the Talker's width. Parameter names follow the checkpoint's `talker.*`.
"""

from __future__ import annotations

import torch
from torch import nn

from omni.config import TalkerConfig
from omni.decoder import QwenDecoder
from omni.kv_cache import KVCache
from omni.linear import Linear


class Talker(nn.Module):
    def __init__(self, config: TalkerConfig) -> None:
        super().__init__()
        self.config = config
        decoder = config.decoder
        self.thinker_to_talker_proj = Linear(decoder.embedding_size, decoder.hidden_size)
        self.model = QwenDecoder(decoder)
        self.codec_head = Linear(decoder.hidden_size, decoder.vocab_size, bias=False)

    @property
    def device(self) -> torch.device:
        return self.codec_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.codec_head.weight.dtype

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codec token ids (batch, n) -> embeddings at the Thinker's width (batch, n, embedding_size)."""
        return self.model.embed_tokens(codes)

    def forward(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, cache: KVCache | None = None,
                row_caches: list[KVCache] | None = None) -> torch.Tensor:
        """inputs_embeds (batch, seq, embedding_size) at positions (3, batch, seq) -> codec logits of the
        last position (batch, vocab), fp32. row_caches: one decode step of rows that each own a cache
        (the engine's batched step; see QwenDecoder.forward_rows) instead of one shared `cache`."""
        projected = self.thinker_to_talker_proj(inputs_embeds)
        if row_caches is not None:
            hidden = self.model.forward_rows(projected, position_ids, row_caches)
        else:
            hidden = self.model(projected, position_ids, cache=cache)
        return self.codec_head(hidden[:, -1]).float()
