"""End to end on the tiny checkpoint with data the test makes: espeak-ng speech in English and
Mandarin, Pillow images with known answers; the run writes predictions and a summary and resumes
after an interruption without redoing finished items."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import pytest

import omni.eval.runner as runner
from omni.eval.data import load_asr, load_vqa
from omni.eval.runner import format_table, run_eval
from omni.tools.media_factory import drawing

REPO = Path(__file__).resolve().parents[3]
SENTENCES = [
    ("en", "the quick brown fox jumps over the lazy dog"),
    ("en", "she sells sea shells by the sea shore"),
    ("en", "open the window please"),
    ("zh", "今天天气很好"),
    ("zh", "我们一起去公园"),
]


def _speak(path: Path, text: str, lang: str) -> Path:
    voice = {"en": "en", "zh": "cmn"}[lang]
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True, timeout=60)
    return path


@pytest.fixture(scope="module")
def asr_manifest(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install -y espeak-ng); .ci/run installs it")
    directory = tmp_path_factory.mktemp("asr")
    lines = []
    for index, (lang, text) in enumerate(SENTENCES):
        _speak(directory / f"{index}.wav", text, lang)
        lines.append(json.dumps({"id": f"utt{index}", "audio": f"{index}.wav", "text": text, "lang": lang}, ensure_ascii=False))
    (directory / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory / "manifest.jsonl"


@pytest.fixture(scope="module")
def vqa_manifest(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vqa")
    rows = []
    for index in range(4):
        drawing(84, 56, seed=index).save(directory / f"{index}.png")
    rows.append({"id": "q0", "image": "0.png", "question": "How many shapes are there?", "answers": ["3", "3", "three", "4"], "category": "count"})
    rows.append({"id": "q1", "image": "1.png", "question": "What color is the background?", "answer": "white", "category": "color"})
    rows.append({"id": "q2", "image": "2.png", "question": "Which shape is largest?", "choices": ["circle", "square", "triangle"], "answer": "B", "category": "shape"})
    rows.append({"id": "q3", "image": "3.png", "question": "Is there a circle?", "answer": "yes", "category": "shape"})
    rows.append({"id": "q4", "image": "missing.png", "question": "Broken sample?", "answer": "no", "category": "color"})
    path = directory / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_asr_run_writes_predictions_and_summary(tiny_text_model, asr_manifest, tmp_path):
    samples = load_asr(asr_manifest)
    summary = run_eval("asr", tiny_text_model, samples, tmp_path, batch_size=2, max_new_tokens=8, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == [f"utt{i}" for i in range(len(SENTENCES))]
    assert set(summary["per_language"]) == {"en", "zh"}
    assert summary["per_language"]["zh"]["metric"] == "cer" and summary["per_language"]["en"]["metric"] == "wer"
    assert summary["per_language"]["en"]["reference_length"] == sum(len(t.split()) for l, t in SENTENCES if l == "en")
    assert summary["per_language"]["zh"]["reference_length"] == sum(len(t) for l, t in SENTENCES if l == "zh")
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert "zh" in format_table(summary) and "total" in format_table(summary)


def test_resume_after_interruption_redoes_nothing(tiny_text_model, asr_manifest, tmp_path, monkeypatch):
    samples = load_asr(asr_manifest)
    complete = run_eval("asr", tiny_text_model, samples, tmp_path / "straight", batch_size=2, max_new_tokens=8, progress=False)

    calls = []
    original = runner.generate_batch

    def interrupted(loaded, conversations, **kwargs):
        calls.append(len(conversations))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the second batch
        return original(loaded, conversations, **kwargs)

    monkeypatch.setattr(runner, "generate_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_eval("asr", tiny_text_model, samples, tmp_path / "resumed", batch_size=2, max_new_tokens=8, progress=False)
    assert len((tmp_path / "resumed" / "predictions.jsonl").read_text().splitlines()) == 2

    calls.clear()
    monkeypatch.setattr(runner, "generate_batch", lambda loaded, conversations, **kw: calls.append(len(conversations)) or original(loaded, conversations, **kw))
    resumed = run_eval("asr", tiny_text_model, samples, tmp_path / "resumed", batch_size=2, max_new_tokens=8, progress=False)
    assert sum(calls) == len(samples) - 2  # only the unfinished items ran
    ids = [json.loads(l)["id"] for l in (tmp_path / "resumed" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(s.id for s in samples) and len(ids) == len(set(ids))
    assert resumed == complete  # greedy and deterministic: same figures as the uninterrupted run


def test_vqa_run_scores_and_records_unreadable_media(tiny_text_model, vqa_manifest, tmp_path):
    summary = run_eval("vqa", tiny_text_model, load_vqa(vqa_manifest), tmp_path, batch_size=8, max_new_tokens=6, progress=False)
    rows = {json.loads(l)["id"]: json.loads(l) for l in (tmp_path / "predictions.jsonl").read_text().splitlines()}
    assert set(rows) == {"q0", "q1", "q2", "q3", "q4"}
    assert "missing.png" in rows["q4"]["error"] and rows["q4"]["exact_match"] == 0.0
    assert summary["errors"] == 1 and summary["samples"] == 5
    assert "soft_accuracy" in rows["q0"] and "choice" in rows["q2"]
    assert set(summary["per_category"]) == {"count", "color", "shape"}
    assert summary["per_category"]["shape"]["count"] == 2


def test_librispeech_directory_and_cli(tiny_checkpoint, asr_manifest, tmp_path):
    chapter = tmp_path / "libri" / "19" / "198"
    chapter.mkdir(parents=True)
    lines = []
    for index, (lang, text) in enumerate(SENTENCES[:3]):
        wav = asr_manifest.parent / f"{index}.wav"
        with av.open(str(wav)) as source, av.open(str(chapter / f"19-198-{index:04d}.flac"), "w") as target:
            stream = target.add_stream("flac", rate=source.streams.audio[0].rate)
            for frame in source.decode(audio=0):
                frame.pts = None
                for packet in stream.encode(frame):
                    target.mux(packet)
            for packet in stream.encode(None):
                target.mux(packet)
        lines.append(f"19-198-{index:04d} {text.upper()}")
    (chapter / "19-198.trans.txt").write_text("\n".join(lines) + "\n")
    assert [s.id for s in load_asr(tmp_path / "libri")] == ["19-198-0000", "19-198-0001", "19-198-0002"]

    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "omni.cli", "eval", "asr", str(tiny_checkpoint), "--data", str(tmp_path / "libri"),
         "--out", str(out), "--batch-size", "2", "--max-new-tokens", "6", "--no-progress", "--dtype", "fp32"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "total" in result.stdout and json.loads((out / "summary.json").read_text())["samples"] == 3
