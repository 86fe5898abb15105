"""Named sizes of the random-weight test checkpoints, as Qwen2.5-Omni config.json sections.

`tiny` makes every test fast; `small` is the benchmark model (Thinker hidden 256, 4 layers) with
every stage present. Token ids, the codec vocabulary, the mel/vocoder geometry and all window and
chunk parameters are the real model's; only widths and depths shrink.

`7b` and `3b` are the published models' shapes at full depth (for a GPU: build them with
`omni make-checkpoint --preset 7b --device cuda`); `3b-wide` keeps every 3B width and cuts each stack
to a few layers, so that a CPU runs real-width layers in seconds. A layer's cost does not depend on
how many layers follow it, so per-layer speed ratios measured at `3b-wide` carry over to `3b`; the
whole-model figures (time to first audio, decode tokens/s) scale with depth and do not.
Where each real value comes from is cited next to it (the source notes above `QWEN_7B`).
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
    # "fp32", or "bf16" as the published checkpoints store the Thinker and Talker; the codec
    # (token2wav) is written in fp32 either way, as omni runs it.
    weights_dtype: str = "fp32"


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

# --- The published sizes ---------------------------------------------------------------------------
#
# Sources (searched in stored copies of public repositories; the Hugging Face repos themselves were
# not reachable from here):
# [7B] UbiquitousLearning/mllm, examples/qwen2_5omni/config_qwen2_5omni_7B.json: a verbatim copy of
#      Qwen/Qwen2.5-Omni-7B's config.json ("_name_or_path": "Qwen2.5-Omni-7B/talker", "transformers_version":
#      "4.50.0.dev0"); every 7B value below is that file's. Its DiT section has no `block_size`,
#      `look_ahead_layers` or `look_backward_layers`: the model runs with the reference defaults
#      (24, [10], [0, 20]), transformers' Qwen2_5OmniDiTConfig, which [7B] also matches everywhere else.
# [3B-text] Tyr (Lean), Tyr/Model/Qwen25Omni/Config.lean `qwen25omni_3B`, "Qwen2.5-Omni-3B thinker text
#      defaults (from HF config.json)": vocab 151936, hidden 2048, intermediate 11008, 36 layers, 16 heads,
#      2 KV heads, head_dim 128, rope_theta 1e6, rms_norm_eps 1e-6, max positions 32768.
# [3B-axera] techshoww/Qwen2.5-Omni-3B.AXERA, model_convert/export_thinker2talker_proj.py: the 3B
#      Talker's thinker_to_talker_proj takes 2048-wide input (talker embedding_size 2048) and its
#      commented output is 896 wide (talker hidden_size 896).
# [3B-blog] blog.gitcode.com "深入Qwen2.5-Omni-3B架构" (a secondary page): 3B vision tower width 1280,
#      16 heads, 32 layers, patch 14, temporal patch 2, output 2048; audio features 2048-wide.
# NOT FOUND for 3B (no copy of Qwen/Qwen2.5-Omni-3B's config.json was found): the Talker's
#      intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads and head_dim;
#      the vision intermediate_size and fullatt_block_indexes; the audio tower's depth and widths;
#      the whole token2wav section; tie_word_embeddings. The 3B presets take the 7B values there
#      (marked "7B value, 3B not found"): the towers and the codec are the shared Qwen2.5-VL ViT,
#      Whisper-large-v3 encoder and DiT/BigVGAN in both, as far as the public descriptions say, but
#      that is not a citation of the 3B file.

_MROPE_HEAD_128 = [16, 24, 24]  # [7B] thinker and talker rope_scaling.mrope_section (head_dim 128)

_TEXT_7B = dict(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
    num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6,
    rope_parameters=_rope(1000000.0, _MROPE_HEAD_128), max_position_embeddings=32768,
    tie_word_embeddings=False,
)  # [7B] thinker_config.text_config
_TEXT_3B = dict(
    vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
    num_attention_heads=16, num_key_value_heads=2, rms_norm_eps=1e-6,
    # head_dim 2048 / 16 = 128 as at 7B, so the 7B section (which must sum to head_dim / 2) fits;
    # the 3B file's own mrope_section was not found.
    rope_parameters=_rope(1000000.0, _MROPE_HEAD_128), max_position_embeddings=32768,
    tie_word_embeddings=False,  # 7B value, 3B not found
)  # [3B-text]
_VISION_7B = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
    fullatt_block_indexes=[7, 15, 23, 31], window_size=112, patch_size=14, temporal_patch_size=2,
    spatial_merge_size=2, in_channels=3,
)  # [7B] thinker_config.vision_config
_VISION_3B = dict(_VISION_7B, out_hidden_size=2048)  # [3B-blog]; intermediate, fullatt: 7B value, 3B not found
_AUDIO_7B = dict(
    d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, output_dim=3584,
    n_window=100, max_source_positions=1500, num_mel_bins=128,
)  # [7B] thinker_config.audio_config
_AUDIO_3B = dict(_AUDIO_7B, output_dim=2048)  # [3B-blog] (the Thinker's width); the rest: 7B value, 3B not found
_TALKER_7B = dict(
    vocab_size=8448, embedding_size=3584, hidden_size=896, intermediate_size=18944, num_hidden_layers=24,
    num_attention_heads=12, num_key_value_heads=4, head_dim=128, rms_norm_eps=1e-6,
    rope_parameters=_rope(1000000.0, _MROPE_HEAD_128), max_position_embeddings=32768,
)  # [7B] talker_config (12 heads x 128 = 1536 != hidden 896: the published quirk, kept)
# [3B-axera] embedding_size 2048, hidden 896; the rest: 7B value, 3B not found
_TALKER_3B = dict(_TALKER_7B, embedding_size=2048)
_DIT = dict(
    hidden_size=1024, num_hidden_layers=22, num_attention_heads=16, head_dim=64, ff_mult=2, emb_dim=512,
    repeats=2, num_embeds=8193, mel_dim=80, dropout=0.1,
    block_size=24, look_ahead_layers=[10], look_backward_layers=[0, 20],  # reference defaults, see [7B]
    enc_emb_dim=192, enc_dim=128, enc_channels=[256, 256, 256, 256, 768], enc_kernel_sizes=[5, 3, 3, 3, 1],
    enc_dilations=[1, 2, 3, 4, 1], enc_attention_channels=64, enc_res2net_scale=2, enc_se_channels=64,
)  # [7B] token2wav_config.dit_config (`dim`, `depth`, `heads` there); 3B: 7B value, 3B not found
_BIGVGAN = dict(
    mel_dim=80, upsample_initial_channel=1536, resblock_kernel_sizes=[3, 7, 11],
    resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]], upsample_rates=[5, 3, 2, 2, 2, 2],
    upsample_kernel_sizes=[11, 7, 4, 4, 4, 4],
)  # [7B] token2wav_config.bigvgan_config; 3B: 7B value, 3B not found

# The reference mel of each voice in spk_dict.pt is not part of config.json; 300 frames (3 s) as `small`.
_REF_MEL_FRAMES = 300

QWEN_7B = Preset(
    name="7b",
    thinker=dict(text_config=_TEXT_7B, vision_config=_VISION_7B, audio_config=_AUDIO_7B),
    talker=_TALKER_7B, dit=_DIT, bigvgan=_BIGVGAN,
    ref_mel_frames=_REF_MEL_FRAMES, max_shard_size="4GB", weights_dtype="bf16",
)

QWEN_3B = Preset(
    name="3b",
    thinker=dict(text_config=_TEXT_3B, vision_config=_VISION_3B, audio_config=_AUDIO_3B),
    talker=_TALKER_3B, dit=_DIT, bigvgan=_BIGVGAN,
    ref_mel_frames=_REF_MEL_FRAMES, max_shard_size="4GB", weights_dtype="bf16",
)

# 3B widths, a few layers per stack. Window/full attention and the DiT's look-ahead/look-back layers
# stay present (their indices moved into the shorter stacks) so that every kind of layer runs.
QWEN_3B_WIDE = Preset(
    name="3b-wide",
    thinker=dict(
        text_config=dict(_TEXT_3B, num_hidden_layers=2),
        vision_config=dict(_VISION_3B, depth=2, fullatt_block_indexes=[1]),
        audio_config=dict(_AUDIO_3B, encoder_layers=2),
    ),
    talker=dict(_TALKER_3B, num_hidden_layers=2),
    dit=dict(_DIT, num_hidden_layers=4, look_ahead_layers=[2], look_backward_layers=[0, 3]),
    bigvgan=_BIGVGAN,  # no depth to cut: its stages are fixed by the upsampling rates
    ref_mel_frames=_REF_MEL_FRAMES, max_shard_size="2GB", weights_dtype="bf16",
)

PRESETS = {preset.name: preset for preset in (TINY, SMALL, QWEN_3B_WIDE, QWEN_3B, QWEN_7B)}
