"""The random-weight Qwen3-Omni checkpoints (omni.tools.qwen3_checkpoint) against the reference: transformers
loads them strictly and gets the builder's weights, their tokenizer/processor files work with transformers'
Auto classes, omni's config parser reads what the reference reads, and the published configuration builds
(on the meta device) to exactly the published weight list."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from omni.qwen3.config import load_config, parse_config
from omni.tools import qwen3_checkpoint as builder
from omni.tools.qwen3_presets import (
    PRESETS,
    PUBLISHED_INSTRUCT,
    Qwen3Preset,
    published_file_layout,
)

transformers = pytest.importorskip("transformers")
from transformers import (
    AutoConfig,
    AutoProcessor,
    AutoTokenizer,
    Qwen3OmniMoeForConditionalGeneration,
)


def _load_reference(directory: Path):
    return Qwen3OmniMoeForConditionalGeneration.from_pretrained(directory, output_loading_info=True, dtype=torch.float32)


# --- weights ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", pytest.param("small", marks=pytest.mark.slow)])
def test_transformers_loads_the_checkpoint_strictly_with_the_builders_weights(preset, request):
    directory = request.getfixturevalue(f"qwen3_{preset}_checkpoint")
    model, info = _load_reference(directory)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set() and info["error_msgs"] == []
    built = builder.build_reference_model(preset, seed=0).state_dict()
    loaded = model.state_dict()
    assert set(loaded) == set(built)
    different = [name for name in built if not torch.equal(built[name], loaded[name])]
    assert different == []


def test_build_is_deterministic_and_the_talker_moe_is_initialised():
    # The reference leaves the Talker's experts torch.empty and its router zero; the builder must not.
    first = builder.build_reference_model("tiny", seed=3).state_dict()
    scratch = [torch.full((512, 512), 7.0) for _ in range(8)]  # dirty the allocator between builds
    del scratch
    second = builder.build_reference_model("tiny", seed=3).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    router = first["talker.model.layers.0.mlp.gate.weight"]
    experts = first["talker.model.layers.0.mlp.experts.gate_up_proj"]
    assert router.std() > 0.01 and experts.abs().max() < 1.0 and 0.01 < experts.std() < 0.03
    other_seed = builder.build_reference_model("tiny", seed=4).state_dict()
    assert not torch.equal(first["thinker.model.language_model.embed_tokens.weight"],
                           other_seed["thinker.model.language_model.embed_tokens.weight"])


def test_no_parameter_is_a_constant():
    # Norm weights, biases, SnakeBeta alpha/beta and layer scales are varied so parity tests can see them.
    state = builder.build_reference_model("tiny", seed=0).state_dict()
    constant = [name for name, values in state.items()
                if values.numel() > 1 and values.is_floating_point() and torch.all(values == values.flatten()[0])]
    assert constant == []


def test_random_code2wav_is_audible_and_depends_on_the_codes(qwen3_tiny_checkpoint):
    model, _ = _load_reference(qwen3_tiny_checkpoint)
    generator = torch.Generator().manual_seed(11)
    waves = []
    with torch.no_grad():
        for _ in range(2):
            codes = torch.randint(0, 2048, (1, 16, 12), generator=generator)
            waves.append(model.code2wav(codes))
    for wave in waves:
        assert wave.shape[-1] > 12 * 1920 - 2000  # 1920 samples per 12.5 Hz frame, less the causal tail
        assert 0.05 <= wave.abs().max().item() <= 0.95
    assert (waves[0] - waves[1]).abs().max().item() > 0.05


# --- file layout -----------------------------------------------------------------------------------


# The published weight list's name patterns ([DUMP], read_file id 62494955826), L/E standing for indices.
_PUBLISHED_PATTERNS = [
    r"thinker\.model\.embed_tokens\.weight",
    r"thinker\.lm_head\.weight",
    r"thinker\.model\.norm\.weight",
    r"thinker\.model\.layers\.L\.(input_layernorm|post_attention_layernorm)\.weight",
    r"thinker\.model\.layers\.L\.self_attn\.(q|k|v|o)_proj\.weight",
    r"thinker\.model\.layers\.L\.self_attn\.(q|k)_norm\.weight",
    r"thinker\.model\.layers\.L\.mlp\.gate\.weight",
    r"thinker\.model\.layers\.L\.mlp\.experts\.E\.(gate|up|down)_proj\.weight",
    r"thinker\.audio_tower\.conv2d[123]\.(weight|bias)",
    r"thinker\.audio_tower\.conv_out\.weight",
    r"thinker\.audio_tower\.(proj1|proj2|ln_post)\.(weight|bias)",
    r"thinker\.audio_tower\.layers\.L\.(fc1|fc2|final_layer_norm|self_attn_layer_norm)\.(weight|bias)",
    r"thinker\.audio_tower\.layers\.L\.self_attn\.(q|k|v|out)_proj\.(weight|bias)",
    r"thinker\.visual\.patch_embed\.proj\.(weight|bias)",
    r"thinker\.visual\.pos_embed\.weight",
    r"thinker\.visual\.blocks\.L\.(norm1|norm2)\.(weight|bias)",
    r"thinker\.visual\.blocks\.L\.attn\.(qkv|proj)\.(weight|bias)",
    r"thinker\.visual\.blocks\.L\.mlp\.linear_fc[12]\.(weight|bias)",
    r"thinker\.visual\.(merger|merger_list\.L)\.ln_q\.(weight|bias)",
    r"thinker\.visual\.(merger|merger_list\.L)\.mlp\.[02]\.(weight|bias)",
    r"talker\.model\.codec_embedding\.weight",
    r"talker\.model\.norm\.weight",
    r"talker\.codec_head\.weight",
    r"talker\.(text|hidden)_projection\.linear_fc[12]\.(weight|bias)",
    r"talker\.model\.layers\.L\.(input_layernorm|post_attention_layernorm)\.weight",
    r"talker\.model\.layers\.L\.self_attn\.(q|k|v|o)_proj\.weight",
    r"talker\.model\.layers\.L\.self_attn\.(q|k)_norm\.weight",
    r"talker\.model\.layers\.L\.mlp\.(gate|shared_expert_gate)\.weight",
    r"talker\.model\.layers\.L\.mlp\.shared_expert\.(gate|up|down)_proj\.weight",
    r"talker\.model\.layers\.L\.mlp\.experts\.E\.(gate|up|down)_proj\.weight",
    r"talker\.code_predictor\.model\.codec_embedding\.L\.weight",
    r"talker\.code_predictor\.lm_head\.L\.weight",
    r"talker\.code_predictor\.model\.norm\.weight",
    r"talker\.code_predictor\.model\.layers\.L\.(input_layernorm|post_attention_layernorm)\.weight",
    r"talker\.code_predictor\.model\.layers\.L\.self_attn\.(q|k|v|o)_proj\.weight",
    r"talker\.code_predictor\.model\.layers\.L\.self_attn\.(q|k)_norm\.weight",
    r"talker\.code_predictor\.model\.layers\.L\.mlp\.(gate|up|down)_proj\.weight",
    r"code2wav\.code_embedding\.weight",
    r"code2wav\.pre_transformer\.norm\.weight",
    r"code2wav\.pre_transformer\.layers\.L\.(input_layernorm|post_attention_layernorm)\.weight",
    r"code2wav\.pre_transformer\.layers\.L\.self_attn\.(q|k|v|o)_proj\.weight",
    r"code2wav\.pre_transformer\.layers\.L\.mlp\.(gate|up|down)_proj\.weight",
    r"code2wav\.pre_transformer\.layers\.L\.(self_attn|mlp)_layer_scale\.scale",
    r"code2wav\.upsample\.L\.0\.conv\.(weight|bias)",
    r"code2wav\.upsample\.L\.1\.(gamma|norm\.weight|norm\.bias|pwconv[12]\.weight|pwconv[12]\.bias|dwconv\.conv\.weight|dwconv\.conv\.bias)",
    r"code2wav\.decoder\.0\.conv\.(weight|bias)",
    r"code2wav\.decoder\.L\.block\.0\.(alpha|beta)",
    r"code2wav\.decoder\.L\.block\.1\.conv\.(weight|bias)",
    r"code2wav\.decoder\.L\.block\.[234]\.(act1|act2)\.(alpha|beta)",
    r"code2wav\.decoder\.L\.block\.[234]\.(conv1|conv2)\.conv\.(weight|bias)",
    r"code2wav\.decoder\.5\.(alpha|beta)",
    r"code2wav\.decoder\.6\.conv\.(weight|bias)",
]
_PUBLISHED_REGEXES = [re.compile(p.replace("L", r"\d+").replace("E", r"\d+") + "$") for p in _PUBLISHED_PATTERNS]


def _published_names(directory: Path) -> dict[str, str]:
    return builder.tensor_names(directory)


def test_shards_hold_the_published_per_expert_names_and_every_published_kind(qwen3_tiny_checkpoint):
    weight_map = _published_names(qwen3_tiny_checkpoint)
    shards = set(weight_map.values())
    assert len(shards) > 1 and all((qwen3_tiny_checkpoint / shard).is_file() for shard in shards)
    unmatched = [name for name in weight_map if not any(regex.match(name) for regex in _PUBLISHED_REGEXES)]
    assert unmatched == []
    unused = [p for p, regex in zip(_PUBLISHED_PATTERNS, _PUBLISHED_REGEXES) if not any(map(regex.match, weight_map))]
    assert unused == []
    # 4 experts x 3 layers x (gate, up, down) in the Thinker; 4 x 2 x 3 in the Talker
    assert sum(".mlp.experts." in n and n.startswith("thinker.") for n in weight_map) == 4 * 3 * 3
    assert sum(".mlp.experts." in n and n.startswith("talker.") for n in weight_map) == 4 * 2 * 3


def test_published_name_mapping_equals_what_save_pretrained_wrote(qwen3_tiny_checkpoint):
    from safetensors import safe_open

    on_disk = {}
    for name, shard in _published_names(qwen3_tiny_checkpoint).items():
        with safe_open(str(qwen3_tiny_checkpoint / shard), "pt") as handle:
            on_disk[name] = tuple(handle.get_slice(name).get_shape())
    with torch.device("meta"):
        model = Qwen3OmniMoeForConditionalGeneration(builder.reference_config("tiny"))
    assert builder.published_tensor_shapes(model.state_dict()) == on_disk


def test_config_json_is_the_published_spelling_with_every_field(qwen3_tiny_checkpoint):
    raw = json.loads((qwen3_tiny_checkpoint / "config.json").read_text())
    expected = published_file_layout(PRESETS["tiny"].config)
    expected["transformers_version"] = transformers.__version__
    assert raw == expected
    thinker_text = raw["thinker_config"]["text_config"]
    assert "rope_parameters" not in thinker_text and thinker_text["rope_theta"] == 1000000
    assert thinker_text["rope_scaling"]["mrope_section"] == [6, 5, 5] and thinker_text["rope_scaling"]["interleaved"]
    assert raw["talker_config"]["text_config"]["num_experts"] == 4
    # the fields the reference config classes lack
    assert raw["thinker_config"]["vision_start_token_id"] == 151652
    assert raw["talker_config"]["text_config"]["shared_expert_intermediate_size"] == 32
    assert raw["talker_config"]["spatial_merge_size"] == 2
    assert json.loads((qwen3_tiny_checkpoint / "generation_config.json").read_text())["eos_token_id"] == [151645, 151643]


def test_transformers_reads_the_published_spelling_to_the_builders_config(qwen3_tiny_checkpoint):
    loaded = AutoConfig.from_pretrained(qwen3_tiny_checkpoint)
    built = builder.reference_config("tiny")
    for section in ("thinker_config.text_config", "talker_config.text_config", "talker_config.code_predictor_config",
                    "code2wav_config"):
        a, b = built, loaded
        for part in section.split("."):
            a, b = getattr(a, part), getattr(b, part)
        assert a.rope_parameters["rope_theta"] == b.rope_parameters["rope_theta"], section
        if "mrope_section" in a.rope_parameters:
            assert a.rope_parameters["mrope_section"] == b.rope_parameters["mrope_section"], section
    assert loaded.talker_config.text_config.num_experts == 4
    assert loaded.thinker_config.vision_start_token_id == 151652
    assert loaded.talker_config.spatial_merge_size == 2
    assert loaded.talker_config.text_config.shared_expert_intermediate_size == 32


# --- tokenizer, processor, chat template ---------------------------------------------------------------


def test_tokenizer_special_ids_equal_the_configs(qwen3_tiny_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(qwen3_tiny_checkpoint)
    raw = json.loads((qwen3_tiny_checkpoint / "config.json").read_text())
    for path, token in builder.CONFIG_TOKEN_FIELDS.items():
        section = raw
        for key in path[:-1]:
            section = section[key]
        assert tokenizer.convert_tokens_to_ids(token) == section[path[-1]], (path, token)
        assert tokenizer.encode(token, add_special_tokens=False) == [section[path[-1]]], token
    # the Talker's copies of the thinker ids agree too
    for key in ("audio_token_id", "audio_start_token_id", "audio_end_token_id", "image_token_id", "video_token_id",
                "vision_start_token_id"):
        assert raw["talker_config"][key] == raw["thinker_config"][key], key
    for offset, (content, _) in enumerate(builder.ADDED_TOKENS):
        assert tokenizer.convert_tokens_to_ids(content) == builder.FIRST_ADDED_ID + offset
    assert len(builder.ADDED_TOKENS) == 33 and builder.FIRST_ADDED_ID + 32 == 151675
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    text = "Hello, world! 你好"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_processor_renders_and_tokenizes_text_image_and_audio(qwen3_tiny_checkpoint):
    processor = AutoProcessor.from_pretrained(qwen3_tiny_checkpoint)
    assert type(processor).__name__ == "Qwen3OmniMoeProcessor"
    # the flat published preprocessor_config.json configures all three front ends (no video file ships)
    for vision in (processor.image_processor, processor.video_processor):
        assert (vision.patch_size, vision.merge_size, vision.temporal_patch_size) == (16, 2, 2)
        assert tuple(vision.image_mean) == (0.5, 0.5, 0.5)
        assert (vision.size["shortest_edge"], vision.size["longest_edge"]) == (3136, 12845056)
    features = processor.feature_extractor
    assert (features.feature_size, features.sampling_rate, features.hop_length, features.n_fft) == (128, 16000, 160, 400)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    audio = np.zeros(16000, dtype=np.float32)  # 1 s at 16 kHz
    conversation = [
        {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "audio", "audio": audio},
                                     {"type": "text", "text": "What is this?"}]},
    ]
    rendered = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|><|audio_start|><|audio_pad|><|audio_end|>What is this?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    # a 64x64 image in 16-pixel patches is a 4x4 grid, merged 2x2: 4 image tokens;
    # 1 s is 100 mel frames, one AuT chunk: 13 audio tokens
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert ids.count(151655) == 4 and ids.count(151675) == 13
    start = ids.index(151652)
    assert ids[start: start + 6] == [151652] + [151655] * 4 + [151653]
    audio_start = ids.index(151669)
    assert ids[audio_start: audio_start + 15] == [151669] + [151675] * 13 + [151670]
    assert ids[-3:] == [151644, 77091, 198]  # <|im_start|>assistant\n


def test_chat_template_numbers_media_and_renders_assistant_turns(qwen3_tiny_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(qwen3_tiny_checkpoint)
    template = json.loads((qwen3_tiny_checkpoint / "chat_template.json").read_text())["chat_template"]
    conversation = [
        {"role": "user", "content": [{"type": "audio", "audio": "a.wav"}, {"type": "video", "video": "v.mp4"},
                                     {"type": "audio", "audio": "b.wav"}]},
        {"role": "assistant", "content": "Two clips."},
        {"role": "user", "content": "Thanks"},
    ]
    rendered = tokenizer.apply_chat_template(conversation, chat_template=template, tokenize=False,
                                             add_generation_prompt=False, add_audio_id=True, add_vision_id=True)
    assert rendered == (
        "<|im_start|>user\nAudio 1: <|audio_start|><|audio_pad|><|audio_end|>"
        "Video 1: <|vision_start|><|video_pad|><|vision_end|>Audio 2: <|audio_start|><|audio_pad|><|audio_end|>"
        "<|im_end|>\n<|im_start|>assistant\nTwo clips.<|im_end|>\n<|im_start|>user\nThanks<|im_end|>\n"
    )


# --- omni's parser against the reference config ---------------------------------------------------------


def test_omni_load_config_equals_the_reference_config(qwen3_tiny_checkpoint):
    ours = load_config(qwen3_tiny_checkpoint)
    ref = AutoConfig.from_pretrained(qwen3_tiny_checkpoint)
    thinker_text, talker_text = ref.thinker_config.text_config, ref.talker_config.text_config
    for mine, theirs in ((ours.thinker.text, thinker_text), (ours.talker.text, talker_text)):
        assert mine.head_dim == theirs.head_dim
        assert list(mine.mrope_section) == theirs.rope_parameters["mrope_section"]
        assert mine.mrope_interleaved is bool(theirs.rope_parameters["interleaved"])
        assert mine.rope_theta == theirs.rope_parameters["rope_theta"]
        assert (mine.hidden_size, mine.num_layers, mine.num_attention_heads, mine.num_kv_heads) == (
            theirs.hidden_size, theirs.num_hidden_layers, theirs.num_attention_heads, theirs.num_key_value_heads)
        assert (mine.num_experts, mine.num_experts_per_token, mine.moe_intermediate_size, mine.norm_topk_prob) == (
            theirs.num_experts, theirs.num_experts_per_tok, theirs.moe_intermediate_size, theirs.norm_topk_prob)
        assert mine.vocab_size == theirs.vocab_size
    assert ours.thinker.text.vocab_size == 152064
    assert ours.talker.text.shared_expert_intermediate_size == talker_text.shared_expert_intermediate_size == 32
    talker = ref.talker_config
    assert ours.talker.num_code_groups == talker.num_code_groups == talker.code_predictor_config.num_code_groups == 16
    assert ours.talker.accept_hidden_layer == talker.accept_hidden_layer == 2
    assert ours.talker.accept_hidden_layer <= ours.thinker.text.num_layers
    assert ours.talker.position_id_per_seconds == talker.position_id_per_seconds == 13
    assert ours.thinker.position_id_per_seconds == ref.thinker_config.position_id_per_seconds == 13
    assert ours.talker.spatial_merge_size == talker.spatial_merge_size
    assert ours.talker.thinker_hidden_size == talker.thinker_hidden_size == ours.thinker.text.hidden_size
    assert (ours.talker.codec_bos_id, ours.talker.codec_eos_id, ours.talker.codec_pad_id, ours.talker.codec_nothink_id,
            ours.talker.codec_think_bos_id, ours.talker.codec_think_eos_id) == (
        talker.codec_bos_id, talker.codec_eos_token_id, talker.codec_pad_id, talker.codec_nothink_id,
        talker.codec_think_bos_id, talker.codec_think_eos_id) == (2149, 2150, 2148, 2155, 2156, 2157)
    assert ours.talker.speaker_ids == talker.speaker_id == {"chelsie": 2301, "ethan": 2302, "aiden": 2303}
    ids = ours.thinker.token_ids
    assert (ids.audio, ids.image, ids.video, ids.audio_start, ids.vision_start) == (
        ref.thinker_config.audio_token_id, ref.thinker_config.image_token_id, ref.thinker_config.video_token_id,
        ref.thinker_config.audio_start_token_id, ref.thinker_config.vision_start_token_id)
    assert (ids.im_start, ids.im_end, ids.tts_pad, ids.tts_bos, ids.tts_eos, ids.system, ids.user, ids.assistant) == (
        ref.im_start_token_id, ref.im_end_token_id, ref.tts_pad_token_id, ref.tts_bos_token_id, ref.tts_eos_token_id,
        ref.system_token_id, ref.user_token_id, ref.assistant_token_id)
    assert (ids.audio_end, ids.vision_end) == (151670, 151653)
    predictor, ref_predictor = ours.talker.code_predictor, talker.code_predictor_config
    assert (predictor.hidden_size, predictor.num_layers, predictor.head_dim, predictor.vocab_size, predictor.rope_theta) == (
        ref_predictor.hidden_size, ref_predictor.num_hidden_layers, ref_predictor.head_dim, ref_predictor.vocab_size,
        ref_predictor.rope_parameters["rope_theta"])
    vision, ref_vision = ours.thinker.vision, ref.thinker_config.vision_config
    assert (vision.depth, vision.hidden_size, vision.patch_size, vision.num_position_embeddings,
            list(vision.deepstack_visual_indexes)) == (
        ref_vision.depth, ref_vision.hidden_size, ref_vision.patch_size, ref_vision.num_position_embeddings,
        list(ref_vision.deepstack_visual_indexes))
    audio, ref_audio = ours.thinker.audio, ref.thinker_config.audio_config
    assert (audio.d_model, audio.num_layers, audio.n_window, audio.n_window_infer, audio.downsample_hidden_size,
            audio.output_dim) == (ref_audio.d_model, ref_audio.encoder_layers, ref_audio.n_window,
                                  ref_audio.n_window_infer, ref_audio.downsample_hidden_size, ref_audio.output_dim)
    code2wav, ref_code2wav = ours.code2wav, ref.code2wav_config
    assert (code2wav.hidden_size, code2wav.num_layers, code2wav.num_quantizers, code2wav.codebook_size,
            code2wav.sliding_window, code2wav.decoder_dim, list(code2wav.upsample_rates),
            list(code2wav.upsampling_ratios), code2wav.rope_theta) == (
        ref_code2wav.hidden_size, ref_code2wav.num_hidden_layers, ref_code2wav.num_quantizers,
        ref_code2wav.codebook_size, ref_code2wav.sliding_window, ref_code2wav.decoder_dim,
        list(ref_code2wav.upsample_rates), list(ref_code2wav.upsampling_ratios),
        ref_code2wav.rope_parameters["rope_theta"])
    assert code2wav.samples_per_frame == 1920


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_preset_rope_sections_count_as_the_interleaved_rope_assigns_them(preset):
    # transformers' apply_interleaved_mrope: H at j % 3 == 1 with j < 3*h, W at j % 3 == 2 with j < 3*w, T elsewhere.
    parsed = parse_config(PRESETS[preset].config)
    for decoder in (parsed.thinker.text, parsed.talker.text):
        t, h, w = decoder.mrope_section
        half = decoder.head_dim // 2
        counts = {"T": 0, "H": 0, "W": 0}
        for j in range(half):
            counts["H" if j % 3 == 1 and j < 3 * h else "W" if j % 3 == 2 and j < 3 * w else "T"] += 1
        assert counts == {"T": t, "H": h, "W": w}
        assert decoder.mrope_interleaved


# --- the published configuration ------------------------------------------------------------------


def test_published_instruct_parses_to_the_published_shapes():
    for raw in (PUBLISHED_INSTRUCT, published_file_layout(PUBLISHED_INSTRUCT)):
        parsed = parse_config(raw)
        text, talker = parsed.thinker.text, parsed.talker
        assert (text.num_layers, text.hidden_size, text.num_attention_heads, text.num_kv_heads, text.head_dim) == (
            48, 2048, 32, 4, 128)
        assert (text.num_experts, text.num_experts_per_token, text.moe_intermediate_size) == (128, 8, 768)
        assert text.shared_expert_intermediate_size == 0 and text.vocab_size == 152064
        assert text.mrope_section == (24, 20, 20) and text.mrope_interleaved
        assert (talker.text.num_layers, talker.text.num_experts, talker.text.num_experts_per_token) == (20, 128, 6)
        assert talker.text.shared_expert_intermediate_size == 768 and talker.text.moe_intermediate_size == 384
        assert (talker.code_predictor.num_layers, talker.num_code_groups, talker.accept_hidden_layer) == (5, 16, 24)
        assert parsed.code2wav.num_layers == 8 and parsed.code2wav.samples_per_frame == 1920
        assert parsed.thinker.vision.deepstack_visual_indexes == (8, 16, 24) and parsed.thinker.vision.depth == 27
        assert parsed.thinker.audio.num_layers == 32 and parsed.thinker.position_id_per_seconds == 13
        assert talker.speaker_ids == {"chelsie": 2301, "ethan": 2302, "aiden": 2303}
    assert parse_config(PUBLISHED_INSTRUCT) == parse_config(published_file_layout(PUBLISHED_INSTRUCT))


# Shapes from the published weight list ([DUMP]).
_PUBLISHED_SPOT_CHECK = {
    "thinker.model.embed_tokens.weight": (152064, 2048),
    "thinker.lm_head.weight": (152064, 2048),
    "thinker.model.layers.0.self_attn.q_proj.weight": (4096, 2048),
    "thinker.model.layers.47.self_attn.k_proj.weight": (512, 2048),
    "thinker.model.layers.47.self_attn.o_proj.weight": (2048, 4096),
    "thinker.model.layers.12.self_attn.q_norm.weight": (128,),
    "thinker.model.layers.47.mlp.gate.weight": (128, 2048),
    "thinker.model.layers.0.mlp.experts.0.gate_proj.weight": (768, 2048),
    "thinker.model.layers.47.mlp.experts.127.up_proj.weight": (768, 2048),
    "thinker.model.layers.47.mlp.experts.127.down_proj.weight": (2048, 768),
    "talker.model.codec_embedding.weight": (3072, 1024),
    "talker.codec_head.weight": (3072, 1024),
    "talker.model.layers.19.self_attn.q_proj.weight": (2048, 1024),
    "talker.model.layers.19.self_attn.k_proj.weight": (256, 1024),
    "talker.model.layers.0.mlp.gate.weight": (128, 1024),
    "talker.model.layers.19.mlp.experts.127.down_proj.weight": (1024, 384),
    "talker.model.layers.0.mlp.shared_expert.gate_proj.weight": (768, 1024),
    "talker.model.layers.0.mlp.shared_expert.down_proj.weight": (1024, 768),
    "talker.model.layers.19.mlp.shared_expert_gate.weight": (1, 1024),
    "talker.text_projection.linear_fc1.weight": (2048, 2048),
    "talker.hidden_projection.linear_fc2.weight": (1024, 2048),
    "talker.code_predictor.model.codec_embedding.14.weight": (2048, 1024),
    "talker.code_predictor.lm_head.0.weight": (2048, 1024),
    "talker.code_predictor.lm_head.14.weight": (2048, 1024),
    "talker.code_predictor.model.layers.4.self_attn.o_proj.weight": (1024, 2048),
    "talker.code_predictor.model.layers.4.mlp.down_proj.weight": (1024, 3072),
    "code2wav.code_embedding.weight": (32768, 1024),
    "code2wav.pre_transformer.layers.7.mlp_layer_scale.scale": (1024,),
    "code2wav.upsample.1.0.conv.weight": (1024, 1024, 2),
    "code2wav.upsample.1.1.dwconv.conv.weight": (1024, 1, 7),
    "code2wav.upsample.0.1.gamma": (1024,),
    "code2wav.decoder.0.conv.weight": (1536, 1024, 7),
    "code2wav.decoder.1.block.0.alpha": (1536,),
    "code2wav.decoder.1.block.1.conv.weight": (1536, 768, 16),
    "code2wav.decoder.2.block.1.conv.weight": (768, 384, 10),
    "code2wav.decoder.3.block.4.conv1.conv.weight": (192, 192, 7),
    "code2wav.decoder.4.block.1.conv.weight": (192, 96, 6),
    "code2wav.decoder.4.block.4.act2.beta": (96,),
    "code2wav.decoder.5.alpha": (96,),
    "code2wav.decoder.6.conv.weight": (1, 96, 7),
    "thinker.audio_tower.conv2d1.weight": (480, 1, 3, 3),
    "thinker.audio_tower.conv_out.weight": (1280, 7680),
    "thinker.audio_tower.layers.31.fc1.weight": (5120, 1280),
    "thinker.audio_tower.proj2.weight": (2048, 1280),
    "thinker.visual.patch_embed.proj.weight": (1152, 3, 2, 16, 16),
    "thinker.visual.pos_embed.weight": (2304, 1152),
    "thinker.visual.blocks.26.attn.qkv.weight": (3456, 1152),
    "thinker.visual.blocks.0.mlp.linear_fc1.weight": (4304, 1152),
    "thinker.visual.merger.ln_q.weight": (1152,),
    "thinker.visual.merger.mlp.0.weight": (4608, 4608),
    "thinker.visual.merger_list.0.ln_q.weight": (4608,),
    "thinker.visual.merger_list.2.mlp.2.weight": (2048, 4608),
}


def test_published_config_builds_to_the_published_weight_list():
    with torch.device("meta"):
        model = Qwen3OmniMoeForConditionalGeneration(builder.reference_config(Qwen3Preset("published", PUBLISHED_INSTRUCT, "4GB")))
    shapes = builder.published_tensor_shapes(model.state_dict())
    # [DUMP]: 15 shards, 28,010 tensors, 35,259,818,545 parameters
    assert len(shapes) == 28010
    assert sum(int(np.prod(shape)) for shape in shapes.values()) == 35_259_818_545
    assert {name: shapes.get(name) for name in _PUBLISHED_SPOT_CHECK} == _PUBLISHED_SPOT_CHECK
    unmatched = [name for name in shapes if not any(regex.match(name) for regex in _PUBLISHED_REGEXES)]
    assert unmatched == []


# --- command line and cache ----------------------------------------------------------------------------


def test_make_checkpoint_command_dispatches_the_qwen3_family(tmp_path, monkeypatch, capsys):
    from omni import cli

    calls = []
    monkeypatch.setattr(builder, "make_qwen3_checkpoint", lambda directory, **kw: calls.append((directory, kw)) or Path(directory))
    assert cli.main(["make-checkpoint", "--family", "qwen3", "--preset", "small", str(tmp_path / "ck"), "--seed", "5"]) == 0
    assert calls == [(str(tmp_path / "ck"), {"preset": "small", "seed": 5, "force": False})]
    assert "Qwen3-Omni" in capsys.readouterr().out
    assert cli.main(["make-checkpoint", "--family", "qwen3", "--preset", "7b", str(tmp_path / "x")]) == 2
    assert "presets tiny, small" in capsys.readouterr().err
    assert cli.main(["make-checkpoint", "--family", "qwen3", "--device", "cuda", str(tmp_path / "y")]) == 2
    assert calls and len(calls) == 1


def test_cached_checkpoint_family_dispatch(qwen3_tiny_checkpoint, monkeypatch):
    from omni.errors import OmniError
    from omni.tools import make_checkpoint

    assert make_checkpoint.cached_checkpoint("tiny", qwen3_tiny_checkpoint.parent, family="qwen3") == qwen3_tiny_checkpoint
    with pytest.raises(OmniError, match="qwen2_5 or qwen3"):
        make_checkpoint.cached_checkpoint("tiny", family="qwen4")
