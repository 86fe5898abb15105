"""The vocabulary projection of a decoding step, done fast on the CPU; shared by both families' Thinkers.

The projection is the largest single read of every decoding step (152k rows). Measured paths
(bench/lm_head.py, fp32, medians):
- the weight is kept column-major (same values, names and shape as the checkpoint's): for this tall,
  thin matrix PyTorch's CPU product with few rows streams 1.1-2x faster in that layout than in the
  checkpoint's row-major one (`F.linear`, as the reference runs it);
- one to `omni.linear.SPLIT_MAX_ROWS` rows: `omni.linear.linear` splits that product over the input
  features, one slice per thread, and reads the weight about as fast as the machine streams memory
  (2-core AMD EPYC, AVX-512, 151936 x 2048, one row: 69 ms row-major, 60 ms column-major, 45 ms split;
  at `small`'s 256: 22, 11 and 7 ms);
- several rows (a batched step): oneDNN's prepacked inner product. It needs its own copy of the weight
  (4 x vocab x hidden bytes: 148 MB at hidden 256, 1.2 GB at 3B's 2048, 2.1 GB at 7B's 3584), so it is
  used only where it pays: on the CPU in fp32, and only when the projection holds at least as many
  weights as all decoder layers together (the tiny and small presets; 8-11% at 3B and 7B; a MoE
  decoder counts every expert). Elsewhere several rows take the split product too.
  - 2-8 rows: packed is 1.2-1.7x faster than the plain column-major product (Xeon) and 1.5-4.3x (EPYC,
    whose MKL runs few-row products slowly). At hidden 256 the projection is most of a batched decoding
    step (layers + projection): the copy saves 10-33% of it (Xeon). At 2048 and 3584 the decoder layers
    are most of it and the copy saves 2-7% (Xeon) and 1-6% (EPYC): not worth a second 1.2-2.1 GB copy
    of the largest matrix.
All paths stay within fp32 rounding of a float64 product (max relative error <= 2e-6). The copy is
made on the first batched call, so single-conversation use never pays for it.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from omni.linear import linear

ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise") and hasattr(
    torch.ops.mkldnn, "_reorder_linear_weight"
)


class FastLogits:
    """Logits of `lm_head` (whose weight it makes column-major, in place of the parameter) over final
    hidden states (rows, hidden) -> (rows, vocab). Not a module: the state_dict stays the checkpoint's."""

    def __init__(self, lm_head: nn.Linear, decoder_layers: nn.Module, column_major: bool = True) -> None:
        """column_major=False where the weight is shared (tied to the embeddings): it stays as it is."""
        if column_major:
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
        return linear(hidden, weight, self.lm_head.bias)
