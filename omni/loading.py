"""Load a Qwen2.5-Omni checkpoint into omni's modules: strict, memory-mapped, dtype/device aware.

The module tree is created on the meta device (no memory, no random init), materialised empty at the
requested dtype and device, and each tensor is then copied in from the memory-mapped safetensors
files one at a time: peak memory stays near one copy of the weights. Every checkpoint tensor of a
loaded component must land in a parameter of the same name and shape, and every parameter must be
filled, or loading stops with an error naming the keys.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from omni.checkpoint import (
    GenerationDefaults,
    WeightFiles,
    load_generation_defaults,
    load_speakers,
    read_quantization_config,
    resolve_checkpoint,
    weight_files,
)
from omni.config import OmniConfig, load_config
from omni.errors import AudioOutputUnavailable, CheckpointError, InputError
from omni.model import AUDIO_COMPONENTS, OmniModel
from omni.offload import Offload, host_module_paths, parse_mode
from omni.offload import install as install_offload
from omni.quant.loader import QuantizedLinears
from omni.tokenizer import Tokenizer

log = logging.getLogger(__name__)

DTYPES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
}
_LISTED_KEYS = 12  # how many key names an error message spells out


@dataclass
class LoadedModel:
    """Everything a session needs from one checkpoint; many sessions share one LoadedModel."""

    path: Path
    config: OmniConfig
    model: OmniModel
    tokenizer: Tokenizer
    speakers: dict[str, dict] | None
    generation: GenerationDefaults
    dtype: torch.dtype
    device: torch.device
    quantization: str | None = None  # e.g. "int4 in groups of 128", "GPTQ 4 bit, group 128, ..."; None: full precision
    offload: Offload | None = None  # the stages kept in host memory while idle (omni.offload); None: none
    family: str = "qwen2_5_omni"  # config.json's model_type family (omni.speech dispatches Qwen3-Omni's on it)

    @property
    def audio_output(self) -> bool:
        return self.model.audio_output and self.speakers is not None

    @property
    def voices(self) -> list[str]:
        return sorted(self.speakers or {})


def resolve_dtype(dtype: str | torch.dtype, config: OmniConfig) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise InputError(f"dtype must be bf16, fp16 or fp32, got {dtype}")
        return dtype
    if dtype == "auto":
        return DTYPES.get(config.checkpoint_dtype or "float32", torch.float32)
    try:
        return DTYPES[dtype.lower()]
    except KeyError:
        raise InputError(f"dtype must be one of auto, bf16, fp16, fp32; got {dtype!r}") from None


def load_model(
    path_or_hub_id: str | os.PathLike,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    audio_output: bool | None = None,
    revision: str | None = None,
    quantize: str | None = None,
    offload: str | None = None,
) -> LoadedModel:
    """Load a checkpoint directory (or hub id).

    audio_output: True loads the talker, token2wav and the voices and fails if any is missing;
    False loads the Thinker only (less memory, text replies); None loads audio output when the
    checkpoint has it and warns when it does not.

    quantize: "int8" (per output channel) or "int4" / "int4:GROUP" (group-wise, 128 by default)
    quantizes the Thinker's decoder linears while loading, tensor by tensor (omni.quant). A GPTQ or
    AWQ checkpoint (config.json `quantization_config`) is loaded in its own format without it.

    offload: "encoders", "talker" or "all" keeps the vision/audio towers (encoders), the Talker and
    codec (talker), or both (all) in host memory, pinned, and moves them to the device only while
    they run (omni.offload). They are built and filled in host memory, so the device never holds
    them at load. No effect on a CPU device (noted in `LoadedModel.offload`).
    """
    directory = resolve_checkpoint(path_or_hub_id, revision=revision)
    if model_type(directory) == QWEN3_MODEL_TYPE:
        from omni.qwen3.loading import load_qwen3_model

        return load_qwen3_model(directory, dtype, torch.device(device), audio_output, quantize, offload)
    config = load_config(directory)
    weights = weight_files(directory)
    speakers = load_speakers(directory)
    with_audio = _decide_audio_output(audio_output, directory, config, weights, speakers)
    torch_dtype = resolve_dtype(dtype, config)
    torch_device = torch.device(device)
    quant_source = _quantization(quantize, directory)
    offload_mode = parse_mode(offload)

    with torch.device("meta"):
        try:
            model = OmniModel(config, audio_output=with_audio)
        except AudioOutputUnavailable:
            if audio_output:
                raise
            log.warning("audio output disabled: this build cannot load the talker/token2wav")
            with_audio = False
            model = OmniModel(config, audio_output=False)
    model.thinker.to(torch_dtype)
    if with_audio:
        model.talker.to(torch_dtype)
        model.token2wav.to(torch.float32)  # the codec runs in fp32 whatever the LLMs use
    quantized = QuantizedLinears.install(model, quant_source, torch_dtype, torch_device) if quant_source else None
    host_paths = host_module_paths(offload_mode, with_audio) if torch_device.type != "cpu" else ()
    _materialize(model, torch_device, {id(model.get_submodule(path)) for path in host_paths})
    model.reset_buffers()
    _fill_strict(model, weights, config, with_audio, quantized)
    model.eval().requires_grad_(False)
    offloaded = install_offload(model, offload_mode, torch_device, with_audio)

    tokenizer = Tokenizer.from_checkpoint(directory)
    generation = load_generation_defaults(directory, fallback_eos=(tokenizer.token_id("<|im_end|>"),))
    return LoadedModel(
        path=directory,
        config=config,
        model=model,
        tokenizer=tokenizer,
        speakers=speakers if with_audio else None,
        generation=generation,
        dtype=torch_dtype,
        device=torch_device,
        quantization=quantized.describe() if quantized else None,
        offload=offloaded,
    )


QWEN3_MODEL_TYPE = "qwen3_omni_moe"


def model_type(directory: Path) -> str | None:
    """config.json's model_type (which family's loader reads the checkpoint), or None."""
    path = directory / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # the family's own loader reports the problem
    return raw.get("model_type") if isinstance(raw, dict) else None


def _materialize(module: torch.nn.Module, device: torch.device, on_host: set[int]) -> None:
    """Allocate the meta-device tree, empty: the modules in `on_host` (ids) in host memory, the rest
    on `device` (an offloaded stage never touches the device while loading)."""
    if id(module) in on_host:
        module.to_empty(device="cpu")
    elif not any(id(m) in on_host for m in module.modules()):
        module.to_empty(device=device)
    else:
        module.to_empty(device=device, recurse=False)
        for child in module.children():
            _materialize(child, device, on_host)


def _quantization(quantize, directory: Path):
    from omni.quant.loader import choose
    from omni.quant.spec import QuantSpec, parse_quantization_config

    raw = read_quantization_config(directory)
    published = parse_quantization_config(raw, str(directory / "config.json")) if raw is not None else None
    return choose(QuantSpec.parse(quantize), published, directory)


def _decide_audio_output(
    requested: bool | None, directory: Path, config: OmniConfig, weights: WeightFiles, speakers: dict | None
) -> bool:
    has_weights = any(name.startswith(f"{c}.") for name in weights.names for c in AUDIO_COMPONENTS)
    problems = []
    if not has_weights:
        problems.append("its weights hold no talker/token2wav tensors")
    if speakers is None:
        problems.append(f"{directory / 'spk_dict.pt'} (the voices) is missing")
    return audio_output_decision(requested, directory, problems, config.enable_audio_output)


def audio_output_decision(requested: bool | None, directory: Path, problems: list[str], enabled: bool) -> bool:
    """Whether to load the speech stages: never when `requested` is False; when it is True, fail
    naming the `problems` (what the checkpoint lacks) if there are any; when None, speak if the
    checkpoint can and its config enables audio output, and warn if it cannot."""
    if requested is False:
        return False
    if problems:
        if requested:
            raise AudioOutputUnavailable(
                f"audio output was requested but checkpoint {directory} cannot speak: {'; '.join(problems)}. "
                "Load with audio_output=False for text replies."
            )
        log.warning("audio output disabled for %s: %s", directory, "; ".join(problems))
        return False
    return bool(enabled) or bool(requested)


def _fill_strict(model: OmniModel, weights: WeightFiles, config: OmniConfig, with_audio: bool,
                 quantized: QuantizedLinears | None = None) -> None:
    prefixes = ("thinker.",) + (tuple(f"{c}." for c in AUDIO_COMPONENTS) if with_audio else ())
    known_prefixes = ("thinker.",) + tuple(f"{c}." for c in AUDIO_COMPONENTS)
    targets = model.state_dict()
    expected = set(targets) | (quantized.checkpoint_names() if quantized else set())
    wanted = {name for name in weights.names if name.startswith(prefixes)}
    unknown = {name for name in weights.names if not name.startswith(known_prefixes)}

    tie_lm_head = config.thinker.tie_word_embeddings and "thinker.lm_head.weight" not in weights.names
    if tie_lm_head:
        expected.discard("thinker.lm_head.weight")
    missing = sorted(expected - wanted)
    unexpected = sorted((wanted - expected) | unknown)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
        raise CheckpointError(
            f"the weights in {weights.directory} do not match the Qwen2.5-Omni modules their config.json "
            f"describes ({'; '.join(parts)})"
        )

    with torch.no_grad():
        for name, tensor in weights.read(wanted):
            if quantized is not None and quantized.owns(name):
                quantized.take(name, tensor)
                continue
            target = targets[name]
            if tuple(tensor.shape) != tuple(target.shape):
                raise CheckpointError(
                    f"{name} in {weights.directory} has shape {tuple(tensor.shape)}, but config.json makes it "
                    f"{tuple(target.shape)}"
                )
            target.copy_(tensor)
        if tie_lm_head:
            model.thinker.lm_head.weight = model.thinker.model.embed_tokens.weight
        if quantized is not None:
            quantized.finish()


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED_KEYS])
    return shown + (f", ... ({len(names) - _LISTED_KEYS} more)" if len(names) > _LISTED_KEYS else "")
