"""Resuming an evaluation adds to predictions only when the model and settings that made them are
the same (run.json); anything else is refused before predictions.jsonl is touched."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from omni.errors import OmniError
from omni.eval.data import load_vqa
from omni.eval.runner import run_eval
from omni.tools.media_factory import drawing

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vqa")
    rows = []
    for index in range(3):
        drawing(56, 56, seed=index).save(directory / f"{index}.png")
        rows.append({"id": f"q{index}", "image": f"{index}.png", "question": "How many shapes?", "answer": "3"})
    path = directory / "manifest.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _run(model, manifest, out, **options):
    settings = {"batch_size": 2, "max_new_tokens": 4, "progress": False, **options}
    return run_eval("vqa", model, load_vqa(manifest), out, **settings)


def test_resume_with_the_same_model_and_settings_goes_on(tiny_text_model, manifest, tmp_path, monkeypatch):
    import omni.eval.runner as runner

    first = _run(tiny_text_model, manifest, tmp_path, limit=2)
    assert json.loads((tmp_path / "run.json").read_text())["max_new_tokens"] == 4
    calls = []
    original = runner.generate_batch
    monkeypatch.setattr(runner, "generate_batch", lambda loaded, conversations, **kw: (
        calls.append(len(conversations)) or original(loaded, conversations, **kw)))
    # a smaller batch (after running out of memory) and a longer --limit do not change a prediction
    resumed = _run(tiny_text_model, manifest, tmp_path, batch_size=1)
    assert calls == [1] and first["samples"] == 2 and resumed["samples"] == 3
    ids = [json.loads(line)["id"] for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert ids == ["q0", "q1", "q2"]


def test_the_same_model_copied_elsewhere_resumes(tiny_checkpoint, tiny_text_model, manifest, tmp_path):
    from omni.loading import load_model

    _run(tiny_text_model, manifest, tmp_path / "out", limit=1)
    copy = shutil.copytree(tiny_checkpoint, tmp_path / "copy")
    summary = _run(load_model(copy, dtype="fp32", audio_output=False), manifest, tmp_path / "out")
    assert summary["samples"] == 3


@pytest.mark.parametrize("change, named", [
    ({"max_new_tokens": 5}, "max_new_tokens: was 4, now 5"),
    ({"seed": 3}, "seed: was 0, now 3"),
])
def test_other_settings_are_refused_and_predictions_untouched(tiny_text_model, manifest, tmp_path, change, named):
    _run(tiny_text_model, manifest, tmp_path, limit=2)
    before = (tmp_path / "predictions.jsonl").read_bytes()
    with pytest.raises(OmniError) as refused:
        _run(tiny_text_model, manifest, tmp_path, **change)
    assert named in str(refused.value) and "--restart" in str(refused.value) and "new --out" in str(refused.value)
    assert (tmp_path / "predictions.jsonl").read_bytes() == before


def test_other_data_is_refused(tiny_text_model, manifest, tmp_path):
    _run(tiny_text_model, manifest, tmp_path / "out", limit=2)
    before = (tmp_path / "out" / "predictions.jsonl").read_bytes()
    changed = tmp_path / "changed.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[1]["answer"] = "4"
    for row in rows:
        row["image"] = str(manifest.parent / row["image"])
    changed.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(OmniError, match="data: was 3 samples"):
        _run(tiny_text_model, changed, tmp_path / "out")
    assert (tmp_path / "out" / "predictions.jsonl").read_bytes() == before


def test_another_model_is_refused_and_restart_starts_over(tiny_text_model, manifest, tmp_path):
    from omni.loading import load_model
    from omni.tools.make_checkpoint import make_checkpoint

    out = tmp_path / "out"
    _run(tiny_text_model, manifest, out)
    before = (out / "predictions.jsonl").read_bytes()
    # same preset and config, other weights: only the weights tell the two apart
    other = load_model(make_checkpoint(tmp_path / "other", preset="tiny", seed=7), dtype="fp32", audio_output=False)
    with pytest.raises(OmniError, match=r"model: was .*, now .*other"):
        _run(other, manifest, out)
    assert (out / "predictions.jsonl").read_bytes() == before

    summary = _run(other, manifest, out, restart=True)
    assert summary["samples"] == 3
    assert json.loads((out / "run.json").read_text())["model"]["path"] == str(tmp_path / "other")
    _run(other, manifest, out)  # and it resumes from there


def test_predictions_without_a_record_are_refused(tiny_text_model, manifest, tmp_path):
    (tmp_path / "predictions.jsonl").write_text(json.dumps({"id": "q0", "prediction": "3"}) + "\n")
    with pytest.raises(OmniError, match="no readable run.json"):
        _run(tiny_text_model, manifest, tmp_path)
    assert (tmp_path / "predictions.jsonl").read_text().count("\n") == 1


def test_cli_refuses_a_mixed_resume_in_one_line(tiny_checkpoint, manifest, tmp_path):
    def evaluate(*extra):
        return subprocess.run(
            [sys.executable, "-m", "omni.cli", "eval", "vqa", str(tiny_checkpoint), "--data", str(manifest),
             "--out", str(tmp_path), "--no-progress", "--dtype", "fp32", *extra],
            capture_output=True, text=True, cwd=REPO, timeout=300,
        )

    assert evaluate("--max-new-tokens", "4").returncode == 0
    before = (tmp_path / "predictions.jsonl").read_bytes()
    refused = evaluate("--max-new-tokens", "6")
    assert refused.returncode == 2 and refused.stderr.startswith("omni: error:")
    assert len(refused.stderr.strip().splitlines()) == 1 and "max_new_tokens: was 4, now 6" in refused.stderr
    assert (tmp_path / "predictions.jsonl").read_bytes() == before
    restarted = evaluate("--max-new-tokens", "6", "--restart")
    assert restarted.returncode == 0, restarted.stderr
    assert json.loads((tmp_path / "run.json").read_text())["max_new_tokens"] == 6


@pytest.mark.parametrize("template_file", ["processor_config.json", "chat_template.json", "tokenizer_config.json"])
def test_a_changed_chat_template_is_another_model(tiny_checkpoint, tmp_path, template_file):
    """Every file the loader may read the chat template from counts (it changes every prompt)."""
    from omni.eval.fingerprint import model_digest

    copy = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, copy)
    before = model_digest(copy)
    path = copy / template_file
    raw = json.loads(path.read_text()) if path.is_file() else {}
    raw["chat_template"] = "{{ messages[0]['content'] }}"
    path.write_text(json.dumps(raw))
    assert model_digest(copy) != before
