"""The Qwen3-Omni code predictor: a small dense Qwen3 decoder that fills in codec groups 1..G-1 of a frame.

The Talker produces group 0 of each 80 ms frame; this model writes the other `num_code_groups - 1`
residual groups one after another, conditioned on the Talker's final hidden state of that frame. Its
sequence per frame is [talker hidden, embedding of code 0, embedding of code 1, ...]: position i + 1
predicts code i + 1 with its own head `lm_head[i]`, and code i (i >= 1) is embedded by its own table
`codec_embedding[i - 1]` (code 0 is embedded by the Talker's table). Each frame starts from an empty
cache, so the cache is allocated once for the `num_code_groups` positions a frame fills and reset.

Parameter names follow the checkpoint's `talker.code_predictor.*` (`model.layers.N...`, `model.norm`,
`model.codec_embedding.N`, `lm_head.N`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from omni.kv_cache import KVCache
from omni.linear import Linear
from omni.qwen3.config import DenseDecoderConfig
from omni.qwen3.decoder import Qwen3Decoder

# logits (batch, vocab) -> code ids (batch,)
CodeSampler = Callable[[torch.Tensor], torch.Tensor]


def greedy(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=-1)


class CodePredictor(nn.Module):
    def __init__(self, config: DenseDecoderConfig) -> None:
        super().__init__()
        self.config = config
        residual_groups = config.num_code_groups - 1
        self.model = Qwen3Decoder(config, embed=False)
        # The checkpoint keeps the residual groups' embedding tables under `model.` (next to the layers),
        # not at the top like the heads.
        self.model.codec_embedding = nn.ModuleList(
            nn.Embedding(config.vocab_size, config.hidden_size) for _ in range(residual_groups)
        )
        self.lm_head = nn.ModuleList(
            Linear(config.hidden_size, config.vocab_size, bias=False) for _ in range(residual_groups)
        )

    @property
    def positions_per_frame(self) -> int:
        # [talker hidden, code 0, codes 1 .. G-2]: the last code is predicted but never fed back.
        return self.config.num_code_groups

    def new_cache(self, batch_size: int) -> KVCache:
        """A cache for one frame; `predict` resets it, so one cache serves every frame of a stream."""
        return self.model.new_cache(batch_size, self.positions_per_frame)

    def new_positions(self, batch_size: int) -> torch.Tensor:
        """The position ids of one frame (batch, num_code_groups), made once per stream and sliced per
        step (1-D rope: position i is slot i of the frame)."""
        weight = self.lm_head[0].weight
        return torch.arange(self.positions_per_frame, device=weight.device).expand(batch_size, -1).contiguous()

    def embed_residual(self, group: int, codes: torch.Tensor) -> torch.Tensor:
        """Codes (batch, n) of residual group `group` (1 .. G-1) -> embeddings (batch, n, hidden)."""
        return self.model.codec_embedding[group - 1](codes)

    def logits(self, hidden: torch.Tensor, group: int) -> torch.Tensor:
        """Final hidden states -> logits of residual group `group` (1 .. G-1), fp32."""
        return self.lm_head[group - 1](hidden).float()

    @torch.inference_mode()
    def predict(
        self,
        talker_hidden: torch.Tensor,
        code0_embed: torch.Tensor,
        cache: KVCache,
        positions: torch.Tensor,
        sample: CodeSampler = greedy,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame's residual codes.

        talker_hidden (batch, hidden): the Talker's final-norm hidden state at the position that produced
        code 0; code0_embed (batch, hidden): the Talker's embedding of code 0. Returns the residual codes
        (batch, G-1) and the sum of the embeddings of all G codes (batch, hidden): the codec part of the
        Talker's input for the next frame.
        """
        groups = self.config.num_code_groups
        batch, width = talker_hidden.shape
        cache.reset()
        codes = torch.empty((batch, groups - 1), dtype=torch.long, device=talker_hidden.device)
        # All G embeddings of the frame, summed at the end in one reduction as the reference sums them
        # (a running sum rounds differently in the last bits).
        frame_embeds = torch.empty((batch, groups, width), dtype=code0_embed.dtype, device=code0_embed.device)
        frame_embeds[:, 0] = code0_embed
        inputs = torch.stack((talker_hidden, code0_embed), dim=1)
        hidden = self.model(inputs, positions[:, :2], cache=cache)
        for group in range(1, groups):
            code = sample(self.logits(hidden[:, -1], group))
            codes[:, group - 1] = code
            embedded = self.embed_residual(group, code.view(batch, 1))
            frame_embeds[:, group] = embedded[:, 0]
            if group < groups - 1:
                hidden = self.model(embedded, positions[:, group + 1 : group + 2], cache=cache)
        return codes, frame_embeds.sum(dim=1)
