"""Qwen3-Omni's Thinker module tree, named as the checkpoint names it (`thinker.model.*`,
`thinker.lm_head`, `thinker.audio_tower.*`, `thinker.visual.*`).

Beyond Qwen2.5's Thinker: the language model is a sparse-MoE Qwen3 decoder, and vision features enter
twice — the merged features replace the image/video placeholder embeddings (as before), and the
vision tower's deepstack features (one per `deepstack_visual_indexes` entry, taken from early ViT
blocks) are added to the hidden states at the same positions after decoder layers 0, 1, 2
(DeepStack, arXiv:2406.04334), as the reference's `_deepstack_process` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from omni.kv_cache import KVCache
from omni.linear import Linear
from omni.lm_head import FastLogits
from omni.qwen3.config import ThinkerConfig
from omni.qwen3.decoder import Qwen3Decoder


class Thinker(nn.Module):
    def __init__(self, config: ThinkerConfig, encoders: bool = True) -> None:
        """encoders=False builds the language model alone (no `audio_tower`, `visual`): text-only
        use and tests of the decoder that should not depend on the encoder towers."""
        super().__init__()
        self.config = config
        self.model = Qwen3Decoder(config.text)
        self.lm_head = Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self._logits = FastLogits(self.lm_head, self.model.layers, column_major=not config.tie_word_embeddings)
        if encoders:
            # imported here so that the language model is usable without the encoder packages
            from omni.encoders.qwen3.audio_encoder import AudioEncoder
            from omni.encoders.qwen3.vision_encoder import VisionEncoder

            self.audio_tower = AudioEncoder(config.audio)
            self.visual = VisionEncoder(config.vision)
        else:
            self.audio_tower = None
            self.visual = None

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of final hidden states (..., hidden) -> (..., vocab)."""
        return self._logits(hidden)

    def new_cache(self, batch_size: int, capacity: int) -> KVCache:
        return self.model.new_cache(batch_size, capacity)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        cache: KVCache | None = None,
        token_mask: torch.Tensor | None = None,
        row_caches: list[KVCache] | None = None,
        visual_mask: torch.Tensor | None = None,
        deepstack_features: Sequence[torch.Tensor] | None = None,
        hidden_states_of_layer: int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Final-norm hidden states (batch, seq, hidden); the logits are `self.logits(hidden)`.

        visual_mask (batch, seq) bool marks the image/video placeholder positions of this call and
        deepstack_features[i] (visual tokens, hidden) the features added there after layer i (in
        the mask's row-major order, as the merged vision features were scattered).
        hidden_states_of_layer k also returns the reference's `hidden_states[k]` (0 = embeddings;
        the Talker reads `accept_hidden_layer` of the prompt). row_caches: one decode step of rows
        that each own a cache (the engine's batched step; see DecoderStack.forward_rows)."""
        if row_caches is not None:
            return self.model.forward_rows(inputs_embeds, position_ids, row_caches)
        deepstack = None
        if deepstack_features:
            if visual_mask is None:
                raise ValueError("deepstack_features need the visual_mask of their positions")
            deepstack = _Deepstack(visual_mask, deepstack_features)
        return self.model(inputs_embeds, position_ids, cache=cache, token_mask=token_mask,
                          hidden_states_of_layer=hidden_states_of_layer, deepstack=deepstack)


class _Deepstack:
    """Adds deepstack_features[layer] at the visual positions after decoder layer `layer`."""

    def __init__(self, visual_mask: torch.Tensor, features: Sequence[torch.Tensor]) -> None:
        self.positions = visual_mask.nonzero(as_tuple=True)
        count = int(self.positions[0].numel())
        for feature in features:
            if feature.shape[0] != count:
                raise ValueError(f"a deepstack feature holds {feature.shape[0]} visual tokens, the mask marks {count}")
        self.features = list(features)

    def __call__(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        if layer >= len(self.features):
            return hidden
        feature = self.features[layer].to(hidden.device, hidden.dtype)
        # out of place: the layer's own output stays as it was (it is what hidden_states[k] reports)
        return hidden.index_put(self.positions, feature, accumulate=True)
