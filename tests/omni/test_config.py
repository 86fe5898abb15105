"""config.json parsing: the files Qwen published (transformers 4.5x) and those transformers 5 writes."""

from __future__ import annotations

import json

import pytest

from omni.config import load_config, parse_config
from omni.errors import CheckpointError

# The shape of a real Qwen2.5-Omni-7B config.json (older key spellings, sparse sections).
QWEN_PUBLISHED = {
    "architectures": ["Qwen2_5OmniModel"],
    "model_type": "qwen2_5_omni",
    "enable_audio_output": True,
    "torch_dtype": "bfloat16",
    "thinker_config": {
        "model_type": "qwen2_5_omni_thinker",
        "audio_token_index": 151646,
        "image_token_index": 151655,
        "video_token_index": 151656,
        "position_id_per_seconds": 25,
        "seconds_per_chunk": 2,
        "audio_config": {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20,
                         "encoder_ffn_dim": 5120, "num_mel_bins": 128, "n_window": 100, "output_dim": 3584},
        "text_config": {
            "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
            "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "sliding_window": 32768, "use_sliding_window": False,
            "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
        },
        "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                          "out_hidden_size": 3584, "fullatt_block_indexes": [7, 15, 23, 31], "in_chans": 3,
                          "spatial_patch_size": 14, "window_size": 112, "tokens_per_second": 25},
    },
    "talker_config": {
        "model_type": "qwen2_5_omni_talker", "embedding_size": 3584, "hidden_size": 896, "intermediate_size": 18944,
        "num_hidden_layers": 24, "num_attention_heads": 12, "num_key_value_heads": 4, "head_dim": 128,
        "vocab_size": 8448, "rope_theta": 1000000.0,
        "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
        "vision_start_token_id": 151652,
    },
    "token2wav_config": {
        "model_type": "qwen2_5_omni_token2wav",
        "dit_config": {"dim": 1024, "depth": 22, "heads": 16, "head_dim": 64, "num_embeds": 8193, "mel_dim": 80},
        "bigvgan_config": {"mel_dim": 80, "upsample_initial_channel": 1536, "upsample_rates": [5, 3, 2, 2, 2, 2]},
    },
}


def test_published_layout_parses_to_the_real_sizes():
    config = parse_config(QWEN_PUBLISHED)
    text = config.thinker.text
    assert (text.hidden_size, text.num_layers, text.num_attention_heads, text.num_kv_heads) == (3584, 28, 28, 4)
    assert text.head_dim == 128 and text.mrope_section == (16, 24, 24) and text.rope_theta == 1e6
    assert text.embedding_size == 3584
    assert config.thinker.vision.patch_size == 14 and config.thinker.vision.in_channels == 3
    assert config.thinker.token_ids.vision_start == 151652
    talker = config.talker.decoder
    assert (talker.embedding_size, talker.hidden_size, talker.num_attention_heads, talker.head_dim) == (3584, 896, 12, 128)
    assert (config.dit.hidden_size, config.dit.num_layers, config.dit.num_heads) == (1024, 22, 16)
    assert config.bigvgan.samples_per_mel_frame == 240
    assert config.checkpoint_dtype == "bfloat16"


def test_transformers5_layout_parses_like_the_reference(tiny_checkpoint):
    from transformers import Qwen2_5OmniConfig

    config = load_config(tiny_checkpoint)
    reference = Qwen2_5OmniConfig.from_pretrained(tiny_checkpoint)
    ref_text = reference.thinker_config.text_config
    assert config.thinker.text.hidden_size == ref_text.hidden_size
    assert list(config.thinker.text.mrope_section) == ref_text.rope_parameters["mrope_section"]
    assert config.talker.decoder.head_dim == reference.talker_config.head_dim
    assert config.dit.look_backward_layers == tuple(reference.token2wav_config.dit_config.look_backward_layers)
    assert config.talker.codec_pad_id == reference.talker_config.tts_codec_pad_token_id


def test_wrong_model_type_is_named():
    raw = dict(QWEN_PUBLISHED, model_type="qwen2_vl")
    with pytest.raises(CheckpointError, match="model_type='qwen2_vl'.*qwen2_5_omni"):
        parse_config(raw)


def test_bad_mrope_section_is_rejected():
    raw = json.loads(json.dumps(QWEN_PUBLISHED))
    raw["thinker_config"]["text_config"]["rope_scaling"]["mrope_section"] = [16, 24, 20]
    with pytest.raises(CheckpointError, match="mrope_section"):
        parse_config(raw)


def test_sliding_window_is_refused_not_ignored():
    raw = json.loads(json.dumps(QWEN_PUBLISHED))
    raw["thinker_config"]["text_config"]["use_sliding_window"] = True
    with pytest.raises(CheckpointError, match="sliding-window"):
        parse_config(raw)


def test_missing_and_broken_config_files(tmp_path):
    with pytest.raises(CheckpointError, match="config.json does not exist"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_config(tmp_path)
