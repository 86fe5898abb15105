"""Finding a checkpoint and its weight files (local directory or Hugging Face hub id).

This module only does file I/O: which directory, which safetensors files hold which tensor names,
and reading tensors memory-mapped. Building and filling modules is `omni.loading`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from omni.errors import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SPEAKER_FILE = "spk_dict.pt"

# What a hub download fetches: weights, configs, tokenizer, speakers (not READMEs or other formats).
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.tiktoken", SPEAKER_FILE]


def resolve_checkpoint(path_or_hub_id: str | os.PathLike, revision: str | None = None) -> Path:
    """A local directory as it is, or a hub id ("Qwen/Qwen2.5-Omni-7B") downloaded to the hub cache."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_hub_id)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.exists()
    if path.exists():
        raise CheckpointError(f"{path} is a file; a checkpoint is a directory holding config.json and weights")
    if not looks_like_hub_id:
        raise CheckpointError(
            f"checkpoint directory {path} does not exist (nor is {text!r} a hub id of the form 'org/name')"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a dependency
        raise CheckpointError(f"{text!r} is not a local directory and huggingface_hub is not installed") from exc
    try:
        return Path(snapshot_download(repo_id=text, revision=revision, allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # the hub client raises many network/HTTP error types
        raise CheckpointError(
            f"{text!r} is not a local directory and downloading it from the hub failed "
            f"({type(exc).__name__}: {exc}). Pass the path of a downloaded checkpoint instead."
        ) from exc


@dataclass(frozen=True)
class WeightFiles:
    """Which safetensors file holds each tensor of a checkpoint."""

    directory: Path
    file_of: dict[str, str]  # tensor name -> file name

    @property
    def names(self) -> set[str]:
        return set(self.file_of)

    @property
    def sharded(self) -> bool:
        return len(set(self.file_of.values())) > 1

    def read(self, names: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, tensor) for the requested names, file by file, memory-mapped: each tensor
        is read from the page cache when it is asked for, so at most one is held at a time."""
        from safetensors import safe_open

        by_file: dict[str, list[str]] = {}
        for name in sorted(names):
            by_file.setdefault(self.file_of[name], []).append(name)
        for file_name, file_names in sorted(by_file.items()):
            with ExitStack() as stack:
                handle = stack.enter_context(safe_open(str(self.directory / file_name), framework="pt", device="cpu"))
                for name in file_names:
                    yield name, handle.get_tensor(name)


def weight_files(directory: Path) -> WeightFiles:
    index_path = directory / INDEX_FILE
    single_path = directory / SINGLE_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index_path} is not a safetensors index (no 'weight_map'): {exc}") from exc
        missing_files = sorted({f for f in weight_map.values() if not (directory / f).is_file()})
        if missing_files:
            raise CheckpointError(
                f"{index_path} names weight files that are not in {directory}: {', '.join(missing_files)} "
                "(an incomplete download?)"
            )
        return WeightFiles(directory, dict(weight_map))
    if single_path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(single_path), framework="pt", device="cpu") as handle:
                names = list(handle.keys())
        except Exception as exc:  # safetensors raises its own error type for corrupt headers
            raise CheckpointError(f"{single_path} is not a readable safetensors file: {exc}") from exc
        return WeightFiles(directory, {name: SINGLE_FILE for name in names})
    others = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".gguf"))
    hint = f" (found {', '.join(others)}: omni reads safetensors only)" if others else ""
    raise CheckpointError(f"{directory} has neither {INDEX_FILE} nor {SINGLE_FILE}{hint}")


def read_quantization_config(directory: Path) -> dict | None:
    """config.json's `quantization_config` (a GPTQ or AWQ checkpoint's), or None when it has none.
    Top level, where gptqmodel and AutoAWQ write it; a copy under `thinker_config` is read too."""
    path = directory / "config.json"
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    section = raw.get("quantization_config") if isinstance(raw, dict) else None
    if section is None and isinstance(raw, dict) and isinstance(raw.get("thinker_config"), dict):
        section = raw["thinker_config"].get("quantization_config")
    if section is not None and not isinstance(section, dict):
        raise CheckpointError(f"{path}: quantization_config should be an object, found {type(section).__name__}")
    return section


def load_speakers(directory: Path) -> dict[str, dict[str, torch.Tensor | int]] | None:
    """The voices of `spk_dict.pt` ({name: {cond, ref_mel, bos_token}}), or None when the file is absent."""
    path = directory / SPEAKER_FILE
    if not path.is_file():
        return None
    try:
        speakers = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises pickle/zip errors of several types
        raise CheckpointError(f"{path} could not be read as a speaker file: {exc}") from exc
    if not isinstance(speakers, dict) or not speakers:
        raise CheckpointError(f"{path} should hold a dict of voices, found {type(speakers).__name__}")
    for name, entry in speakers.items():
        missing = [key for key in ("cond", "ref_mel", "bos_token") if key not in entry]
        if missing:
            raise CheckpointError(f"{path}: voice {name!r} lacks {', '.join(missing)}")
    return speakers


# Where a checkpoint's chat template may be, in the order transformers looks: (file, JSON key; None for
# a file that is the template itself).
CHAT_TEMPLATE_SOURCES = (("processor_config.json", "chat_template"), ("chat_template.json", "chat_template"),
                         ("chat_template.jinja", None), ("tokenizer_config.json", "chat_template"))


def read_chat_template(directory: Path) -> tuple[str, Path] | None:
    """The checkpoint's chat template text and the file it came from, or None when it ships none.

    Looked up where the transformers processor looks (processor_config.json's "chat_template", then
    the legacy chat_template.json that the Qwen2.5-Omni hub repos ship, then chat_template.jinja) and
    then where the tokenizer does (tokenizer_config.json's "chat_template"). Of named templates the
    one called "default" is the chat template."""
    for name, key in CHAT_TEMPLATE_SOURCES:
        path = directory / name
        if not path.is_file():
            continue
        if key is None:
            return path.read_text(encoding="utf-8"), path
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path} is not valid JSON ({exc}); re-download the checkpoint") from exc
        template = raw.get(key) if isinstance(raw, dict) else None
        if template is None and name == "chat_template.json":
            raise CheckpointError(f"{path} has no {key!r} entry; it should hold {{\"{key}\": \"<Jinja text>\"}}")
        if template is None:
            continue
        if isinstance(template, list):  # tokenizer_config.json's [{"name": ..., "template": ...}, ...]
            template = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        if isinstance(template, dict):
            template = template.get("default")
        if not isinstance(template, str):
            raise CheckpointError(
                f"{path}'s {key!r} is neither a template text nor a set of named templates with a 'default' one"
            )
        return template, path
    return None


@dataclass(frozen=True)
class GenerationDefaults:
    """What a checkpoint's generation_config.json says about stopping and sampling."""

    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0


def load_generation_defaults(directory: Path, fallback_eos: tuple[int, ...]) -> GenerationDefaults:
    path = directory / "generation_config.json"
    raw = {}
    if path.is_file():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    eos = raw.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else fallback_eos)
    pad = raw.get("pad_token_id")
    return GenerationDefaults(
        eos_token_ids=tuple(int(i) for i in eos_ids),
        pad_token_id=int(pad if isinstance(pad, int) else eos_ids[-1]),
        do_sample=bool(raw.get("do_sample", False)),
        temperature=float(raw.get("temperature", 1.0)),
        top_k=int(raw.get("top_k", 0) or 0),
        top_p=float(raw.get("top_p", 1.0)),
        repetition_penalty=float(raw.get("repetition_penalty", 1.0)),
    )
