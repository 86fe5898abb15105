"""Frozen configuration dataclasses, parsed from a Qwen2.5-Omni `config.json` in one place.

Two generations of config.json exist in the wild: the files Qwen published (transformers 4.5x era:
`rope_theta` + `rope_scaling.mrope_section`, DiT sizes sometimes spelled `dim`/`depth`/`heads`) and
files written by transformers 5 (`rope_parameters`). Both parse here. A field a file leaves out takes
the default of the transformers reference config class, so that a sparse file means the same model
to omni as to the reference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omni.errors import CheckpointError

MODEL_TYPE = "qwen2_5_omni"


@dataclass(frozen=True)
class DecoderConfig:
    """A Qwen2.5 decoder stack (the Thinker's language model and the Talker's LM share this shape)."""

    vocab_size: int
    embedding_size: int  # width of embed_tokens; the Talker embeds at the Thinker's width
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: tuple[int, int, int]
    max_position_embeddings: int
    hidden_act: str = "silu"


@dataclass(frozen=True)
class VisionEncoderConfig:
    depth: int = 32
    hidden_size: int = 3584
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    out_hidden_size: int = 3584
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    hidden_act: str = "silu"
    rope_theta: float = 10000.0


@dataclass(frozen=True)
class AudioEncoderConfig:
    num_mel_bins: int = 128
    num_layers: int = 32
    num_heads: int = 20
    ffn_dim: int = 5120
    d_model: int = 1280
    activation: str = "gelu"
    max_source_positions: int = 1500
    n_window: int = 100
    output_dim: int = 3584
    scale_embedding: bool = False


@dataclass(frozen=True)
class MultimodalTokenIds:
    """Special token ids the prompt builder and the 3-D rope index read."""

    audio: int = 151646
    image: int = 151655
    video: int = 151656
    audio_start: int = 151647
    audio_end: int = 151648
    vision_start: int = 151652
    vision_end: int = 151653


@dataclass(frozen=True)
class ThinkerConfig:
    text: DecoderConfig
    vision: VisionEncoderConfig
    audio: AudioEncoderConfig
    token_ids: MultimodalTokenIds
    position_id_per_seconds: int = 25
    seconds_per_chunk: int = 2
    tie_word_embeddings: bool = False


@dataclass(frozen=True)
class TalkerConfig:
    decoder: DecoderConfig
    token_ids: MultimodalTokenIds
    codec_bos_id: int = 8293
    codec_eos_id: int = 8294
    codec_pad_id: int = 8292
    codec_mask_id: int = 8296
    text_bos_id: int = 151860
    text_eos_id: int = 151861
    text_pad_id: int = 151859
    position_id_per_seconds: int = 25
    seconds_per_chunk: int = 2
    spatial_merge_size: int = 2


@dataclass(frozen=True)
class DiTConfig:
    hidden_size: int = 1024
    num_layers: int = 22
    num_heads: int = 16
    head_dim: int = 64
    ff_mult: int = 2
    emb_dim: int = 512
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768
    block_size: int = 24
    look_ahead_layers: tuple[int, ...] = (10,)
    look_backward_layers: tuple[int, ...] = (0, 20)
    repeats: int = 2
    num_embeds: int = 8193
    mel_dim: int = 80
    enc_emb_dim: int = 192
    enc_dim: int = 128
    enc_channels: tuple[int, ...] = (256, 256, 256, 256, 768)
    enc_kernel_sizes: tuple[int, ...] = (5, 3, 3, 3, 1)
    enc_dilations: tuple[int, ...] = (1, 2, 3, 4, 1)
    enc_attention_channels: int = 64
    enc_res2net_scale: int = 2
    enc_se_channels: int = 64


@dataclass(frozen=True)
class BigVGANConfig:
    mel_dim: int = 80
    upsample_initial_channel: int = 1536
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    upsample_rates: tuple[int, ...] = (5, 3, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (11, 7, 4, 4, 4, 4)

    @property
    def samples_per_mel_frame(self) -> int:
        product = 1
        for rate in self.upsample_rates:
            product *= rate
        return product


@dataclass(frozen=True)
class OmniConfig:
    thinker: ThinkerConfig
    talker: TalkerConfig
    dit: DiTConfig
    bigvgan: BigVGANConfig
    enable_audio_output: bool = True
    checkpoint_dtype: str | None = None  # the dtype the weights were saved in, when the file says


# ----------------------------------------------------------------------------------------------
# Parsing


def load_config(checkpoint_dir: str | Path) -> OmniConfig:
    raw, source = read_config_json(checkpoint_dir, "Qwen2.5-Omni")
    return parse_config(raw, source=source)


def read_config_json(checkpoint_dir: str | Path, family: str) -> tuple[dict[str, Any], str]:
    """(config.json's contents, its path for messages) of a checkpoint directory of `family`."""
    path = Path(checkpoint_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: a {family} checkpoint directory holds config.json")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds a JSON {type(raw).__name__}, not an object")
    return raw, str(path)


def parse_config(raw: dict[str, Any], source: str = "config.json") -> OmniConfig:
    model_type = raw.get("model_type")
    if model_type != MODEL_TYPE:
        raise CheckpointError(
            f"{source} has model_type={model_type!r}; omni loads Qwen2.5-Omni checkpoints "
            f"(model_type={MODEL_TYPE!r})"
        )
    for key in ("thinker_config",):
        if not isinstance(raw.get(key), dict):
            raise CheckpointError(f"{source} lacks the '{key}' section a Qwen2.5-Omni config has")
    thinker_raw = raw["thinker_config"]
    talker_raw = raw.get("talker_config") or {}
    token2wav_raw = raw.get("token2wav_config") or {}
    thinker = _parse_thinker(thinker_raw, talker_raw, source)
    talker = _parse_talker(talker_raw, thinker, source)
    dit = _parse_dit(token2wav_raw.get("dit_config") or {}, source)
    bigvgan = _parse_bigvgan(token2wav_raw.get("bigvgan_config") or {})
    dtype = raw.get("torch_dtype") or raw.get("dtype") or thinker_raw.get("torch_dtype")
    return OmniConfig(
        thinker=thinker,
        talker=talker,
        dit=dit,
        bigvgan=bigvgan,
        enable_audio_output=bool(raw.get("enable_audio_output", True)),
        checkpoint_dtype=dtype if isinstance(dtype, str) else None,
    )


def _rope(raw: dict[str, Any], default_theta: float, source: str, where: str) -> tuple[float, tuple[int, ...]]:
    """Return (theta, mrope_section) from either `rope_parameters` (transformers 5) or
    `rope_theta` + `rope_scaling` (the files Qwen published)."""
    params = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or {}
    theta = params.get("rope_theta", raw.get("rope_theta", default_theta))
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type not in ("default", "mrope"):
        raise CheckpointError(
            f"{source}: {where} uses rope_type={rope_type!r}; omni implements the default (m)rope that "
            "Qwen2.5-Omni uses"
        )
    section = params.get("mrope_section") or scaling.get("mrope_section") or (16, 24, 24)
    return float(theta), tuple(int(s) for s in section)


def _decoder(raw: dict[str, Any], defaults: dict[str, Any], source: str, where: str) -> DecoderConfig:
    def get(key: str) -> Any:
        return raw.get(key, defaults[key])

    if raw.get("use_sliding_window"):
        raise CheckpointError(
            f"{source}: {where} enables sliding-window attention; Qwen2.5-Omni checkpoints do not, and omni "
            "does not implement it"
        )
    hidden_size = int(get("hidden_size"))
    num_heads = int(get("num_attention_heads"))
    head_dim = int(raw.get("head_dim") or defaults.get("head_dim") or hidden_size // num_heads)
    theta, section = _rope(raw, defaults["rope_theta"], source, where)
    if len(section) != 3 or sum(section) * 2 != head_dim:
        raise CheckpointError(
            f"{source}: {where} mrope_section={list(section)} must have 3 parts summing to head_dim/2 "
            f"({head_dim // 2})"
        )
    kv_heads = raw.get("num_key_value_heads", defaults["num_key_value_heads"])
    return DecoderConfig(
        vocab_size=int(get("vocab_size")),
        embedding_size=int(raw.get("embedding_size", defaults.get("embedding_size") or hidden_size)),
        hidden_size=hidden_size,
        intermediate_size=int(get("intermediate_size")),
        num_layers=int(get("num_hidden_layers")),
        num_attention_heads=num_heads,
        num_kv_heads=int(kv_heads if kv_heads is not None else num_heads),
        head_dim=head_dim,
        rms_norm_eps=float(get("rms_norm_eps")),
        rope_theta=theta,
        mrope_section=(section[0], section[1], section[2]),
        max_position_embeddings=int(get("max_position_embeddings")),
        hidden_act=str(get("hidden_act")),
    )


# Defaults of transformers' Qwen2_5OmniTextConfig / Qwen2_5OmniTalkerConfig.
_TEXT_DEFAULTS = dict(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
    num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6, rope_theta=1000000.0,
    max_position_embeddings=32768, hidden_act="silu", head_dim=None, embedding_size=None,
)
_TALKER_DEFAULTS = dict(
    vocab_size=8448, embedding_size=3584, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
    num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6, rope_theta=1000000.0,
    max_position_embeddings=32768, hidden_act="silu", head_dim=128,
)


def _token_ids(raw: dict[str, Any], talker_raw: dict[str, Any]) -> MultimodalTokenIds:
    base = MultimodalTokenIds()
    # The reference thinker config class has no vision_start_token_id although its rope index reads
    # it; the talker section of every Qwen2.5-Omni config.json does carry it.
    return MultimodalTokenIds(
        audio=int(raw.get("audio_token_index", raw.get("audio_token_id", base.audio))),
        image=int(raw.get("image_token_index", raw.get("image_token_id", base.image))),
        video=int(raw.get("video_token_index", raw.get("video_token_id", base.video))),
        audio_start=int(raw.get("audio_start_token_id", base.audio_start)),
        audio_end=int(raw.get("audio_end_token_id", base.audio_end)),
        vision_start=int(raw.get("vision_start_token_id", talker_raw.get("vision_start_token_id", base.vision_start))),
        vision_end=int(raw.get("vision_end_token_id", talker_raw.get("vision_end_token_id", base.vision_end))),
    )


def _parse_thinker(raw: dict[str, Any], talker_raw: dict[str, Any], source: str) -> ThinkerConfig:
    text = _decoder(raw.get("text_config") or {}, _TEXT_DEFAULTS, source, "thinker_config.text_config")
    vision_raw = raw.get("vision_config") or {}
    vision_defaults = VisionEncoderConfig()
    vision_theta = (vision_raw.get("rope_parameters") or {}).get("rope_theta", vision_defaults.rope_theta)
    vision = VisionEncoderConfig(
        depth=int(vision_raw.get("depth", vision_defaults.depth)),
        hidden_size=int(vision_raw.get("hidden_size", vision_raw.get("embed_dim", vision_defaults.hidden_size))),
        intermediate_size=int(vision_raw.get("intermediate_size", vision_defaults.intermediate_size)),
        num_heads=int(vision_raw.get("num_heads", vision_defaults.num_heads)),
        in_channels=int(vision_raw.get("in_channels", vision_raw.get("in_chans", vision_defaults.in_channels))),
        patch_size=int(vision_raw.get("patch_size", vision_raw.get("spatial_patch_size", vision_defaults.patch_size))),
        temporal_patch_size=int(vision_raw.get("temporal_patch_size", vision_defaults.temporal_patch_size)),
        spatial_merge_size=int(vision_raw.get("spatial_merge_size", vision_defaults.spatial_merge_size)),
        window_size=int(vision_raw.get("window_size", vision_defaults.window_size)),
        out_hidden_size=int(vision_raw.get("out_hidden_size", vision_defaults.out_hidden_size)),
        fullatt_block_indexes=tuple(
            int(i) for i in vision_raw.get("fullatt_block_indexes", vision_defaults.fullatt_block_indexes)
        ),
        hidden_act=str(vision_raw.get("hidden_act", vision_defaults.hidden_act)),
        rope_theta=float(vision_theta),
    )
    audio_raw = raw.get("audio_config") or {}
    audio_defaults = AudioEncoderConfig()
    audio = AudioEncoderConfig(
        num_mel_bins=int(audio_raw.get("num_mel_bins", audio_defaults.num_mel_bins)),
        num_layers=int(audio_raw.get("encoder_layers", audio_defaults.num_layers)),
        num_heads=int(audio_raw.get("encoder_attention_heads", audio_defaults.num_heads)),
        ffn_dim=int(audio_raw.get("encoder_ffn_dim", audio_defaults.ffn_dim)),
        d_model=int(audio_raw.get("d_model", audio_defaults.d_model)),
        activation=str(audio_raw.get("activation_function", audio_defaults.activation)),
        max_source_positions=int(audio_raw.get("max_source_positions", audio_defaults.max_source_positions)),
        n_window=int(audio_raw.get("n_window", audio_defaults.n_window)),
        output_dim=int(audio_raw.get("output_dim", audio_defaults.output_dim)),
        scale_embedding=bool(audio_raw.get("scale_embedding", audio_defaults.scale_embedding)),
    )
    return ThinkerConfig(
        text=text,
        vision=vision,
        audio=audio,
        token_ids=_token_ids(raw, talker_raw),
        position_id_per_seconds=int(raw.get("position_id_per_seconds", 25)),
        seconds_per_chunk=int(raw.get("seconds_per_chunk", 2)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
    )


def _parse_talker(raw: dict[str, Any], thinker: ThinkerConfig, source: str) -> TalkerConfig:
    decoder = _decoder(raw, _TALKER_DEFAULTS, source, "talker_config")
    base = TalkerConfig(decoder=decoder, token_ids=thinker.token_ids)
    return TalkerConfig(
        decoder=decoder,
        token_ids=_token_ids(raw, raw),
        codec_bos_id=int(raw.get("tts_codec_start_token_id", base.codec_bos_id)),
        codec_eos_id=int(raw.get("tts_codec_end_token_id", base.codec_eos_id)),
        codec_pad_id=int(raw.get("tts_codec_pad_token_id", base.codec_pad_id)),
        codec_mask_id=int(raw.get("tts_codec_mask_token_id", base.codec_mask_id)),
        text_bos_id=int(raw.get("tts_text_start_token_id", base.text_bos_id)),
        text_eos_id=int(raw.get("tts_text_end_token_id", base.text_eos_id)),
        text_pad_id=int(raw.get("tts_text_pad_token_id", base.text_pad_id)),
        position_id_per_seconds=int(raw.get("position_id_per_seconds", base.position_id_per_seconds)),
        seconds_per_chunk=int(raw.get("seconds_per_chunk", base.seconds_per_chunk)),
        spatial_merge_size=int(raw.get("spatial_merge_size", base.spatial_merge_size)),
    )


def _parse_dit(raw: dict[str, Any], source: str) -> DiTConfig:
    base = DiTConfig()
    theta = (raw.get("rope_parameters") or {}).get("rope_theta", raw.get("rope_theta", base.rope_theta))

    def pick(*names: str, default: Any) -> Any:
        for name in names:
            if name in raw:
                return raw[name]
        return default

    def ints(value: Any) -> tuple[int, ...]:
        return tuple(int(v) for v in value)

    return DiTConfig(
        hidden_size=int(pick("hidden_size", "dim", default=base.hidden_size)),
        num_layers=int(pick("num_hidden_layers", "depth", default=base.num_layers)),
        num_heads=int(pick("num_attention_heads", "heads", default=base.num_heads)),
        head_dim=int(pick("head_dim", default=base.head_dim)),
        ff_mult=int(pick("ff_mult", default=base.ff_mult)),
        emb_dim=int(pick("emb_dim", default=base.emb_dim)),
        rope_theta=float(theta),
        max_position_embeddings=int(pick("max_position_embeddings", default=base.max_position_embeddings)),
        block_size=int(pick("block_size", default=base.block_size)),
        look_ahead_layers=ints(pick("look_ahead_layers", default=base.look_ahead_layers)),
        look_backward_layers=ints(pick("look_backward_layers", default=base.look_backward_layers)),
        repeats=int(pick("repeats", default=base.repeats)),
        num_embeds=int(pick("num_embeds", default=base.num_embeds)),
        mel_dim=int(pick("mel_dim", default=base.mel_dim)),
        enc_emb_dim=int(pick("enc_emb_dim", default=base.enc_emb_dim)),
        enc_dim=int(pick("enc_dim", default=base.enc_dim)),
        enc_channels=ints(pick("enc_channels", default=base.enc_channels)),
        enc_kernel_sizes=ints(pick("enc_kernel_sizes", default=base.enc_kernel_sizes)),
        enc_dilations=ints(pick("enc_dilations", default=base.enc_dilations)),
        enc_attention_channels=int(pick("enc_attention_channels", default=base.enc_attention_channels)),
        enc_res2net_scale=int(pick("enc_res2net_scale", default=base.enc_res2net_scale)),
        enc_se_channels=int(pick("enc_se_channels", default=base.enc_se_channels)),
    )


def _parse_bigvgan(raw: dict[str, Any]) -> BigVGANConfig:
    base = BigVGANConfig()
    return BigVGANConfig(
        mel_dim=int(raw.get("mel_dim", base.mel_dim)),
        upsample_initial_channel=int(raw.get("upsample_initial_channel", base.upsample_initial_channel)),
        resblock_kernel_sizes=tuple(int(k) for k in raw.get("resblock_kernel_sizes", base.resblock_kernel_sizes)),
        resblock_dilation_sizes=tuple(
            tuple(int(d) for d in dilations)
            for dilations in raw.get("resblock_dilation_sizes", base.resblock_dilation_sizes)
        ),
        upsample_rates=tuple(int(r) for r in raw.get("upsample_rates", base.upsample_rates)),
        upsample_kernel_sizes=tuple(int(k) for k in raw.get("upsample_kernel_sizes", base.upsample_kernel_sizes)),
    )
