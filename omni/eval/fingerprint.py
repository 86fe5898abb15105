"""What made an evaluation's predictions: model, data and settings, recorded beside them.

A resumed run appends to predictions.jsonl, so the rows must all come from one model under one set
of settings; `run.json` records them and a resume that differs is refused before anything is
written. Only what changes a prediction counts: the batch size does not (batched greedy decoding
equals single runs) and neither does --limit (it picks a prefix of the same samples), so a run
resumed after an out-of-memory error with a smaller batch, or extended to more samples, goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omni.checkpoint import CHAT_TEMPLATE_SOURCES, weight_files
from omni.loading import LoadedModel
from omni.sampling import SamplingParams

FINGERPRINT = "run.json"
# Files whose bytes decide what the model says: configs, the tokenizer, and every file a chat
# template may be read from (the loader's own list).
_MODEL_TEXT_FILES = ("config.json", "generation_config.json", "tokenizer.json",
                     *(name for name, _ in CHAT_TEMPLATE_SOURCES))
_WEIGHT_SAMPLE_BYTES = 64 * 1024
# Where each weight file is sampled, as fractions of its size: the safetensors header (names, shapes,
# offsets) sits at the start, and any fine-tune changes the values everywhere.
_WEIGHT_SAMPLE_AT = (0.0, 0.5, 1.0)


def model_digest(directory: Path) -> str:
    """A hash of a checkpoint that is cheap on a 20 GB model yet tells apart another model: its
    config, tokenizer and template files whole, and for each weight file its size and three 64 KiB
    samples. Content, not paths or times: a copied or moved checkpoint is the same model."""
    digest = hashlib.sha256()
    for name in _MODEL_TEXT_FILES:
        path = directory / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    for name in sorted(set(weight_files(directory).file_of.values())):
        path = directory / name
        size = path.stat().st_size
        digest.update(f"{name}\0{size}\0".encode())
        with path.open("rb") as handle:
            for fraction in _WEIGHT_SAMPLE_AT:
                handle.seek(max(0, min(size - _WEIGHT_SAMPLE_BYTES, int(size * fraction))))
                digest.update(handle.read(_WEIGHT_SAMPLE_BYTES))
    return digest.hexdigest()


def data_digest(samples: Sequence[Any]) -> str:
    """A hash of the samples (ids, references, questions, media paths) in order. Media paths count
    relative to the folder that holds them all, so a dataset moved as a whole is the same data."""
    records = [{f.name: getattr(s, f.name) for f in dataclasses.fields(s) if f.compare} for s in samples]
    media_keys = ("audio", "image", "video")
    local = [r[k] for r in records for k in media_keys if isinstance(r.get(k), str) and os.path.isabs(r[k])]
    root = os.path.commonpath([os.path.dirname(p) for p in local]) if local else None
    for record in records:
        for key in media_keys:
            value = record.get(key)
            if root is not None and isinstance(value, str) and os.path.isabs(value):
                record[key] = os.path.relpath(value, root)
    encoded = json.dumps(records, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(encoded.encode()).hexdigest()


def run_fingerprint(task: str, loaded: LoadedModel, samples: Sequence[Any], max_new_tokens: int, seed: int,
                    sampling: SamplingParams, system_prompt: str) -> dict[str, Any]:
    fingerprint = {
        "task": task,
        "model": {"path": str(loaded.path), "digest": model_digest(Path(loaded.path))},
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "quantization": loaded.quantization,
        "data": {"samples": len(samples), "digest": data_digest(samples)},
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "sampling": dataclasses.asdict(sampling),
        "system_prompt": system_prompt,
    }
    # as run.json will hold it (tuples become lists), so that it compares equal to a recorded one
    return json.loads(json.dumps(fingerprint, ensure_ascii=False))


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, in words ("max_new_tokens: was 8, now 16")."""
    found = []
    for key in current:
        before, now = recorded.get(key), current[key]
        if key == "model":
            before = before or {}
            if before.get("digest") != now["digest"]:
                found.append(f"model: was {before.get('path', '?')} ({str(before.get('digest', '?'))[:12]}), "
                             f"now {now['path']} ({now['digest'][:12]})")
        elif key == "data":
            before = before or {}
            if before.get("digest") != now["digest"]:
                found.append(f"data: was {before.get('samples', '?')} samples ({str(before.get('digest', '?'))[:12]}), "
                             f"now {now['samples']} ({now['digest'][:12]})")
        elif before != now:
            found.append(f"{key}: was {before!r}, now {now!r}")
    return found
