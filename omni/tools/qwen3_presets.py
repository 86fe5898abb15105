"""The published Qwen3-Omni-30B-A3B-Instruct configuration, and the named sizes of the random-weight
Qwen3-Omni test checkpoints derived from it.

Sources (searched in stored copies of public repositories; the Hugging Face repos themselves were not
reachable from here):
[DUMP] A model report of Qwen/Qwen3-Omni-30B-A3B-Instruct (read_file id 62494955826): the full config
       as transformers 5.7 loads it ("transformers_version": "5.7.0", `rope_parameters`, the Talker's
       `num_local_experts`), the module tree, and the weight list of the 15 published safetensors
       shards (28,010 tensors, per-expert names). Every value of `PUBLISHED_INSTRUCT` is that dump's.
[FILE] A trimmed, "structurally faithful" copy of the released config.json in a public Rust port's
       tests (find_string id 62474687175), and the Megatron-Bridge functional test
       tests/functional_tests/models/qwen_omni/test_qwen3_omni_moe_generation.py (id 19269839257),
       whose toy config keeps the released file's layout: the file on the hub spells rope as
       `rope_theta` + `rope_scaling` (transformers 4.57 era) and the Talker's expert count as
       `num_experts`. `published_file_layout` rewrites a config in that spelling; the values agree
       with [DUMP] everywhere both give them (codec ids, speaker ids, accept_hidden_layer 24,
       position_id_per_seconds 13, shapes).
[NOTES] ../shared/notes/formats-and-protocols.md ("Qwen3-Omni in transformers 5.24"): cross-checked;
       it agrees with [DUMP] on every shape and id it names.

`PUBLISHED_INSTRUCT` holds every field of [DUMP] that describes the model. Left out are the generic
`PretrainedConfig` bookkeeping entries that transformers adds to every sub-config when it prints one
(`id2label`, `label2id`, `output_attentions`, `output_hidden_states`, `return_dict`, `torchscript`,
`pruned_heads`, `tf_legacy_loss`, `chunk_size_feed_forward`, `is_decoder`, `is_encoder_decoder`,
`add_cross_attention`, `cross_attention_hidden_size`, `decoder_start_token_id`, `finetuning_task`, `prefix`,
`problem_type`, `sep_token_id`, `task_specific_params`, `tokenizer_class`, `tie_encoder_decoder`,
`use_bfloat16`, `_name_or_path`, the null `architectures`/`bos_token_id`/`eos_token_id`/`pad_token_id`/
`dtype` of sub-configs): they describe no weight and no computation.

`tiny` and `small` keep every id, vocabulary, codec/speaker table, rope layout, window and rate of the
published model and shrink only widths, depths and expert counts (see `PRESETS` and the table in
`_SIZES`). Their head_dim and mrope_section satisfy the interleaved rope's counting rule (transformers'
`apply_interleaved_mrope`: H frequencies at j % 3 == 1 with j < 3·h, W at j % 3 == 2 with j < 3·w, T
elsewhere): with sections [t, s, s] and 3·s <= head_dim / 2, H and W get exactly s frequencies each and T
gets head_dim / 2 − 2·s = t, as [24, 20, 20] does at head_dim 128.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

# ---------------------------------------------------------------------------------------------------
# [DUMP], model fields, as transformers 5.7 spells them.

_THINKER_ROPE = {
    "interleaved": True, "mrope_interleaved": True, "mrope_section": [24, 20, 20],
    "rope_theta": 1000000, "rope_type": "default", "type": "default",
}
_TALKER_ROPE = {
    "interleaved": True, "mrope_section": [24, 20, 20],
    "rope_theta": 1000000, "rope_type": "default", "type": "default",
}

PUBLISHED_INSTRUCT: dict[str, Any] = {
    "architectures": ["Qwen3OmniMoeForConditionalGeneration"],
    "assistant_token_id": 77091,
    "code2wav_config": {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "codebook_dim": 512,
        "codebook_size": 2048,
        "decoder_dim": 1536,
        "hidden_act": "silu",
        "hidden_size": 1024,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "layer_scale_initial_scale": 0.01,
        "max_position_embeddings": 8000,
        "model_type": "",
        "num_attention_heads": 16,
        "num_hidden_layers": 8,
        "num_key_value_heads": 16,
        "num_quantizers": 16,
        "num_semantic_quantizers": 1,
        "rms_norm_eps": 1e-05,
        "rope_parameters": {"rope_theta": 10000, "rope_type": "default"},
        "semantic_codebook_size": 4096,
        "sliding_window": 72,
        "upsample_rates": [8, 5, 4, 3],
        "upsampling_ratios": [2, 2],
        "vector_quantization_hidden_dimension": 512,
    },
    "dtype": "bfloat16",
    "enable_audio_output": True,
    "im_end_token_id": 151645,
    "im_start_token_id": 151644,
    "initializer_range": 0.02,
    "model_type": "qwen3_omni_moe",
    "system_token_id": 8948,
    "talker_config": {
        "accept_hidden_layer": 24,
        "audio_end_token_id": 151670,
        "audio_start_token_id": 151669,
        "audio_token_id": 151675,
        "code_predictor_config": {
            "attention_bias": False,
            "attention_dropout": 0,
            "head_dim": 128,
            "hidden_act": "silu",
            "hidden_size": 1024,
            "initializer_range": 0.02,
            "intermediate_size": 3072,
            "layer_types": ["full_attention"] * 5,
            "max_position_embeddings": 32768,
            "max_window_layers": 28,
            "model_type": "qwen3_omni_moe_talker_code_predictor",
            "num_attention_heads": 16,
            "num_code_groups": 16,
            "num_hidden_layers": 5,
            "num_key_value_heads": 8,
            "rms_norm_eps": 1e-06,
            "rope_parameters": {"rope_theta": 1000000, "rope_type": "default"},
            "sliding_window": None,
            "tie_word_embeddings": False,
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": 2048,
        },
        "codec_bos_id": 2149,
        "codec_eos_token_id": 2150,
        "codec_nothink_id": 2155,
        "codec_pad_id": 2148,
        "codec_think_bos_id": 2156,
        "codec_think_eos_id": 2157,
        "image_token_id": 151655,
        "initializer_range": 0.02,
        "model_type": "",
        "num_code_groups": 16,
        "output_router_logits": False,
        "position_id_per_seconds": 13,
        "seconds_per_chunk": 2,
        "spatial_merge_size": 2,
        "speaker_id": {"aiden": 2303, "chelsie": 2301, "ethan": 2302},
        "text_config": {
            "attention_bias": False,
            "attention_dropout": 0,
            "decoder_sparse_step": 1,
            "head_dim": 128,
            "hidden_act": "silu",
            "hidden_size": 1024,
            "initializer_range": 0.02,
            "intermediate_size": 2048,
            "max_position_embeddings": 65536,
            "mlp_only_layers": [],
            "model_type": "qwen3_omni_moe_talker_text",
            "moe_intermediate_size": 384,
            "norm_topk_prob": True,
            "num_attention_heads": 16,
            "num_experts_per_tok": 6,
            "num_hidden_layers": 20,
            "num_key_value_heads": 2,
            "num_local_experts": 128,
            "output_router_logits": False,
            "rms_norm_eps": 1e-06,
            "rope_parameters": _TALKER_ROPE,
            "router_aux_loss_coef": 0.001,
            "shared_expert_intermediate_size": 768,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": 3072,
        },
        "thinker_hidden_size": 2048,
        "tie_word_embeddings": False,
        "video_token_id": 151656,
        "vision_start_token_id": 151652,
    },
    "thinker_config": {
        "audio_config": {
            "activation_dropout": 0,
            "activation_function": "gelu",
            "attention_dropout": 0,
            "conv_chunksize": 500,
            "d_model": 1280,
            "downsample_hidden_size": 480,
            "dropout": 0,
            "encoder_attention_heads": 20,
            "encoder_ffn_dim": 5120,
            "encoder_layers": 32,
            "initializer_range": 0.02,
            "max_source_positions": 1500,
            "model_type": "qwen3_omni_moe_audio_encoder",
            "n_window": 50,
            "n_window_infer": 800,
            "num_mel_bins": 128,
            "output_dim": 2048,
            "scale_embedding": False,
            "tie_word_embeddings": True,
        },
        "audio_end_token_id": 151670,
        "audio_start_token_id": 151669,
        "audio_token_id": 151675,
        "dtype": "bfloat16",
        "image_token_id": 151655,
        "initializer_range": 0.02,
        "model_type": "qwen3_omni_moe_thinker",
        "position_id_per_seconds": 13,
        "seconds_per_chunk": 2,
        "text_config": {
            "attention_bias": False,
            "attention_dropout": 0.0,
            "decoder_sparse_step": 1,
            "head_dim": 128,
            "hidden_act": "silu",
            "hidden_size": 2048,
            "initializer_range": 0.02,
            "intermediate_size": 768,
            "max_position_embeddings": 65536,
            "mlp_only_layers": [],
            "model_type": "qwen3_omni_moe_text",
            "moe_intermediate_size": 768,
            "norm_topk_prob": True,
            "num_attention_heads": 32,
            "num_experts": 128,
            "num_experts_per_tok": 8,
            "num_hidden_layers": 48,
            "num_key_value_heads": 4,
            "output_router_logits": False,
            "rms_norm_eps": 1e-06,
            "rope_parameters": _THINKER_ROPE,
            "router_aux_loss_coef": 0.001,
            "shared_expert_intermediate_size": 0,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "use_cache": True,
            "use_qk_norm": True,
            "use_sliding_window": False,
            "vocab_size": 152064,
        },
        "tie_word_embeddings": False,
        "user_token_id": 872,
        "video_token_id": 151656,
        "vision_config": {
            "apply_vit_abs_pos_embed": True,
            "deepstack_visual_indexes": [8, 16, 24],
            "depth": 27,
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_size": 1152,
            "image_size": 768,
            "in_channels": 3,
            "in_chans": 3,
            "initializer_range": 0.02,
            "intermediate_size": 4304,
            "model_type": "qwen3_omni_moe_vision_encoder",
            "num_heads": 16,
            "num_position_embeddings": 2304,
            "out_hidden_size": 2048,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "spatial_patch_size": 16,
            "temporal_patch_size": 2,
            "tie_word_embeddings": True,
            "tokens_per_second": 2,
        },
        "vision_end_token_id": 151653,
        "vision_start_token_id": 151652,
    },
    "transformers_version": "5.7.0",
    "tts_bos_token_id": 151672,
    "tts_eos_token_id": 151673,
    "tts_pad_token_id": 151671,
    "user_token_id": 872,
}


def published_file_layout(config: dict[str, Any]) -> dict[str, Any]:
    """`config` (a dict spelled as `PUBLISHED_INSTRUCT`, transformers 5) spelled as the config.json on
    the hub is ([FILE]): each decoder's `rope_parameters` becomes `rope_theta` + `rope_scaling` (null
    for the code predictor's plain 1-D rope), the Code2Wav's becomes `rope_theta` alone, and the
    Talker's `num_local_experts` is `num_experts`. Values are unchanged."""
    out = copy.deepcopy(config)

    def split_rope(section: dict[str, Any], keep_scaling: bool) -> None:
        rope = dict(section.pop("rope_parameters"))
        section["rope_theta"] = rope.pop("rope_theta")
        if keep_scaling:
            section["rope_scaling"] = rope or None

    split_rope(out["thinker_config"]["text_config"], keep_scaling=True)
    talker = out["talker_config"]
    split_rope(talker["text_config"], keep_scaling=True)
    talker["text_config"]["num_experts"] = talker["text_config"].pop("num_local_experts")
    predictor = talker["code_predictor_config"]
    split_rope(predictor, keep_scaling=True)
    predictor["rope_scaling"] = None  # plain rope: the released file has no scaling section here
    split_rope(out["code2wav_config"], keep_scaling=False)
    return out


# ---------------------------------------------------------------------------------------------------
# Test sizes


@dataclass(frozen=True)
class Qwen3Preset:
    name: str
    config: dict[str, Any]  # a full config in PUBLISHED_INSTRUCT's spelling (every field explicit)
    max_shard_size: str  # shards + model.safetensors.index.json, as the published checkpoint ships


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in ("speaker_id",):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _rope(base: dict[str, Any], section: list[int]) -> dict[str, Any]:
    return dict(base, mrope_section=section)


# Widths, depths and expert counts; everything else is PUBLISHED_INSTRUCT's.
#
# | stack            | published                | tiny                    | small                    |
# |------------------|--------------------------|-------------------------|--------------------------|
# | Thinker text     | 48 L, h 2048, 32/4 heads | 3 L, h 64, 2/1 heads    | 4 L, h 256, 4/2 heads    |
# |   head_dim, mrope| 128, [24,20,20]          | 32, [6,5,5]             | 64, [12,10,10]           |
# |   experts        | 128 top 8, moe 768       | 4 top 2, moe 32         | 8 top 2, moe 512         |
# | vision           | 27 L, h 1152, deepstack  | 4 L, h 32, [1,2,3]      | 4 L, h 128, [1,2,3]      |
# |                  |   [8,16,24]              |                         |                          |
# | audio (AuT)      | 32 L, d 1280, conv 480   | 2 L, d 32, conv 16      | 4 L, d 128, conv 64      |
# | Talker text      | 20 L, h 1024, 16/2 heads | 2 L, h 32, 2/1 heads    | 4 L, h 128, 4/2 heads    |
# |   head_dim, mrope| 128, [24,20,20]          | 32, [6,5,5]             | 64, [12,10,10]           |
# |   experts        | 128 top 6, moe 384,      | 4 top 2, moe 16,        | 8 top 2, moe 128,        |
# |                  |   shared 768             |   shared 32             |   shared 256             |
# | accept_hidden_   | 24 (of 48)               | 2 (of 3)                | 2 (of 4)                 |
# |   layer          |                          |                         |                          |
# | code predictor   | 5 L, h 1024, 16/8 heads  | 2 L, h 32, 2/1 heads    | 2 L, h 128, 4/2 heads    |
# | Code2Wav         | 8 L, h 1024, decoder 1536| 2 L, h 32, decoder 64   | 4 L, h 128, decoder 256  |
#
# The deepstack indexes stay three (the Thinker adds them after its first three layers, so every tiny
# Thinker has >= 3 layers); accept_hidden_layer sits inside the Thinker, below its last layer, as 24 of
# 48 does. The code predictor keeps num_code_groups 16 (15 residual heads) and the Code2Wav keeps 16
# quantizers, codebook 2048 and the 8·5·4·3 · 2·2 upsampling (1920 samples per frame at 24 kHz).
_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "thinker_config": {
            "text_config": {
                "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
                "num_key_value_heads": 1, "head_dim": 32, "num_experts": 4, "num_experts_per_tok": 2,
                "moe_intermediate_size": 32, "rope_parameters": _rope(_THINKER_ROPE, [6, 5, 5]),
            },
            "vision_config": {
                "depth": 4, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                "deepstack_visual_indexes": [1, 2, 3],
            },
            "audio_config": {
                "d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
                "output_dim": 64, "downsample_hidden_size": 16,
            },
        },
        "talker_config": {
            "accept_hidden_layer": 2,
            "thinker_hidden_size": 64,
            "text_config": {
                "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                "num_key_value_heads": 1, "head_dim": 32, "num_local_experts": 4, "num_experts_per_tok": 2,
                "moe_intermediate_size": 16, "shared_expert_intermediate_size": 32,
                "rope_parameters": _rope(_TALKER_ROPE, [6, 5, 5]),
            },
            "code_predictor_config": {
                "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                "num_key_value_heads": 1, "head_dim": 16, "layer_types": ["full_attention"] * 2,
            },
        },
        "code2wav_config": {
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "decoder_dim": 64,
        },
    },
    "small": {
        "thinker_config": {
            "text_config": {
                "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 64, "num_experts": 8, "num_experts_per_tok": 2,
                "moe_intermediate_size": 512, "rope_parameters": _rope(_THINKER_ROPE, [12, 10, 10]),
            },
            "vision_config": {
                "depth": 4, "hidden_size": 128, "intermediate_size": 256, "num_heads": 4, "out_hidden_size": 256,
                "deepstack_visual_indexes": [1, 2, 3],
            },
            "audio_config": {
                "d_model": 128, "encoder_layers": 4, "encoder_attention_heads": 4, "encoder_ffn_dim": 256,
                "output_dim": 256, "downsample_hidden_size": 64,
            },
        },
        "talker_config": {
            "accept_hidden_layer": 2,
            "thinker_hidden_size": 256,
            "text_config": {
                "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 64, "num_local_experts": 8, "num_experts_per_tok": 2,
                "moe_intermediate_size": 128, "shared_expert_intermediate_size": 256,
                "rope_parameters": _rope(_TALKER_ROPE, [12, 10, 10]),
            },
            "code_predictor_config": {
                "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 32, "layer_types": ["full_attention"] * 2,
            },
        },
        "code2wav_config": {
            "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 4, "decoder_dim": 256,
        },
    },
}

# Random test weights are written in fp32 (what the parity tests compare in); the published file says
# bfloat16.
_TEST_DTYPE = {"dtype": "float32", "thinker_config": {"dtype": "float32"}}

PRESETS: dict[str, Qwen3Preset] = {
    name: Qwen3Preset(name=name, config=_merge(_merge(PUBLISHED_INSTRUCT, sizes), _TEST_DTYPE), max_shard_size=shard)
    for (name, sizes), shard in zip(_SIZES.items(), ("40MB", "100MB"))
}
