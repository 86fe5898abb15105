"""The Qwen decoder stack: GQA attention, M-RoPE, RMSNorm and a gated feed-forward.

Qwen2.5-Omni's Thinker and Talker LMs are `QwenDecoder` (QKV bias, blockwise M-RoPE, SwiGLU).
Qwen3-Omni's decoders (omni.qwen3.decoder) reuse the same attention, layer and stack with three
switches: no QKV bias, RMSNorm of q and k over the head dim before rope (`qk_norm`), a per-layer
feed-forward that may be a sparse MoE (omni.moe), and interleaved M-RoPE (omni.rope). Parameter names
follow the checkpoints (`embed_tokens`, `layers.N.self_attn.q_proj`, ..., `norm`). The stack takes
input embeddings and 3-D positions and returns final-norm hidden states; caches are passed in
explicitly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from omni.config import DecoderConfig
from omni.kv_cache import KVCache
from omni.layers import GatedMLP, RMSNorm
from omni.linear import Linear
from omni.rope import apply_rotary, inverse_frequencies, mrope_cos_sin, section_index


class Attention(nn.Module):
    """GQA attention over `config`'s heads (any config with hidden_size, num_attention_heads,
    num_kv_heads, head_dim and rms_norm_eps). Qwen2.5: bias on q/k/v (`qkv_bias`), none on o.
    Qwen3: no biases unless `output_bias`, and RMSNorm of each q and k head (`qk_norm`) after the
    projection and before rope."""

    def __init__(self, config, qkv_bias: bool = True, qk_norm: bool = False, output_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.heads_per_kv = self.num_heads // self.num_kv_heads
        self.scale = self.head_dim**-0.5
        self.q_proj = Linear(config.hidden_size, self.num_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = Linear(self.num_heads * self.head_dim, config.hidden_size, bias=output_bias)
        if qk_norm:
            self.q_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def _project(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (batch, heads, seq, head_dim), k and v (batch, kv_heads, seq, head_dim), before rope."""
        batch, seq, _ = hidden.shape
        q = self.q_proj(hidden).view(batch, seq, self.num_heads, self.head_dim)
        k = self.k_proj(hidden).view(batch, seq, self.num_kv_heads, self.head_dim)
        v = self.v_proj(hidden).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q.transpose(1, 2), k.transpose(1, 2), v

    def forward(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None,
        layer_index: int,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        batch, seq, _ = hidden.shape
        q, k, v = self._project(hidden)
        q, k = apply_rotary(q, k, cos, sin)

        if cache is not None:
            start = cache.length
            end = start + seq
            cache.keys[layer_index][:, :, start:end] = k
            cache.values[layer_index][:, :, start:end] = v
            k = cache.keys[layer_index][:, :, :end]
            v = cache.values[layer_index][:, :, :end]

        if seq == 1 and self.heads_per_kv > 1:
            # One query per head: group the query heads of each kv head as that head's queries,
            # so attention runs on the cached kv heads without repeating them.
            grouped = q.reshape(batch, self.num_kv_heads, self.heads_per_kv, self.head_dim)
            out = F.scaled_dot_product_attention(grouped, k, v, attn_mask=mask, scale=self.scale)
            out = out.reshape(batch, 1, self.num_heads * self.head_dim)
        else:
            causal = mask is None and seq > 1
            if causal and k.shape[2] > seq:
                raise AssertionError("a causal call without a mask must start at an empty cache")
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal, scale=self.scale, enable_gqa=self.heads_per_kv > 1
            )
            out = out.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim)
        return self.o_proj(out)

    def forward_rows(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, caches: list[KVCache],
                     layer_index: int) -> torch.Tensor:
        """One new token per row (hidden (rows, 1, width)), row i attending over its own cache
        `caches[i]` (each at its own length): the projections run batched, attention row by row,
        exactly as a one-row decode step would run it."""
        rows = hidden.shape[0]
        q, k, v = self._project(hidden)
        q, k = apply_rotary(q, k, cos, sin)
        outs = []
        for row, cache in enumerate(caches):
            end = cache.length + 1
            keys, values = cache.keys[layer_index], cache.values[layer_index]
            keys[:, :, end - 1 : end] = k[row : row + 1]
            values[:, :, end - 1 : end] = v[row : row + 1]
            query = q[row : row + 1]
            if self.heads_per_kv > 1:
                query = query.reshape(1, self.num_kv_heads, self.heads_per_kv, self.head_dim)
            out = F.scaled_dot_product_attention(query, keys[:, :, :end], values[:, :, :end], scale=self.scale)
            outs.append(out.reshape(1, 1, self.num_heads * self.head_dim))
        return self.o_proj(torch.cat(outs) if rows > 1 else outs[0])


class DecoderLayer(nn.Module):
    """Pre-norm attention + feed-forward. Without arguments beyond the config it is the Qwen2.5
    layer; Qwen3 passes its own attention (no bias, q/k norm) and feed-forward (dense or SparseMoE)."""

    def __init__(self, config, attention: Attention | None = None, mlp: nn.Module | None = None) -> None:
        super().__init__()
        self.self_attn = attention if attention is not None else Attention(config)
        self.mlp = mlp if mlp is not None else GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden, cos, sin, cache, layer_index, mask):
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), cos, sin, cache, layer_index, mask)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))

    def forward_rows(self, hidden, cos, sin, caches, layer_index):
        hidden = hidden + self.self_attn.forward_rows(self.input_layernorm(hidden), cos, sin, caches, layer_index)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class DecoderStack(nn.Module):
    """Layers + final norm + rope tables, shared by the Qwen2.5 and Qwen3 decoders. A subclass builds
    `self.layers`, `self.norm` and (optionally) `self.embed_tokens`, then calls `_init_rope`."""

    config: DecoderConfig

    def _init_rope(self, component_of_frequency: torch.Tensor) -> None:
        self.register_buffer("inv_freq", inverse_frequencies(self.config.head_dim, self.config.rope_theta),
                             persistent=False)
        self.register_buffer("rope_component", component_of_frequency, persistent=False)

    def _rope_component(self, device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def reset_buffers(self) -> None:
        """Recompute the non-persistent buffers (after the module was created on the meta device)."""
        device = self.norm.weight.device
        self.inv_freq = inverse_frequencies(self.config.head_dim, self.config.rope_theta, device=device)
        self.rope_component = self._rope_component(device)

    def new_cache(self, batch_size: int, capacity: int) -> KVCache:
        return KVCache.allocate(
            self.config.num_layers,
            batch_size,
            self.config.num_kv_heads,
            self.config.head_dim,
            capacity,
            dtype=self.norm.weight.dtype,
            device=self.norm.weight.device,
        )

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        cache: KVCache | None = None,
        token_mask: torch.Tensor | None = None,
        hidden_states_of_layer: int | None = None,
        deepstack: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Run the stack over `inputs_embeds` (batch, seq, hidden) at `position_ids` (3, batch, seq).

        With a cache, the new keys/values are appended after `cache.length` and attention sees all
        earlier slots; `cache.length` advances. `token_mask` (batch, seq) marks real tokens of a
        left-padded batch. `deepstack(layer_index, hidden)` (Qwen3's vision deepstack) may replace
        the hidden states after each layer. With `hidden_states_of_layer` k, returns (final-norm
        hidden states, the hidden states entering layer k) — transformers' `hidden_states[k]`: 0 the
        embeddings, k the output of layer k-1 as the layer returned it (before any deepstack
        addition); k = num_layers gives the final-norm states, as the reference's last entry is.
        """
        batch, seq, _ = inputs_embeds.shape
        start = 0
        if cache is not None:
            start = cache.length
            cache.ensure_capacity(start + seq)
            cache.mark(start, seq, token_mask)
        key_valid = cache.valid[:, : start + seq] if cache is not None and cache.valid is not None else token_mask
        mask = _attention_mask(start, seq, key_valid, token_mask, inputs_embeds.device)

        cos, sin = mrope_cos_sin(position_ids, self.inv_freq, self.rope_component, inputs_embeds.dtype)
        hidden = inputs_embeds
        kept = hidden if hidden_states_of_layer == 0 else None
        for index, layer in enumerate(self.layers):
            hidden = layer(hidden, cos, sin, cache, index, mask)
            if hidden_states_of_layer == index + 1:
                kept = hidden
            if deepstack is not None:
                hidden = deepstack(index, hidden)
        if cache is not None:
            cache.length = start + seq
        hidden = self.norm(hidden)
        if hidden_states_of_layer is None:
            return hidden
        if hidden_states_of_layer == len(self.layers):
            kept = hidden
        if kept is None:
            raise ValueError(f"hidden_states_of_layer={hidden_states_of_layer} is outside 0..{len(self.layers)}")
        return hidden, kept

    def forward_rows(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, caches: list[KVCache]
                     ) -> torch.Tensor:
        """One decode step for rows that each own a cache (one conversation each, at its own
        length): inputs_embeds (rows, 1, hidden) at position_ids (3, rows, 1); every cache grows by
        one slot. The serving engine's batched step (omni.engine)."""
        if inputs_embeds.shape[1] != 1 or inputs_embeds.shape[0] != len(caches):
            raise ValueError(f"forward_rows takes one token per row and one cache per row, got "
                             f"{tuple(inputs_embeds.shape[:2])} for {len(caches)} caches")
        for cache in caches:
            if cache.batch_size != 1 or cache.valid is not None:
                raise ValueError("forward_rows needs one-row caches without padding")
            cache.ensure_capacity(cache.length + 1)
        cos, sin = mrope_cos_sin(position_ids, self.inv_freq, self.rope_component, inputs_embeds.dtype)
        hidden = inputs_embeds
        for index, layer in enumerate(self.layers):
            hidden = layer.forward_rows(hidden, cos, sin, caches, index)
        for cache in caches:
            cache.length += 1
        return self.norm(hidden)


class QwenDecoder(DecoderStack):
    """The Qwen2.5 decoder (QKV bias, blockwise M-RoPE, SwiGLU)."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self._init_rope(section_index(config.mrope_section))

    def _rope_component(self, device: torch.device) -> torch.Tensor:
        return section_index(self.config.mrope_section, device=device)


def _attention_mask(
    start: int,
    seq: int,
    key_valid: torch.Tensor | None,
    query_valid: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor | None:
    """Boolean mask (batch or 1, 1, seq, start + seq), or None when plain causal attention is exact."""
    if key_valid is None:
        if seq == 1 or start == 0:
            return None  # decode sees everything; a fresh prefill uses sdpa's causal flag
        return _causal(start, seq, device)[None, None]
    mask = key_valid[:, None, None, :].clone() if seq == 1 else key_valid[:, None, None, :] & _causal(start, seq, device)
    if query_valid is not None and seq > 1:
        # A padding query that may see no key would give NaN rows, and NaN values poison later
        # layers through the zero-weighted padding slots: let padding queries see causally.
        padding_query = ~query_valid[:, None, :, None]
        mask = mask | (padding_query & _causal(start, seq, device))
    return mask


def _causal(start: int, seq: int, device: torch.device) -> torch.Tensor:
    query_positions = torch.arange(start, start + seq, device=device)[:, None]
    key_positions = torch.arange(start + seq, device=device)[None, :]
    return key_positions <= query_positions
