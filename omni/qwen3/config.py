"""Frozen configuration dataclasses for a Qwen3-Omni checkpoint (`model_type` "qwen3_omni_moe"), parsed
from its config.json in one place.

Two spellings of config.json exist: the file Qwen published (transformers 4.57 era: `rope_theta` +
`rope_scaling`, the Talker's `num_experts`) and files written by transformers 5 (`rope_parameters`,
`num_local_experts`). Both parse here. A field a file leaves out takes the default of transformers'
`Qwen3OmniMoe*Config` class (the `_REFERENCE_*` tables below), so that a sparse file means the same model
to omni as to the reference. Those class defaults differ from the published model in many places
(num_code_groups 32 vs 16, accept_hidden_layer 18 vs 24, position_id_per_seconds 25 vs 13, the codec and
audio token ids); the published values are in `omni.tools.qwen3_presets`, and the checkpoint
builder writes every field explicitly so that no default is ever taken by accident.

Three fields the reference's config classes lack but its model code reads (or the published file carries):
`vision_start_token_id` on the Thinker, `shared_expert_intermediate_size` on the Talker's text config and
`spatial_merge_size` on the Talker; `head_dim` is not a class field either, and the published 2048-wide
Thinker with 32 heads uses head_dim 128, not 2048/32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omni.errors import CheckpointError

MODEL_TYPE = "qwen3_omni_moe"


@dataclass(frozen=True)
class MoEDecoderConfig:
    """A Qwen3 decoder stack with q/k RMSNorm and sparse MoE feed-forward layers (the Thinker's language
    model and the Talker's). A layer is sparse when `num_experts > 0`, it is not in `mlp_only_layers`, and
    `(layer + 1) % decoder_sparse_step == 0`; other layers use a dense SwiGLU of `intermediate_size`."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: tuple[int, int, int]
    mrope_interleaved: bool  # frequencies assigned T,H,W,T,H,W,... instead of in three blocks
    max_position_embeddings: int
    num_experts: int
    num_experts_per_token: int
    moe_intermediate_size: int
    norm_topk_prob: bool  # renormalise the top-k router probabilities to sum to one
    decoder_sparse_step: int
    mlp_only_layers: tuple[int, ...]
    shared_expert_intermediate_size: int  # 0: no shared expert (the Thinker); the Talker has a gated one
    attention_bias: bool = False
    hidden_act: str = "silu"

    def is_sparse(self, layer: int) -> bool:
        return (
            self.num_experts > 0
            and layer not in self.mlp_only_layers
            and (layer + 1) % self.decoder_sparse_step == 0
        )


@dataclass(frozen=True)
class DenseDecoderConfig:
    """The code predictor's small dense Qwen3 decoder (q/k RMSNorm, 1-D rope)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    num_code_groups: int
    attention_bias: bool = False
    hidden_act: str = "silu"


@dataclass(frozen=True)
class AudioEncoderConfig:
    """AuT: three stride-2 Conv2d over mel bins, a Whisper-like encoder, windowed attention."""

    num_mel_bins: int
    num_layers: int
    num_heads: int
    ffn_dim: int
    d_model: int
    activation: str
    max_source_positions: int
    n_window: int  # half the conv chunk, in mel frames: chunks are 2 * n_window frames
    n_window_infer: int  # attention window, in mel frames
    conv_chunksize: int  # how many chunks the reference convolves at once (memory only, not maths)
    downsample_hidden_size: int
    output_dim: int
    scale_embedding: bool


@dataclass(frozen=True)
class VisionEncoderConfig:
    """The Qwen3-VL vision tower: patch 16, learned position table, deepstack mergers."""

    depth: int
    hidden_size: int
    hidden_act: str
    intermediate_size: int
    num_heads: int
    in_channels: int
    patch_size: int
    spatial_merge_size: int
    temporal_patch_size: int
    out_hidden_size: int
    num_position_embeddings: int
    deepstack_visual_indexes: tuple[int, ...]
    rope_theta: float = 10000.0


@dataclass(frozen=True)
class TokenIds:
    """Special token ids of the Qwen3-Omni vocabulary the prompt, rope index and Talker read."""

    audio: int
    image: int
    video: int
    audio_start: int
    audio_end: int
    vision_start: int
    vision_end: int
    im_start: int
    im_end: int
    system: int
    user: int
    assistant: int
    tts_pad: int
    tts_bos: int
    tts_eos: int


@dataclass(frozen=True)
class ThinkerConfig:
    text: MoEDecoderConfig
    vision: VisionEncoderConfig
    audio: AudioEncoderConfig
    token_ids: TokenIds
    position_id_per_seconds: int
    seconds_per_chunk: int
    tie_word_embeddings: bool = False

    @property
    def family(self) -> str:
        return MODEL_TYPE


@dataclass(frozen=True)
class TalkerConfig:
    text: MoEDecoderConfig
    code_predictor: DenseDecoderConfig
    token_ids: TokenIds
    num_code_groups: int
    thinker_hidden_size: int
    accept_hidden_layer: int  # which Thinker hidden state (0 = embeddings) feeds user media to the Talker
    codec_bos_id: int
    codec_eos_id: int
    codec_pad_id: int
    codec_nothink_id: int
    codec_think_bos_id: int
    codec_think_eos_id: int
    position_id_per_seconds: int
    spatial_merge_size: int
    speaker_ids: dict[str, int] = field(default_factory=dict)  # voice name (lower case) -> codec id

    @property
    def voices(self) -> list[str]:
        return sorted(self.speaker_ids)


@dataclass(frozen=True)
class Code2WavConfig:
    codebook_size: int
    num_quantizers: int
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    sliding_window: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    layer_scale_initial_scale: float
    upsample_rates: tuple[int, ...]  # the decoder's transposed-conv strides
    upsampling_ratios: tuple[int, ...]  # the ConvNeXt upsampler's strides before the decoder
    decoder_dim: int
    attention_bias: bool = False
    hidden_act: str = "silu"

    @property
    def samples_per_frame(self) -> int:
        product = 1
        for rate in (*self.upsampling_ratios, *self.upsample_rates):
            product *= rate
        return product


@dataclass(frozen=True)
class Qwen3OmniConfig:
    thinker: ThinkerConfig
    talker: TalkerConfig
    code2wav: Code2WavConfig
    enable_audio_output: bool = True
    checkpoint_dtype: str | None = None

    @property
    def family(self) -> str:
        return MODEL_TYPE


# ----------------------------------------------------------------------------------------------
# Defaults of transformers 5.24's Qwen3OmniMoe*Config classes, for fields a file leaves out.

_REFERENCE_TEXT = dict(
    vocab_size=3584, hidden_size=2048, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, head_dim=None, rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=32768,
    num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768, norm_topk_prob=True,
    decoder_sparse_step=1, mlp_only_layers=(), shared_expert_intermediate_size=0, attention_bias=False,
    hidden_act="silu",
)
_REFERENCE_TALKER_TEXT = dict(
    vocab_size=3072, hidden_size=1024, intermediate_size=2048, num_hidden_layers=20, num_attention_heads=16,
    num_key_value_heads=2, head_dim=None, rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=32768,
    num_experts=128, num_experts_per_tok=8, moe_intermediate_size=384, norm_topk_prob=False,
    decoder_sparse_step=1, mlp_only_layers=(), shared_expert_intermediate_size=None, attention_bias=False,
    hidden_act="silu",
)
_REFERENCE_CODE_PREDICTOR = dict(
    vocab_size=2048, hidden_size=1024, intermediate_size=3072, num_hidden_layers=5, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=32768,
    num_code_groups=32, attention_bias=False, hidden_act="silu",
)
_REFERENCE_AUDIO = dict(
    num_mel_bins=128, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, d_model=1280,
    activation_function="gelu", max_source_positions=1500, n_window=50, n_window_infer=800, conv_chunksize=500,
    downsample_hidden_size=480, output_dim=3584, scale_embedding=False,
)
_REFERENCE_VISION = dict(
    depth=27, hidden_size=1152, hidden_act="gelu_pytorch_tanh", intermediate_size=4304, num_heads=16,
    in_channels=3, patch_size=16, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=3584,
    num_position_embeddings=2304, deepstack_visual_indexes=(8, 16, 24),
)
_REFERENCE_THINKER = dict(
    position_id_per_seconds=25, audio_start_token_id=151647, audio_token_id=151646, image_token_id=151655,
    video_token_id=151656, user_token_id=872, seconds_per_chunk=2, tie_word_embeddings=False,
)
_REFERENCE_TALKER = dict(
    num_code_groups=32, thinker_hidden_size=2048, codec_eos_token_id=4198, accept_hidden_layer=18,
    codec_nothink_id=4203, codec_think_bos_id=4204, codec_think_eos_id=4205, codec_pad_id=4196,
    codec_bos_id=4197, position_id_per_seconds=25, spatial_merge_size=2,
)
_REFERENCE_CODE2WAV = dict(
    codebook_size=2048, hidden_size=1024, max_position_embeddings=8000, rope_theta=10000.0,
    num_attention_heads=16, num_key_value_heads=16, attention_bias=False, sliding_window=72,
    intermediate_size=3072, hidden_act="silu", layer_scale_initial_scale=0.01, rms_norm_eps=1e-5,
    num_hidden_layers=8, num_quantizers=16, upsample_rates=(8, 5, 4, 3), upsampling_ratios=(2, 2),
    decoder_dim=1536,
)
_REFERENCE_ROOT = dict(
    im_start_token_id=151644, im_end_token_id=151645, tts_pad_token_id=151671, tts_bos_token_id=151672,
    tts_eos_token_id=151673, system_token_id=8948, user_token_id=872, assistant_token_id=77091,
)
# Neither the thinker nor the talker config class declares these; the published file does (audio_end,
# vision_end) or the rope index hard-codes them.
_UNDECLARED_TOKEN_IDS = dict(audio_end_token_id=151670, vision_start_token_id=151652, vision_end_token_id=151653)


# ----------------------------------------------------------------------------------------------
# Parsing


def load_config(checkpoint_dir: str | Path) -> Qwen3OmniConfig:
    from omni.config import read_config_json

    raw, source = read_config_json(checkpoint_dir, "Qwen3-Omni")
    return parse_config(raw, source=source)


def parse_config(raw: dict[str, Any], source: str = "config.json") -> Qwen3OmniConfig:
    model_type = raw.get("model_type")
    if model_type != MODEL_TYPE:
        raise CheckpointError(
            f"{source} has model_type={model_type!r}; this parser reads Qwen3-Omni checkpoints "
            f"(model_type={MODEL_TYPE!r})"
        )
    thinker_raw = raw.get("thinker_config")
    if not isinstance(thinker_raw, dict):
        raise CheckpointError(f"{source} lacks the 'thinker_config' section a Qwen3-Omni config has")
    talker_raw = raw.get("talker_config") or {}
    token_ids = _token_ids(raw, thinker_raw, talker_raw)
    thinker = _parse_thinker(thinker_raw, token_ids, source)
    talker = _parse_talker(talker_raw, token_ids, source)
    code2wav = _parse_code2wav(raw.get("code2wav_config") or {}, source)
    dtype = raw.get("torch_dtype") or raw.get("dtype") or thinker_raw.get("torch_dtype") or thinker_raw.get("dtype")
    return Qwen3OmniConfig(
        thinker=thinker,
        talker=talker,
        code2wav=code2wav,
        enable_audio_output=bool(raw.get("enable_audio_output", True)),
        checkpoint_dtype=dtype if isinstance(dtype, str) else None,
    )


def _rope(raw: dict[str, Any], default_theta: float, source: str, where: str) -> tuple[float, dict[str, Any]]:
    """(theta, the rope parameters dict) from `rope_parameters` (transformers 5) or `rope_theta` +
    `rope_scaling` (the file Qwen published)."""
    params = dict(raw.get("rope_scaling") or {})
    params.update(raw.get("rope_parameters") or {})
    theta = params.get("rope_theta", raw.get("rope_theta", default_theta))
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type != "default":
        raise CheckpointError(
            f"{source}: {where} uses rope_type={rope_type!r}; Qwen3-Omni uses the default rope, the only one "
            "omni implements"
        )
    return float(theta), params


def _no_sliding_window(raw: dict[str, Any], source: str, where: str) -> None:
    if raw.get("use_sliding_window") or raw.get("sliding_window") is not None:
        raise CheckpointError(
            f"{source}: {where} sets a sliding window ({raw.get('sliding_window')}); Qwen3-Omni's decoders attend "
            "to the whole sequence and omni implements only that"
        )


def _moe_decoder(raw: dict[str, Any], defaults: dict[str, Any], source: str, where: str) -> MoEDecoderConfig:
    def get(key: str) -> Any:
        return raw.get(key, defaults[key])

    _no_sliding_window(raw, source, where)
    hidden_size = int(get("hidden_size"))
    num_heads = int(get("num_attention_heads"))
    head_dim = int(raw.get("head_dim") or defaults["head_dim"] or hidden_size // num_heads)
    theta, rope = _rope(raw, defaults["rope_theta"], source, where)
    # The reference silently falls back to [24, 20, 20] when mrope_section is missing; so does omni.
    section = tuple(int(s) for s in rope.get("mrope_section") or (24, 20, 20))
    if len(section) != 3 or sum(section) * 2 != head_dim:
        raise CheckpointError(
            f"{source}: {where} mrope_section={list(section)} must have 3 parts summing to head_dim/2 ({head_dim // 2})"
        )
    interleaved = bool(rope.get("interleaved", rope.get("mrope_interleaved", True)))
    num_experts = raw.get("num_experts", raw.get("num_local_experts", defaults["num_experts"]))
    shared = raw.get("shared_expert_intermediate_size", defaults["shared_expert_intermediate_size"])
    if shared is None:
        raise CheckpointError(
            f"{source}: {where} lacks shared_expert_intermediate_size; the Talker's shared expert needs it (the "
            "reference config class does not declare it either; the published file gives 768)"
        )
    kv_heads = raw.get("num_key_value_heads", defaults["num_key_value_heads"])
    return MoEDecoderConfig(
        vocab_size=int(get("vocab_size")),
        hidden_size=hidden_size,
        intermediate_size=int(get("intermediate_size")),
        num_layers=int(get("num_hidden_layers")),
        num_attention_heads=num_heads,
        num_kv_heads=int(kv_heads if kv_heads is not None else num_heads),
        head_dim=head_dim,
        rms_norm_eps=float(get("rms_norm_eps")),
        rope_theta=theta,
        mrope_section=(section[0], section[1], section[2]),
        mrope_interleaved=interleaved,
        max_position_embeddings=int(get("max_position_embeddings")),
        num_experts=int(num_experts),
        num_experts_per_token=int(get("num_experts_per_tok")),
        moe_intermediate_size=int(get("moe_intermediate_size")),
        norm_topk_prob=bool(get("norm_topk_prob")),
        decoder_sparse_step=int(get("decoder_sparse_step")),
        mlp_only_layers=tuple(int(i) for i in (raw.get("mlp_only_layers") or defaults["mlp_only_layers"])),
        shared_expert_intermediate_size=int(shared),
        attention_bias=bool(get("attention_bias")),
        hidden_act=str(get("hidden_act")),
    )


def _code_predictor(raw: dict[str, Any], source: str) -> DenseDecoderConfig:
    defaults = _REFERENCE_CODE_PREDICTOR

    def get(key: str) -> Any:
        return raw.get(key, defaults[key])

    where = "talker_config.code_predictor_config"
    _no_sliding_window(raw, source, where)
    theta, _ = _rope(raw, defaults["rope_theta"], source, where)
    num_heads = int(get("num_attention_heads"))
    kv_heads = raw.get("num_key_value_heads", defaults["num_key_value_heads"])
    return DenseDecoderConfig(
        vocab_size=int(get("vocab_size")),
        hidden_size=int(get("hidden_size")),
        intermediate_size=int(get("intermediate_size")),
        num_layers=int(get("num_hidden_layers")),
        num_attention_heads=num_heads,
        num_kv_heads=int(kv_heads if kv_heads is not None else num_heads),
        head_dim=int(raw.get("head_dim") or defaults["head_dim"]),
        rms_norm_eps=float(get("rms_norm_eps")),
        rope_theta=theta,
        max_position_embeddings=int(get("max_position_embeddings")),
        num_code_groups=int(get("num_code_groups")),
        attention_bias=bool(get("attention_bias")),
        hidden_act=str(get("hidden_act")),
    )


def _token_ids(raw: dict[str, Any], thinker_raw: dict[str, Any], talker_raw: dict[str, Any]) -> TokenIds:
    def thinker_id(key: str) -> int:
        if key in thinker_raw:
            return int(thinker_raw[key])
        if key in talker_raw:
            return int(talker_raw[key])
        if key in _REFERENCE_THINKER:
            return int(_REFERENCE_THINKER[key])
        return int(_UNDECLARED_TOKEN_IDS[key])

    def root_id(key: str) -> int:
        return int(raw.get(key, _REFERENCE_ROOT[key]))

    return TokenIds(
        audio=thinker_id("audio_token_id"),
        image=thinker_id("image_token_id"),
        video=thinker_id("video_token_id"),
        audio_start=thinker_id("audio_start_token_id"),
        audio_end=thinker_id("audio_end_token_id"),
        vision_start=thinker_id("vision_start_token_id"),
        vision_end=thinker_id("vision_end_token_id"),
        im_start=root_id("im_start_token_id"),
        im_end=root_id("im_end_token_id"),
        system=root_id("system_token_id"),
        user=root_id("user_token_id"),
        assistant=root_id("assistant_token_id"),
        tts_pad=root_id("tts_pad_token_id"),
        tts_bos=root_id("tts_bos_token_id"),
        tts_eos=root_id("tts_eos_token_id"),
    )


def _parse_thinker(raw: dict[str, Any], token_ids: TokenIds, source: str) -> ThinkerConfig:
    text = _moe_decoder(raw.get("text_config") or {}, _REFERENCE_TEXT, source, "thinker_config.text_config")
    vision_raw = raw.get("vision_config") or {}
    vd = _REFERENCE_VISION

    def vget(*keys: str) -> Any:
        for key in keys:
            if key in vision_raw:
                return vision_raw[key]
        return vd[keys[0]]

    vision_theta, _ = _rope(vision_raw, 10000.0, source, "thinker_config.vision_config")
    vision = VisionEncoderConfig(
        depth=int(vget("depth")),
        hidden_size=int(vget("hidden_size")),
        hidden_act=str(vget("hidden_act")),
        intermediate_size=int(vget("intermediate_size")),
        num_heads=int(vget("num_heads")),
        in_channels=int(vget("in_channels", "in_chans")),
        patch_size=int(vget("patch_size", "spatial_patch_size")),
        spatial_merge_size=int(vget("spatial_merge_size")),
        temporal_patch_size=int(vget("temporal_patch_size")),
        out_hidden_size=int(vget("out_hidden_size")),
        num_position_embeddings=int(vget("num_position_embeddings")),
        deepstack_visual_indexes=tuple(int(i) for i in vget("deepstack_visual_indexes")),
        rope_theta=vision_theta,
    )
    if text.hidden_size != vision.out_hidden_size:
        raise CheckpointError(
            f"{source}: the vision tower's out_hidden_size ({vision.out_hidden_size}) must equal the Thinker's "
            f"hidden_size ({text.hidden_size})"
        )
    audio_raw = raw.get("audio_config") or {}
    ad = _REFERENCE_AUDIO

    def aget(key: str) -> Any:
        return audio_raw.get(key, ad[key])

    audio = AudioEncoderConfig(
        num_mel_bins=int(aget("num_mel_bins")),
        num_layers=int(aget("encoder_layers")),
        num_heads=int(aget("encoder_attention_heads")),
        ffn_dim=int(aget("encoder_ffn_dim")),
        d_model=int(aget("d_model")),
        activation=str(aget("activation_function")),
        max_source_positions=int(aget("max_source_positions")),
        n_window=int(aget("n_window")),
        n_window_infer=int(aget("n_window_infer")),
        conv_chunksize=int(aget("conv_chunksize")),
        downsample_hidden_size=int(aget("downsample_hidden_size")),
        output_dim=int(aget("output_dim")),
        scale_embedding=bool(aget("scale_embedding")),
    )
    if text.hidden_size != audio.output_dim:
        raise CheckpointError(
            f"{source}: the audio tower's output_dim ({audio.output_dim}) must equal the Thinker's hidden_size "
            f"({text.hidden_size})"
        )
    return ThinkerConfig(
        text=text,
        vision=vision,
        audio=audio,
        token_ids=token_ids,
        position_id_per_seconds=int(raw.get("position_id_per_seconds", _REFERENCE_THINKER["position_id_per_seconds"])),
        seconds_per_chunk=int(raw.get("seconds_per_chunk", _REFERENCE_THINKER["seconds_per_chunk"])),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
    )


def _parse_talker(raw: dict[str, Any], token_ids: TokenIds, source: str) -> TalkerConfig:
    td = _REFERENCE_TALKER

    def get(key: str) -> Any:
        return raw.get(key, td[key])

    text = _moe_decoder(raw.get("text_config") or {}, _REFERENCE_TALKER_TEXT, source, "talker_config.text_config")
    predictor = _code_predictor(raw.get("code_predictor_config") or {}, source)
    num_code_groups = int(get("num_code_groups"))
    if predictor.num_code_groups != num_code_groups:
        raise CheckpointError(
            f"{source}: talker_config.num_code_groups ({num_code_groups}) and its code_predictor_config's "
            f"({predictor.num_code_groups}) differ"
        )
    speakers = raw.get("speaker_id") or {}
    return TalkerConfig(
        text=text,
        code_predictor=predictor,
        token_ids=token_ids,
        num_code_groups=num_code_groups,
        thinker_hidden_size=int(get("thinker_hidden_size")),
        accept_hidden_layer=int(get("accept_hidden_layer")),
        codec_bos_id=int(get("codec_bos_id")),
        codec_eos_id=int(get("codec_eos_token_id")),
        codec_pad_id=int(get("codec_pad_id")),
        codec_nothink_id=int(get("codec_nothink_id")),
        codec_think_bos_id=int(get("codec_think_bos_id")),
        codec_think_eos_id=int(get("codec_think_eos_id")),
        position_id_per_seconds=int(get("position_id_per_seconds")),
        spatial_merge_size=int(get("spatial_merge_size")),
        speaker_ids={str(name).lower(): int(codec_id) for name, codec_id in speakers.items()},
    )


def _parse_code2wav(raw: dict[str, Any], source: str) -> Code2WavConfig:
    cd = _REFERENCE_CODE2WAV

    def get(key: str) -> Any:
        return raw.get(key, cd[key])

    theta, _ = _rope(raw, cd["rope_theta"], source, "code2wav_config")
    hidden_size = int(get("hidden_size"))
    num_heads = int(get("num_attention_heads"))
    return Code2WavConfig(
        codebook_size=int(get("codebook_size")),
        num_quantizers=int(get("num_quantizers")),
        hidden_size=hidden_size,
        num_layers=int(get("num_hidden_layers")),
        num_attention_heads=num_heads,
        num_kv_heads=int(get("num_key_value_heads")),
        head_dim=int(raw.get("head_dim") or hidden_size // num_heads),
        intermediate_size=int(get("intermediate_size")),
        sliding_window=int(get("sliding_window")),
        rms_norm_eps=float(get("rms_norm_eps")),
        rope_theta=theta,
        max_position_embeddings=int(get("max_position_embeddings")),
        layer_scale_initial_scale=float(get("layer_scale_initial_scale")),
        upsample_rates=tuple(int(r) for r in get("upsample_rates")),
        upsampling_ratios=tuple(int(r) for r in get("upsampling_ratios")),
        decoder_dim=int(get("decoder_dim")),
        attention_bias=bool(get("attention_bias")),
        hidden_act=str(get("hidden_act")),
    )
