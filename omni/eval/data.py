"""Evaluation manifests: what each sample is and what the model is asked.

ASR: a JSONL file (one {"audio", "text", optional "lang", "id"} per line; audio paths relative to the
file), or a LibriSpeech-style directory (`*.trans.txt` files of "ID words..." lines beside ID.flac).
VQA: a JSONL file of {"image" or "video", "question", "answer" or "answers", optional "choices",
"category", "id"}.

Prompts follow Qwen's published evaluation recipes for Qwen2.5-Omni: a speech-recognition system
prompt with a language-specific transcription instruction, and for VQA "Answer the question using a
single word or phrase." or, with choices, the lettered options and "Answer with the option's letter
from the given choices directly.".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omni.errors import InputError
from omni.eval.asr_metrics import language_code
from omni.eval.vqa_metrics import choice_letters

ASR_SYSTEM_PROMPT = "You are a speech recognition model."
ASR_INSTRUCTIONS = {
    "en": "Transcribe the English audio into text without any punctuation marks.",
    "zh": "请将这段中文语音转换为纯文本，去掉标点符号。",
}
ASR_GENERIC_INSTRUCTION = "Transcribe the audio into text without any punctuation marks."
VQA_SYSTEM_PROMPT = "You are a helpful assistant."
VQA_SHORT_ANSWER = "Answer the question using a single word or phrase."
VQA_CHOICE_ANSWER = "Answer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class AsrSample:
    id: str
    audio: str
    text: str
    lang: str = "en"

    def conversation(self) -> list[dict[str, Any]]:
        instruction = ASR_INSTRUCTIONS.get(language_code(self.lang), ASR_GENERIC_INSTRUCTION)
        return [{"role": "user", "content": [{"type": "audio", "audio": self.audio}, {"type": "text", "text": instruction}]}]


@dataclass(frozen=True)
class VqaSample:
    id: str
    question: str
    answers: tuple[str, ...]
    image: str | None = None
    video: str | None = None
    choices: tuple[str, ...] = ()
    category: str = "all"
    extra: dict = field(default_factory=dict, compare=False)

    def conversation(self) -> list[dict[str, Any]]:
        media = {"type": "image", "image": self.image} if self.image else {"type": "video", "video": self.video}
        if self.choices:
            options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(choice_letters(len(self.choices)), self.choices))
            text = f"{self.question}\n{options}\n{VQA_CHOICE_ANSWER}"
        else:
            text = f"{self.question}\n{VQA_SHORT_ANSWER}"
        return [{"role": "user", "content": [media, {"type": "text", "text": text}]}]


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number} is not valid JSON: {exc}") from exc
        if not isinstance(row, dict):
            raise InputError(f"{path}:{number} must be a JSON object")
        rows.append((number, row))
    return rows


def _resolve(base: Path, value: str) -> str:
    if "://" in value or value.startswith("data:"):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path))


def load_asr(data: str | Path) -> list[AsrSample]:
    path = Path(data)
    if path.is_dir():
        return _load_librispeech(path)
    if not path.is_file():
        raise InputError(f"ASR data {path} is neither a JSONL manifest nor a directory")
    samples = []
    for number, row in _read_jsonl(path):
        missing = [key for key in ("audio", "text") if key not in row]
        if missing:
            raise InputError(f"{path}:{number} lacks {', '.join(missing)} (ASR lines need audio and text)")
        samples.append(AsrSample(
            id=str(row.get("id", f"{path.stem}-{number}")), audio=_resolve(path.parent, str(row["audio"])),
            text=str(row["text"]), lang=str(row.get("lang") or "en"),
        ))
    _check_unique(samples, path)
    return samples


def _load_librispeech(directory: Path) -> list[AsrSample]:
    samples = []
    for transcript in sorted(directory.rglob("*.trans.txt")):
        for line in transcript.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            utterance, _, text = line.partition(" ")
            audio = transcript.parent / f"{utterance}.flac"
            if not audio.is_file():
                raise InputError(f"{transcript} names {utterance} but {audio} does not exist")
            samples.append(AsrSample(id=utterance, audio=str(audio), text=text, lang="en"))
    if not samples:
        raise InputError(f"{directory} holds no *.trans.txt transcripts (LibriSpeech layout)")
    _check_unique(samples, directory)
    return samples


def load_vqa(data: str | Path) -> list[VqaSample]:
    path = Path(data)
    if not path.is_file():
        raise InputError(f"VQA manifest {path} does not exist")
    samples = []
    for number, row in _read_jsonl(path):
        if "question" not in row or not ("image" in row or "video" in row):
            raise InputError(f"{path}:{number} needs a question and an image or video")
        answers = row.get("answers", row.get("answer"))
        if answers is None:
            raise InputError(f"{path}:{number} needs answer or answers")
        answers = tuple(str(a) for a in (answers if isinstance(answers, list) else [answers]))
        choices = tuple(str(c) for c in row.get("choices") or ())
        if choices and len(choices) > 26:
            raise InputError(f"{path}:{number} has {len(choices)} choices; at most 26 (A-Z)")
        samples.append(VqaSample(
            id=str(row.get("id", f"{path.stem}-{number}")), question=str(row["question"]), answers=answers,
            image=_resolve(path.parent, str(row["image"])) if "image" in row else None,
            video=_resolve(path.parent, str(row["video"])) if "video" in row else None,
            choices=choices, category=str(row.get("category", "all")),
        ))
    _check_unique(samples, path)
    return samples


def _check_unique(samples, source) -> None:
    seen = set()
    for sample in samples:
        if sample.id in seen:
            raise InputError(f"{source}: id {sample.id!r} appears twice; ids must be unique for resuming")
        seen.add(sample.id)
