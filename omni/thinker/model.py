"""The Thinker module tree, named as the checkpoint names it (`thinker.model.*`, `thinker.lm_head`,
`thinker.audio_tower.*`, `thinker.visual.*`)."""

from __future__ import annotations

import threading

import torch
from torch import nn

from omni.encoders.audio_encoder import AudioEncoder
from omni.encoders.vision_encoder import VisionEncoder
from omni.config import ThinkerConfig
from omni.decoder import QwenDecoder
from omni.kv_cache import KVCache


_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise") and hasattr(
    torch.ops.mkldnn, "_reorder_linear_weight"
)


class Thinker(nn.Module):
    def __init__(self, config: ThinkerConfig) -> None:
        super().__init__()
        self.config = config
        self.model = QwenDecoder(config.text)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        # Kept column-major (same values, names and shape as the checkpoint's): for this tall, thin
        # matrix PyTorch's CPU product with one activation row streams 1.4-2x faster in that layout,
        # and the vocabulary projection is the largest single read of every decoding step.
        self.lm_head.weight = nn.Parameter(self.lm_head.weight.detach().t().contiguous().t())
        self.audio_tower = AudioEncoder(config.audio)
        self.visual = VisionEncoder(config.vision)
        self._packed_lm_head: torch.Tensor | None = None
        self._packing = threading.Lock()

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of final hidden states (rows, hidden) -> (rows, vocab).

        Several rows at once on the CPU in fp32 go through oneDNN's prepacked inner product: MKL's
        general kernel runs a (8 x 256) @ (256 x 152064) product at about 40 GFLOP/s here and
        oneDNN's about 2.3x faster (bench/eval.py). The packed copy of the weight is made on the
        first batched call only, so single-conversation use never pays its memory."""
        weight = self.lm_head.weight
        if hidden.shape[0] > 1 and hidden.device.type == "cpu" and weight.dtype == torch.float32 and _ONEDNN:
            if self._packed_lm_head is None:
                with self._packing:
                    if self._packed_lm_head is None:
                        self._packed_lm_head = torch.ops.mkldnn._reorder_linear_weight(weight, 8)
            return torch.ops.mkldnn._linear_pointwise(hidden.contiguous(), self._packed_lm_head, None, "none", [], "")
        return self.lm_head(hidden)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        cache: KVCache | None = None,
        token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states (batch, seq, hidden); the logits are `self.lm_head(hidden)`."""
        return self.model(inputs_embeds, position_ids, cache=cache, token_mask=token_mask)
