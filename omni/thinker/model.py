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
        # see logits(): a packed copy only pays where the projection is most of a decoding step
        decoder_weights = sum(p.numel() for p in self.model.layers.parameters())
        self._packs_lm_head = self.lm_head.weight.numel() >= decoder_weights
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

        oneDNN's prepacked inner product needs its own copy of the weight (4 x vocab x hidden bytes:
        148 MB at hidden 256, 1.2 GB at 3B's 2048, 2.1 GB at 7B's 3584), so it is used only where it
        pays: for several rows at once, on the CPU in fp32, and only when this projection holds at
        least as many weights as all decoder layers together (the tiny and small presets; 8-11% at
        3B and 7B). bench/lm_head.py, fp32, vocab 152064, medians:
        - one row: the plain product over the column-major weight is faster at every width on a
          quiet Xeon with AVX-512 and AMX (packed 0.74-0.89x, 2 and 16 threads) and no better on a
          busy 2-core EPYC with AVX-512 (0.8-1.3x run to run), so the copy cannot replace the plain
          weight;
        - 2-8 rows: packed is 1.2-1.7x faster (Xeon) and 1.5-4.3x (EPYC, whose MKL runs few-row
          products slowly). At hidden 256 the projection is most of a batched decoding step (layers
          + projection): the copy saves 10-33% of it (Xeon). At 2048 and 3584 the decoder layers
          are most of it and the copy saves 2-7% (Xeon) and 1-6% (EPYC): not worth a second
          1.2-2.1 GB copy of the largest matrix.
        Both paths stay within fp32 rounding of a float64 product (max relative error <= 2e-6).
        The copy is made on the first batched call, so single-conversation use never pays for it."""
        weight = self.lm_head.weight
        if (hidden.shape[0] > 1 and self._packs_lm_head and hidden.device.type == "cpu"
                and weight.dtype == torch.float32 and _ONEDNN):
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
        row_caches: list[KVCache] | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states (batch, seq, hidden); the logits are `self.logits(hidden)`.
        row_caches: one decode step of rows that each own a cache (the engine's batched step; see
        QwenDecoder.forward_rows) instead of one shared `cache`."""
        if row_caches is not None:
            return self.model.forward_rows(inputs_embeds, position_ids, row_caches)
        return self.model(inputs_embeds, position_ids, cache=cache, token_mask=token_mask)
