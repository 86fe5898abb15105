"""Named sizes of the random-weight test checkpoints, as Qwen2.5-Omni config.json sections.

`tiny` makes every test fast; `small` is the benchmark model (Thinker hidden 256, 4 layers) with
every stage present. Token ids, the codec vocabulary, the mel/vocoder geometry and all window and
chunk parameters are the real model's; only widths and depths shrink.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preset:
    name: str
    thinker: dict[str, Any]
    talker: dict[str, Any]
    dit: dict[str, Any]
    bigvgan: dict[str, Any]
    ref_mel_frames: int  # length of each voice's reference mel in spk_dict.pt
    max_shard_size: str | None  # None: one model.safetensors; else sharded with an index


def _rope(theta: float, mrope_section: list[int]) -> dict[str, Any]:
    return {"rope_type": "default", "rope_theta": theta, "mrope_section": mrope_section}


TINY = Preset(
    name="tiny",
    thinker=dict(
        text_config=dict(
            vocab_size=152064, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
            rope_parameters=_rope(1000000.0, [2, 3, 3]), max_position_embeddings=32768,
        ),
        vision_config=dict(
            depth=4, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
            fullatt_block_indexes=[1, 3], window_size=112, patch_size=14, temporal_patch_size=2,
            spatial_merge_size=2,
        ),
        audio_config=dict(
            d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, output_dim=64,
            n_window=100, max_source_positions=1500, num_mel_bins=128,
        ),
    ),
    talker=dict(
        vocab_size=8448, embedding_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, rope_parameters=_rope(1000000.0, [2, 1, 1]),
    ),
    dit=dict(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, head_dim=16, ff_mult=2, emb_dim=16,
        look_ahead_layers=[2], look_backward_layers=[0, 3], enc_emb_dim=16, enc_dim=16,
        enc_channels=[32, 32, 32, 32, 96], enc_attention_channels=16, enc_se_channels=16,
    ),
    bigvgan=dict(upsample_initial_channel=64),
    ref_mel_frames=64,
    max_shard_size=None,
)

SMALL = Preset(
    name="small",
    thinker=dict(
        text_config=dict(
            vocab_size=152064, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
            rope_parameters=_rope(1000000.0, [8, 12, 12]), max_position_embeddings=32768,
        ),
        vision_config=dict(
            depth=4, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=256,
            fullatt_block_indexes=[1, 3], window_size=112, patch_size=14, temporal_patch_size=2,
            spatial_merge_size=2,
        ),
        audio_config=dict(
            d_model=128, encoder_layers=4, encoder_attention_heads=4, encoder_ffn_dim=256, output_dim=256,
            n_window=100, max_source_positions=1500, num_mel_bins=128,
        ),
    ),
    talker=dict(
        vocab_size=8448, embedding_size=256, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_parameters=_rope(1000000.0, [4, 6, 6]),
    ),
    dit=dict(
        hidden_size=128, num_hidden_layers=6, num_attention_heads=4, head_dim=32, ff_mult=2, emb_dim=64,
        look_ahead_layers=[2], look_backward_layers=[0, 4], enc_emb_dim=192, enc_dim=128,
        enc_channels=[64, 64, 64, 64, 192], enc_attention_channels=32, enc_se_channels=32,
    ),
    bigvgan=dict(upsample_initial_channel=256),
    ref_mel_frames=300,
    max_shard_size="100MB",
)

PRESETS = {preset.name: preset for preset in (TINY, SMALL)}
