"""Load a Qwen3-Omni checkpoint into omni's modules: strict, memory-mapped, dtype/device aware, as
`omni.loading` does for Qwen2.5-Omni (which dispatches here on config.json's model_type).

The tree is built on the meta device, materialised empty at the requested dtype and device, and every
checkpoint tensor is copied into its parameter one at a time (the experts of a MoE layer into their slice
of the stacked parameter): peak memory stays near one copy of the weights."""

from __future__ import annotations

from pathlib import Path

import torch

from omni.checkpoint import WeightFiles, load_generation_defaults, weight_files
from omni.errors import CheckpointError, InputError
from omni.qwen3.config import Qwen3OmniConfig, load_config
from omni.qwen3.model import AUDIO_COMPONENTS, Qwen3OmniModel
from omni.qwen3.weights import load_weights
from omni.tokenizer import Tokenizer

FAMILY = "qwen3_omni_moe"


def voices_of(config: Qwen3OmniConfig) -> dict[str, dict[str, int]]:
    """{voice name: {"codec_id": id}} from talker_config.speaker_id. The published names are lower case
    (chelsie, ethan, aiden); omni shows them capitalised as it does Qwen2.5-Omni's Chelsie and Ethan, and
    the reference looks them up case-insensitively, so both spellings are accepted (see `find_voice`)."""
    return {name.capitalize(): {"codec_id": codec_id} for name, codec_id in config.talker.speaker_ids.items()}


def load_qwen3_model(directory: Path, dtype: str | torch.dtype, torch_device: torch.device,
                     audio_output: bool | None, quantize: str | None, offload: str | None = None):
    """The LoadedModel of a Qwen3-Omni checkpoint directory (omni.loading.load_model dispatches here on
    config.json's model_type)."""
    from omni.loading import (  # shared; omni.loading imports this module lazily
        LoadedModel,
        resolve_dtype,
    )

    if quantize:
        raise InputError(
            f"quantize={quantize!r}: omni quantizes Qwen2.5-Omni's decoder linears; Qwen3-Omni's MoE experts "
            "are not quantized yet (load it in bf16 or fp32)"
        )
    if offload:
        raise InputError(f"offload={offload!r} is implemented for Qwen2.5-Omni only; load Qwen3-Omni without it")
    config = load_config(directory)
    torch_dtype = resolve_dtype(dtype, config)
    weights = weight_files(directory)
    with_audio = _decide_audio_output(audio_output, directory, config, weights)
    with torch.device("meta"):
        model = Qwen3OmniModel(config, audio_output=with_audio)
    model.thinker.to(torch_dtype)
    if with_audio:
        model.talker.to(torch_dtype)
        model.code2wav.to(torch.float32)  # the codec runs in fp32 whatever the LLMs use
    model.to_empty(device=torch_device)
    model.reset_buffers()
    _fill(model, weights, with_audio)
    model.eval().requires_grad_(False)

    tokenizer = Tokenizer.from_checkpoint(directory)
    generation = load_generation_defaults(directory, fallback_eos=(tokenizer.token_id("<|im_end|>"),))
    return LoadedModel(
        path=directory,
        config=config,
        model=model,
        tokenizer=tokenizer,
        speakers=voices_of(config) if with_audio else None,
        generation=generation,
        dtype=torch_dtype,
        device=torch_device,
        quantization=None,
        family=FAMILY,
    )


def _decide_audio_output(requested: bool | None, directory: Path, config: Qwen3OmniConfig,
                         weights: WeightFiles) -> bool:
    from omni.loading import audio_output_decision

    has_weights = all(any(name.startswith(f"{c}.") for name in weights.names) for c in AUDIO_COMPONENTS)
    problems = []
    if not has_weights:
        problems.append("its weights hold no talker/code2wav tensors")
    if not config.talker.speaker_ids:
        problems.append("talker_config.speaker_id lists no voices")
    return audio_output_decision(requested, directory, problems, config.enable_audio_output)


def _fill(model: Qwen3OmniModel, weights: WeightFiles, with_audio: bool) -> None:
    prefixes = ("thinker.",) + (tuple(f"{c}." for c in AUDIO_COMPONENTS) if with_audio else ())
    known = ("thinker.",) + tuple(f"{c}." for c in AUDIO_COMPONENTS)
    unknown = sorted(name for name in weights.names if not name.startswith(known))
    if unknown:
        raise CheckpointError(
            f"the weights in {weights.directory} hold {len(unknown)} tensors outside thinker/talker/code2wav "
            f"(first: {unknown[:3]}); this is not a Qwen3-Omni checkpoint omni knows"
        )
    wanted = {name for name in weights.names if name.startswith(prefixes)}
    load_weights(model, weights.read(wanted), strict=True)
