"""Qwen3-Omni's decoder stacks: the Thinker's and Talker's MoE language models and the code predictor's
small dense decoder.

The same attention, layer and stack as Qwen2.5 (omni.decoder) with Qwen3's differences: no QKV bias,
RMSNorm of each q and k head before rope, a feed-forward that is a sparse MoE on sparse layers
(`MoEDecoderConfig.is_sparse`) and a dense SwiGLU elsewhere, and interleaved M-RoPE. The code
predictor (DenseDecoderConfig) uses plain 1-D rope and takes (batch, seq) positions.

Parameter names follow the checkpoint: `embed_tokens`, `layers.N.self_attn.{q,k,v,o}_proj`,
`layers.N.self_attn.{q,k}_norm`, `layers.N.mlp.*`, `layers.N.{input,post_attention}_layernorm`, `norm`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from omni.decoder import Attention, DecoderLayer, DecoderStack
from omni.kv_cache import KVCache
from omni.layers import GatedMLP, RMSNorm
from omni.moe import SparseMoE
from omni.qwen3.config import DenseDecoderConfig, MoEDecoderConfig
from omni.rope import interleaved_section_index, section_index


def feed_forward(config: MoEDecoderConfig | DenseDecoderConfig, layer: int) -> nn.Module:
    if isinstance(config, MoEDecoderConfig) and config.is_sparse(layer):
        return SparseMoE(
            config.hidden_size,
            config.moe_intermediate_size,
            config.num_experts,
            config.num_experts_per_token,
            config.norm_topk_prob,
            config.shared_expert_intermediate_size,
            config.hidden_act,
        )
    return GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act)


def rope_component(config: MoEDecoderConfig | DenseDecoderConfig, device: torch.device | str | None = None
                   ) -> torch.Tensor:
    """Which position component drives each rotary frequency (all time for the 1-D code predictor)."""
    if isinstance(config, DenseDecoderConfig):
        return torch.zeros(config.head_dim // 2, dtype=torch.long, device=device)
    if config.mrope_interleaved:
        return interleaved_section_index(config.mrope_section, device=device)
    return section_index(config.mrope_section, device=device)


class Qwen3Decoder(DecoderStack):
    def __init__(self, config: MoEDecoderConfig | DenseDecoderConfig, embed: bool = True) -> None:
        super().__init__()
        self.config = config
        if embed:
            self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        else:
            self.embed_tokens = None
        self.layers = nn.ModuleList(
            DecoderLayer(
                config,
                attention=Attention(config, qkv_bias=config.attention_bias, qk_norm=True,
                                    output_bias=config.attention_bias),
                mlp=feed_forward(config, layer),
            )
            for layer in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self._init_rope(rope_component(config))

    def _rope_component(self, device: torch.device) -> torch.Tensor:
        return rope_component(self.config, device)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        cache: KVCache | None = None,
        token_mask: torch.Tensor | None = None,
        hidden_states_of_layer: int | None = None,
        deepstack: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """See DecoderStack.forward; position_ids (3, batch, seq), or (batch, seq) for 1-D rope
        (the code predictor, or text whose three components are equal)."""
        return super().forward(inputs_embeds, _three_d(position_ids), cache, token_mask,
                               hidden_states_of_layer, deepstack)

    def forward_rows(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, caches: list[KVCache]
                     ) -> torch.Tensor:
        return super().forward_rows(inputs_embeds, _three_d(position_ids), caches)


def _three_d(position_ids: torch.Tensor) -> torch.Tensor:
    return position_ids.unsqueeze(0).expand(3, -1, -1) if position_ids.dim() == 2 else position_ids
