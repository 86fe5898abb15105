"""Build a random-weight Qwen3-Omni checkpoint in the layout Qwen/Qwen3-Omni-30B-A3B-Instruct ships.

The weights come from transformers' own `Qwen3OmniMoeForConditionalGeneration`, built from its config
classes with every field given (`omni.tools.qwen3_presets`), and are written with `save_pretrained`:
transformers 5 fuses each MoE layer's experts in memory (`experts.gate_up_proj` [E, 2I, H],
`experts.down_proj` [E, H, I]) but writes them back per expert (`mlp.experts.E.gate_proj.weight` ...), the
names of the published shards; `check_published_tensor_names` refuses any other layout. Around the
weights go the files the published repo holds: config.json in the hub file's spelling
(`qwen3_presets.published_file_layout`), model.safetensors.index.json, generation_config.json, the
tokenizer (the real Qwen BPE ranks from the `dashscope` package plus Qwen3-Omni's 33 added tokens at their
published ids), chat_template.json and preprocessor_config.json.

Sources for the files around the weights (searched in stored public copies; the hub was not reachable):
- added tokens: vLLM's qwen3_omni_moe_thinker.py ids "Reference: .../Qwen3-Omni-30B-A3B-Instruct/blob/main/
  tokenizer_config.json" (find_string id 15215311653: <|audio_start|> 151669, <|audio_end|> 151670,
  <tts_pad> 151671, <tts_text_bos> 151672, <tts_text_eod> 151673, <tts_text_bos_single> 151674,
  <|audio_pad|> 151675), and a Rust port's list of the 33 added tokens in id order from 151643 (id
  57482978705); the special flags follow the Qwen3 tokenizer (tool, fim, repo, think tokens are not
  special; id 61807369713 shows the same 33 with the same flags for the Qwen3.5 vocabulary).
- preprocessor_config.json: a survey of the three official Qwen3-Omni repos' processor files (id
  56844528870: Whisper features 128 bins, n_fft 400, hop 160, 16 kHz, n_samples 4800000,
  nb_max_frames 30000; Qwen2VLImageProcessor, patch 16, temporal 2, merge 2, min/max pixels 3136 /
  12845056; processor_class Qwen3OmniMoeProcessor; "processor_config.json and
  video_preprocessor_config.json were not present"), and image mean/std 0.5 (id 24121306999).
- chat_template.json: NOT FOUND verbatim. `CHAT_TEMPLATE` is the Qwen3-VL-Instruct template (as its
  processor_config publishes it) with the audio branch Qwen3-ASR's published template uses
  (`<|audio_start|><|audio_pad|><|audio_end|>`, `add_audio_id` → "Audio N: "), both seen in stored copies;
  it renders text, image, audio and video the way Qwen3-Omni's processor expects (one placeholder token
  per item, expanded by the processor).
- generation_config.json: not found; eos = <|im_end|>, <|endoftext|>, pad = <|endoftext|> as the
  Qwen2.5-Omni builder writes (this project's choice).

Needs the `dev` extra (transformers, dashscope): this is test and benchmark tooling.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from omni.errors import OmniError
from omni.tools.make_checkpoint import (
    OWN_MARKER,
    _claim_target,
    build_once,
    write_tokenizer,
)
from omni.tools.qwen3_presets import PRESETS, Qwen3Preset, published_file_layout

FIRST_ADDED_ID = 151643

# Qwen3-Omni's added tokens in id order from 151643 (special: kept by skip_special_tokens=False only).
ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),  # 151652
    ("<|vision_end|>", True),  # 151653
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),  # 151655
    ("<|video_pad|>", True),  # 151656
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
    ("<|audio_start|>", True),  # 151669
    ("<|audio_end|>", True),  # 151670
    ("<tts_pad>", True),  # 151671
    ("<tts_text_bos>", True),  # 151672
    ("<tts_text_eod>", True),  # 151673
    ("<tts_text_bos_single>", True),  # 151674
    ("<|audio_pad|>", True),  # 151675
]

# The processor reads these names from the tokenizer.
PROCESSOR_TOKENS = {
    "image_token": "<|image_pad|>",
    "audio_token": "<|audio_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
}

# config.json id fields and the token each names: the tests check the tokenizer agrees.
CONFIG_TOKEN_FIELDS = {
    ("thinker_config", "audio_token_id"): "<|audio_pad|>",
    ("thinker_config", "image_token_id"): "<|image_pad|>",
    ("thinker_config", "video_token_id"): "<|video_pad|>",
    ("thinker_config", "audio_start_token_id"): "<|audio_start|>",
    ("thinker_config", "audio_end_token_id"): "<|audio_end|>",
    ("thinker_config", "vision_start_token_id"): "<|vision_start|>",
    ("thinker_config", "vision_end_token_id"): "<|vision_end|>",
    ("im_start_token_id",): "<|im_start|>",
    ("im_end_token_id",): "<|im_end|>",
    ("tts_pad_token_id",): "<tts_pad>",
    ("tts_bos_token_id",): "<tts_text_bos>",
    ("tts_eos_token_id",): "<tts_text_eod>",
    ("system_token_id",): "system",
    ("user_token_id",): "user",
    ("assistant_token_id",): "assistant",
}

CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) %}"
    "{%- set video_count = namespace(value=0) %}"
    "{%- set audio_count = namespace(value=0) %}"
    "{%- macro render_content(content, do_count) %}"
    "{%- if content is string %}{{- content }}"
    "{%- else %}{%- for item in content %}"
    "{%- if item.type == 'image' or 'image' in item or 'image_url' in item %}"
    "{%- if do_count %}{%- set image_count.value = image_count.value + 1 %}{%- endif %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif item.type == 'audio' or 'audio' in item or 'audio_url' in item %}"
    "{%- if do_count %}{%- set audio_count.value = audio_count.value + 1 %}{%- endif %}"
    "{%- if add_audio_id %}Audio {{ audio_count.value }}: {% endif -%}"
    "<|audio_start|><|audio_pad|><|audio_end|>"
    "{%- elif item.type == 'video' or 'video' in item %}"
    "{%- if do_count %}{%- set video_count.value = video_count.value + 1 %}{%- endif %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in item %}{{- item.text }}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{%- endmacro %}"
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- render_content(messages[0].content, false) + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + render_content(messages[0].content, false) + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + render_content(message.content, true) + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' + render_content(message.content or '', false) }}"
    "{%- for tool_call in message.tool_calls or [] %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + tool_call.name + '\", \"arguments\": ' }}"
    "{{- (tool_call.arguments if tool_call.arguments is string else tool_call.arguments | tojson) + '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + render_content(message.content, true) + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# The published preprocessor_config.json, field for field (see the module docstring's sources);
# chunk_length, dither, padding fields: WhisperFeatureExtractor's values for n_samples 4800000 (300 s).
PREPROCESSOR_CONFIG = {
    "processor_class": "Qwen3OmniMoeProcessor",
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128,
    "sampling_rate": 16000,
    "hop_length": 160,
    "n_fft": 400,
    "chunk_length": 300,
    "n_samples": 4800000,
    "nb_max_frames": 30000,
    "dither": 0.0,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": True,
    "image_processor_type": "Qwen2VLImageProcessor",
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
}

# A random Code2Wav is near-silent with the reference init (~4e-7 peak, formats-and-protocols.md): its
# convolutions start at normal(0, 0.02) whatever their fan-in, so each of the upsampler's and decoder's
# ~10 convolutions on the main path shrinks the signal. `_fix_code2wav_init` gives every convolution of
# the upsampler and decoder a variance-preserving normal(0, 1/sqrt(fan-in)) (fan-in counted per output
# sample: in_channels x kernel, divided by the stride for transposed convolutions), and then
# tames the two things that grow instead: each residual unit's 1x1 output convolution is scaled by
# _CODE2WAV_RESIDUAL_GAIN (three residual units per block otherwise multiply the level ~3.5x per block),
# and the final 1-channel convolution by _CODE2WAV_OUTPUT_GAIN. Measured on random codes (with the varied
# constants of `_vary_constant_parameters`): std ~0.10, peak 0.38-0.45 at tiny and small, and different
# codes give different audio (tests check a peak of 0.05-0.95).
_CODE2WAV_RESIDUAL_GAIN = 0.25
_CODE2WAV_OUTPUT_GAIN = 0.04


def build_reference_model(preset: str | Qwen3Preset = "tiny", seed: int = 0):
    """transformers' `Qwen3OmniMoeForConditionalGeneration` of `preset` with seeded random weights (fp32,
    eval mode): what `make_qwen3_checkpoint` writes, and what tests compare a loaded checkpoint to."""
    try:
        import torch
        from transformers import Qwen3OmniMoeForConditionalGeneration
    except ImportError as exc:
        raise OmniError("make-checkpoint needs the dev extra: pip install -e '.[dev]'") from exc
    spec = PRESETS[preset] if isinstance(preset, str) else preset
    config = reference_config(spec)
    torch.manual_seed(seed)
    model = Qwen3OmniMoeForConditionalGeneration(config).eval()
    generator = torch.Generator().manual_seed(seed + 1)  # the fixes draw from their own stream
    _init_talker_experts(model.talker, config.talker_config.text_config.initializer_range, generator)
    _vary_constant_parameters(model, generator)
    _fix_code2wav_init(model.code2wav, generator)
    return model


def reference_config(preset: str | Qwen3Preset = "tiny"):
    """transformers' `Qwen3OmniMoeConfig` of `preset`, every field given. The three fields the reference
    config classes lack but its model code reads (thinker `vision_start_token_id`, talker text
    `shared_expert_intermediate_size`, talker `spatial_merge_size`) are in the preset dict and travel as
    extra attributes; `_check_quirk_fields` proves they arrived."""
    from transformers import Qwen3OmniMoeConfig

    spec = PRESETS[preset] if isinstance(preset, str) else preset
    raw = dict(spec.config)
    config = Qwen3OmniMoeConfig(**{k: v for k, v in raw.items() if k not in ("architectures", "transformers_version")})
    config.architectures = list(raw["architectures"])
    _check_quirk_fields(config, raw)
    return config


def _check_quirk_fields(config, raw: dict[str, Any]) -> None:
    expected = {
        "thinker vision_start_token_id": (config.thinker_config, raw["thinker_config"]["vision_start_token_id"],
                                          "vision_start_token_id"),
        "talker spatial_merge_size": (config.talker_config, raw["talker_config"]["spatial_merge_size"],
                                      "spatial_merge_size"),
        "talker text shared_expert_intermediate_size": (
            config.talker_config.text_config,
            raw["talker_config"]["text_config"]["shared_expert_intermediate_size"],
            "shared_expert_intermediate_size",
        ),
    }
    for what, (section, value, name) in expected.items():
        if getattr(section, name, None) != value:
            raise OmniError(f"the reference config lost {what} ({getattr(section, name, None)!r}, expected {value!r})")


def _init_talker_experts(talker, std: float, generator) -> None:
    """The reference's `_init_weights` covers the Thinker's MoE classes only: the Talker's experts stay
    `torch.empty` (whatever memory held: different every build, sometimes ~1e38) and its router
    `torch.zeros` (every expert ties, so top-k routing is degenerate). Both get the Thinker's init,
    normal(0, initializer_range)."""
    import torch

    with torch.no_grad():
        for name, parameter in talker.named_parameters():
            if ".mlp.experts." in name or name.endswith(".mlp.gate.weight"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def _vary_constant_parameters(model, generator) -> None:
    """Every parameter the reference initialises to one constant (norm weights 1, biases 0, SnakeBeta
    alpha/beta 0, layer scales 0.01, ConvNeXt gamma 1e-6) gets random values around it, so that a parity
    test fails when an implementation swaps, drops or misreads such a tensor. Zeros become
    normal(0, 0.02); a constant c becomes c * (1 + 0.1 normal). The Code2Wav's ConvNeXt gamma and the
    pre-transformer's layer scales are raised to ~0.1 first: at 1e-6 and 0.01 those blocks barely touch
    the output, and a test could not tell them from identity."""
    import torch

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            values = parameter.detach()
            if values.numel() < 2 or not torch.all(values == values.flatten()[0]):
                continue
            constant = float(values.flatten()[0])
            noise = torch.randn(parameter.shape, generator=generator)
            if name.startswith("code2wav.") and (name.endswith(".gamma") or "layer_scale" in name):
                constant = 0.1
            if constant == 0.0:
                parameter.copy_(noise * 0.02)
            else:
                parameter.copy_(constant * (1.0 + 0.1 * noise))


def _fix_code2wav_init(code2wav, generator) -> None:
    import math

    import torch

    with torch.no_grad():
        for part in (code2wav.upsample, code2wav.decoder):
            for module in part.modules():
                if isinstance(module, torch.nn.ConvTranspose1d):
                    fan_in = module.in_channels // module.groups * module.kernel_size[0] / module.stride[0]
                elif isinstance(module, torch.nn.Conv1d):
                    fan_in = module.in_channels // module.groups * module.kernel_size[0]
                else:
                    continue
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / math.sqrt(fan_in))
        for module in code2wav.decoder.modules():
            if type(module).__name__ == "Qwen3OmniMoeCode2WavDecoderResidualUnit":
                module.conv2.conv.weight.mul_(_CODE2WAV_RESIDUAL_GAIN)
        code2wav.decoder[-1].conv.weight.mul_(_CODE2WAV_OUTPUT_GAIN)


def make_qwen3_checkpoint(directory: str | os.PathLike, preset: str | Qwen3Preset = "tiny", seed: int = 0,
                          force: bool = False) -> Path:
    """Write a random-weight Qwen3-Omni checkpoint of `preset` to `directory`. An earlier make-checkpoint
    output there is replaced; any other non-empty directory only with `force`."""
    import transformers
    from transformers import GenerationConfig

    spec = PRESETS[preset] if isinstance(preset, str) else preset
    target = Path(directory)
    _claim_target(target, force)
    (target / OWN_MARKER).write_text(json.dumps(
        {"written_by": "omni make-checkpoint", "family": "qwen3", "preset": spec.name, "seed": seed,
         "random_weights": True},
        indent=2) + "\n", encoding="utf-8")

    model = build_reference_model(spec, seed)
    model.save_pretrained(target, max_shard_size=spec.max_shard_size)
    del model
    check_published_tensor_names(target)

    raw = published_file_layout(spec.config)
    raw["transformers_version"] = transformers.__version__
    (target / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    GenerationConfig(eos_token_id=[151645, 151643], pad_token_id=151643).save_pretrained(target)
    write_qwen3_tokenizer(target)
    (target / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n",
                                                     encoding="utf-8")
    (target / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2) + "\n",
                                               encoding="utf-8")
    return target


# transformers 5 module paths -> the published checkpoint's tensor-name prefixes.
_PUBLISHED_PREFIXES = (
    ("thinker.model.language_model.", "thinker.model."),
    ("thinker.model.visual.", "thinker.visual."),
    ("thinker.model.audio_tower.", "thinker.audio_tower."),
)


def published_tensor_shapes(state: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The published checkpoint's tensor names and shapes for a transformers 5 model's `state_dict()`
    (meta tensors work): the Thinker's towers and decoder move to their published prefixes, and each
    fused expert tensor (`experts.gate_up_proj` [E, 2I, H], `experts.down_proj` [E, H, I]) becomes E
    per-expert `gate_proj`/`up_proj` [I, H] and `down_proj` [H, I] weights. The tests prove this equals
    what `save_pretrained` writes, so it can name the weights of a model too large to write."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, tensor in state.items():
        for memory_prefix, published_prefix in _PUBLISHED_PREFIXES:
            if name.startswith(memory_prefix):
                name = published_prefix + name[len(memory_prefix):]
                break
        shape = tuple(tensor.shape)
        if name.endswith(".mlp.experts.gate_up_proj"):
            stem = name[: -len("gate_up_proj")]
            experts, double_intermediate, hidden = shape
            for expert in range(experts):
                shapes[f"{stem}{expert}.gate_proj.weight"] = (double_intermediate // 2, hidden)
                shapes[f"{stem}{expert}.up_proj.weight"] = (double_intermediate // 2, hidden)
        elif name.endswith(".mlp.experts.down_proj"):
            stem = name[: -len("down_proj")]
            experts, hidden, intermediate = shape
            for expert in range(experts):
                shapes[f"{stem}{expert}.down_proj.weight"] = (hidden, intermediate)
        else:
            shapes[name] = shape
    return shapes


def tensor_names(directory: Path) -> dict[str, str]:
    """Tensor name -> shard file, from model.safetensors.index.json."""
    index = json.loads((Path(directory) / "model.safetensors.index.json").read_text(encoding="utf-8"))
    return dict(index["weight_map"])


def check_published_tensor_names(directory: Path) -> None:
    """Refuse shards whose names are not the published layout: per-expert MoE weights under
    `thinker.model.layers` / `talker.model.layers` (no fused `gate_up_proj`, no `language_model`)."""
    bad = [name for name in tensor_names(directory)
           if "gate_up_proj" in name or ".language_model." in name
           or (".mlp.experts." in name and not name.endswith(("gate_proj.weight", "up_proj.weight", "down_proj.weight")))]
    if bad:
        raise OmniError(
            f"save_pretrained wrote {len(bad)} tensors outside the published per-expert layout (e.g. {bad[0]}); "
            "this transformers version needs its own writer"
        )


def write_qwen3_tokenizer(target: Path) -> None:
    """The tokenizer files (omni.tools.make_checkpoint.write_tokenizer) with Qwen3-Omni's added tokens at
    their published ids and its processor's token attributes."""
    write_tokenizer(target, ADDED_TOKENS, {
        "additional_special_tokens": [content for content, special in ADDED_TOKENS[1:] if special],
        "extra_special_tokens": dict(PROCESSOR_TOKENS),
        "model_max_length": 65536,  # the Thinker's max_position_embeddings; the published value not found
        "processor_class": "Qwen3OmniMoeProcessor",
        **PROCESSOR_TOKENS,
    })


def cached_qwen3_checkpoint(preset: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The Qwen3-Omni checkpoint of `preset`, built once and reused while the code that builds it is
    unchanged. Default cache: $OMNI_TEST_CACHE or .omni-cache/ in the repository."""
    import transformers

    package = Path(__file__).resolve().parent.parent  # omni/
    cache = Path(cache_dir or os.environ.get("OMNI_TEST_CACHE") or package.parent / ".omni-cache")
    digest = hashlib.sha256(transformers.__version__.encode())
    for module in ("tools/qwen3_checkpoint.py", "tools/qwen3_presets.py", "tools/make_checkpoint.py", "tokenizer.py"):
        digest.update((package / module).read_bytes())
    return build_once(cache / f"qwen3-{preset}-{digest.hexdigest()[:12]}",
                      lambda scratch: make_qwen3_checkpoint(scratch, preset=preset, force=True))
