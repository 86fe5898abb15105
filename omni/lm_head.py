"""The vocabulary projection of a decoding step, done fast on the CPU; shared by both families' Thinkers.

Two measured tricks (bench/lm_head.py, fp32, vocab 152064, medians):
- the weight is kept column-major (same values, names and shape as the checkpoint's): for this tall,
  thin matrix PyTorch's CPU product with one activation row streams 1.4-2x faster in that layout, and
  the vocabulary projection is the largest single read of every decoding step;
- for several rows at once, oneDNN's prepacked inner product. It needs its own copy of the weight
  (4 x vocab x hidden bytes: 148 MB at hidden 256, 1.2 GB at 3B's 2048, 2.1 GB at 7B's 3584), so it is
  used only where it pays: on the CPU in fp32, and only when the projection holds at least as many
  weights as all decoder layers together (the tiny and small presets; 8-11% at 3B and 7B; a MoE
  decoder counts every expert).
  - one row: the plain product over the column-major weight is faster at every width on a quiet Xeon
    with AVX-512 and AMX (packed 0.74-0.89x, 2 and 16 threads) and no better on a busy 2-core EPYC
    with AVX-512 (0.8-1.3x run to run), so the copy cannot replace the plain weight;
  - 2-8 rows: packed is 1.2-1.7x faster (Xeon) and 1.5-4.3x (EPYC, whose MKL runs few-row products
    slowly). At hidden 256 the projection is most of a batched decoding step (layers + projection):
    the copy saves 10-33% of it (Xeon). At 2048 and 3584 the decoder layers are most of it and the
    copy saves 2-7% (Xeon) and 1-6% (EPYC): not worth a second 1.2-2.1 GB copy of the largest matrix.
  Both paths stay within fp32 rounding of a float64 product (max relative error <= 2e-6). The copy is
  made on the first batched call, so single-conversation use never pays for it.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise") and hasattr(
    torch.ops.mkldnn, "_reorder_linear_weight"
)


class FastLogits:
    """Logits of `lm_head` (whose weight it makes column-major, in place of the parameter) over final
    hidden states (rows, hidden) -> (rows, vocab). Not a module: the state_dict stays the checkpoint's."""

    def __init__(self, lm_head: nn.Linear, decoder_layers: nn.Module) -> None:
        lm_head.weight = nn.Parameter(lm_head.weight.detach().t().contiguous().t())
        self.lm_head = lm_head
        decoder_weights = sum(p.numel() for p in decoder_layers.parameters())
        self.packs = lm_head.weight.numel() >= decoder_weights
        self.packed: torch.Tensor | None = None
        self._packing = threading.Lock()

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.lm_head.weight
        if (hidden.dim() == 2 and hidden.shape[0] > 1 and self.packs and hidden.device.type == "cpu"
                and weight.dtype == torch.float32 and ONEDNN):
            if self.packed is None:
                with self._packing:
                    if self.packed is None:
                        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, 8)
            return torch.ops.mkldnn._linear_pointwise(hidden.contiguous(), self.packed, None, "none", [], "")
        return self.lm_head(hidden)
