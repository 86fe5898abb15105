"""The Thinker module tree, named as the checkpoint names it (`thinker.model.*`, `thinker.lm_head`,
`thinker.audio_tower.*`, `thinker.visual.*`)."""

from __future__ import annotations

import torch
from torch import nn

from omni.encoders.audio_encoder import AudioEncoder
from omni.encoders.vision_encoder import VisionEncoder
from omni.config import ThinkerConfig
from omni.decoder import QwenDecoder
from omni.kv_cache import KVCache
from omni.linear import Linear
from omni.lm_head import FastLogits


class Thinker(nn.Module):
    def __init__(self, config: ThinkerConfig) -> None:
        super().__init__()
        self.config = config
        self.model = QwenDecoder(config.text)
        self.lm_head = Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        self.audio_tower = AudioEncoder(config.audio)
        self.visual = VisionEncoder(config.vision)
        self._logits = FastLogits(self.lm_head, self.model.layers)

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of final hidden states (rows, hidden) -> (rows, vocab) (omni.lm_head)."""
        return self._logits(hidden)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        cache: KVCache | None = None,
        token_mask: torch.Tensor | None = None,
        row_caches: list[KVCache] | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states (batch, seq, hidden); the logits are `self.logits(hidden)`.
        row_caches: one decode step of rows that each own a cache (the engine's batched step; see
        QwenDecoder.forward_rows) instead of one shared `cache`."""
        if row_caches is not None:
            return self.model.forward_rows(inputs_embeds, position_ids, row_caches)
        return self.model(inputs_embeds, position_ids, cache=cache, token_mask=token_mask)
