"""Run an evaluation: batched inference, predictions appended as they finish, resumable, summarised.

Predictions go to `<out>/predictions.jsonl`, one line per sample as soon as its batch finishes; a
rerun with the same output directory skips every id already there, provided it runs the same model
and settings (recorded in `<out>/run.json`; others are refused, see `fingerprint.py`). The summary
(`summary.json`, and a table on stdout) is computed from the whole predictions file, so an
interrupted run that is resumed reports the same figures as an uninterrupted one. A sample whose
media cannot be read is recorded with its error and scored as a failure (empty transcript / wrong
answer), not skipped.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from omni.batch import generate_batch
from omni.errors import OmniError
from omni.eval.asr_metrics import ZERO, ErrorCounts, error_counts, uses_characters
from omni.eval.data import ASR_SYSTEM_PROMPT, VQA_SYSTEM_PROMPT, AsrSample, VqaSample
from omni.eval.fingerprint import FINGERPRINT, differences, run_fingerprint
from omni.eval.vqa_metrics import exact_match, extract_choice, vqa_soft_accuracy
from omni.loading import LoadedModel
from omni.sampling import SamplingParams

PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"


def score_asr(sample: AsrSample, prediction: str) -> dict[str, Any]:
    counts = error_counts(sample.text, prediction, sample.lang)
    return {
        "reference": sample.text, "lang": sample.lang, "unit": "char" if uses_characters(sample.lang) else "word",
        "substitutions": counts.substitutions, "deletions": counts.deletions, "insertions": counts.insertions,
        "reference_length": counts.reference_length,
    }


def score_vqa(sample: VqaSample, prediction: str) -> dict[str, Any]:
    record: dict[str, Any] = {"answers": list(sample.answers), "category": sample.category}
    if sample.choices:
        letter = extract_choice(prediction, sample.choices)
        expected = sample.answers[0].strip().upper()
        if len(expected) != 1:  # the answer was given as the choice's text
            matches = [chr(65 + i) for i, c in enumerate(sample.choices) if exact_match(c, [sample.answers[0]])]
            expected = matches[0] if matches else expected
        record.update(choice=letter, expected_choice=expected, choice_correct=float(letter == expected))
    record["exact_match"] = exact_match(prediction, sample.answers)
    if len(sample.answers) > 1:
        record["soft_accuracy"] = vqa_soft_accuracy(prediction, sample.answers)
    return record


def run_eval(
    task: str,
    loaded: LoadedModel,
    samples: Sequence[AsrSample | VqaSample],
    out_dir: str | Path,
    batch_size: int = 8,
    limit: int | None = None,
    seed: int = 0,
    max_new_tokens: int = 128,
    sampling: SamplingParams | None = None,
    progress: bool = True,
    restart: bool = False,
) -> dict[str, Any]:
    """Predict, score and summarise `samples` into `out_dir`, resuming what is there. `restart`
    discards earlier predictions; without it, predictions of another model or settings are refused."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictions_path = out / PREDICTIONS
    sampling = (sampling or SamplingParams()).with_overrides(seed=seed)
    system_prompt = ASR_SYSTEM_PROMPT if task == "asr" else VQA_SYSTEM_PROMPT
    fingerprint = run_fingerprint(task, loaded, samples, max_new_tokens, seed, sampling, system_prompt)
    _claim_output(out, fingerprint, restart)
    done = {row["id"] for row in _read_predictions(predictions_path)}
    selected = list(samples)[:limit] if limit is not None else list(samples)
    todo = [sample for sample in selected if sample.id not in done]
    torch.manual_seed(seed)
    scorer = score_asr if task == "asr" else score_vqa

    bar = _progress(total=len(selected), initial=len(selected) - len(todo), enabled=progress, task=task)
    running = _RunningMetric(task, [row for row in _read_predictions(predictions_path) if row["id"] in {s.id for s in selected}])
    with predictions_path.open("a", encoding="utf-8") as sink:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            for sample, (prediction, error) in zip(batch, _predict(loaded, batch, system_prompt, max_new_tokens, sampling)):
                row = {"id": sample.id, "prediction": prediction, **scorer(sample, prediction)}
                if error:
                    row["error"] = error
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                running.add(row)
            sink.flush()
            bar.update(len(batch))
            bar.set_postfix_str(running.describe())
    bar.close()

    ids = {sample.id for sample in selected}
    rows = [row for row in _read_predictions(predictions_path) if row["id"] in ids]
    summary = summarize(task, rows)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def _claim_output(out: Path, fingerprint: dict[str, Any], restart: bool) -> None:
    """Make `out` this run's: refuse (before writing anything) to add to predictions that another
    model or other settings made, unless `restart` discards them."""
    predictions_path, record_path = out / PREDICTIONS, out / FINGERPRINT
    existing = len(_read_predictions(predictions_path))
    if existing and not restart:
        try:
            recorded = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            recorded = None
        how = (f"use a new --out, or --restart (restart=True in run_eval) to discard those {existing} "
               "predictions and start over")
        if not isinstance(recorded, dict):
            raise OmniError(f"{predictions_path} holds {existing} predictions but no readable {record_path.name} "
                            f"saying which model and settings made them (an older omni wrote it); {how}")
        changed = differences(recorded, fingerprint)
        if changed:
            raise OmniError(f"{out} holds {existing} predictions made by another model or settings "
                            f"({'; '.join(changed)}); they cannot be mixed: {how}")
    if restart:
        for name in (PREDICTIONS, SUMMARY):
            (out / name).unlink(missing_ok=True)
    scratch = record_path.with_name(record_path.name + ".tmp")
    scratch.write_text(json.dumps(fingerprint, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    scratch.replace(record_path)


def _predict(loaded, batch, system_prompt, max_new_tokens, sampling) -> list[tuple[str, str | None]]:
    conversations = [sample.conversation() for sample in batch]
    try:
        results = generate_batch(loaded, conversations, max_new_tokens=max_new_tokens, sampling=sampling,
                                 system_prompt=system_prompt)
        return [(result.text, None) for result in results]
    except OmniError:
        if len(batch) == 1:
            raise
    # one sample's media failed: run them one by one so only that sample is marked
    outcomes = []
    for sample in batch:
        try:
            outcomes.append(_predict(loaded, [sample], system_prompt, max_new_tokens, sampling)[0])
        except OmniError as exc:
            outcomes.append(("", str(exc)))
    return outcomes


def summarize(task: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"task": task, "samples": len(rows), "errors": sum("error" in row for row in rows)}
    if task == "asr":
        by_lang: dict[str, ErrorCounts] = defaultdict(lambda: ZERO)
        words, chars = ZERO, ZERO
        for row in rows:
            counts = ErrorCounts(row["substitutions"], row["deletions"], row["insertions"], row["reference_length"])
            by_lang[row["lang"]] += counts
            if row["unit"] == "char":
                chars += counts
            else:
                words += counts
        summary["wer"] = words.rate if words.reference_length else None
        summary["cer"] = chars.rate if chars.reference_length else None
        summary["per_language"] = {
            lang: {"metric": "cer" if uses_characters(lang) else "wer", "rate": counts.rate,
                   "errors": counts.errors, "reference_length": counts.reference_length}
            for lang, counts in sorted(by_lang.items())
        }
        return summary
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["category"]].append(row)
    summary.update(_vqa_figures(rows))
    summary["per_category"] = {category: _vqa_figures(members) for category, members in sorted(groups.items())}
    return summary


def _vqa_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(key):
        values = [row[key] for row in rows if key in row]
        return (sum(values) / len(values)) if values else None

    return {"count": len(rows), "exact_match": mean("exact_match"), "soft_accuracy": mean("soft_accuracy"),
            "choice_accuracy": mean("choice_correct")}


def format_table(summary: dict[str, Any]) -> str:
    if summary["task"] == "asr":
        lines = [f"{'language':<10} {'metric':<6} {'rate':>8} {'errors':>8} {'units':>8}"]
        for lang, figures in summary["per_language"].items():
            lines.append(f"{lang:<10} {figures['metric']:<6} {figures['rate'] * 100:7.2f}% "
                         f"{figures['errors']:>8} {figures['reference_length']:>8}")
        for key in ("wer", "cer"):
            if summary[key] is not None:
                lines.append(f"{'total':<10} {key:<6} {summary[key] * 100:7.2f}%")
    else:
        def cell(value):
            return f"{value * 100:7.2f}%" if value is not None else f"{'-':>8}"

        lines = [f"{'category':<16} {'count':>6} {'exact':>8} {'soft':>8} {'choice':>8}"]
        rows = list(summary["per_category"].items()) + [("total", summary)]
        for name, figures in rows:
            lines.append(f"{name:<16} {figures['count']:>6} {cell(figures['exact_match'])} "
                         f"{cell(figures['soft_accuracy'])} {cell(figures['choice_accuracy'])}")
    lines.append(f"samples: {summary['samples']}, unreadable: {summary['errors']}")
    return "\n".join(lines)


def _read_predictions(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut off by an interruption: that sample runs again
    return rows


class _RunningMetric:
    def __init__(self, task: str, rows: list[dict[str, Any]]) -> None:
        self.task = task
        self.counts = ZERO
        self.correct = 0.0
        self.total = 0
        for row in rows:
            self.add(row)

    def add(self, row: dict[str, Any]) -> None:
        self.total += 1
        if self.task == "asr":
            self.counts += ErrorCounts(row["substitutions"], row["deletions"], row["insertions"], row["reference_length"])
        else:
            self.correct += row.get("choice_correct", row.get("soft_accuracy", row["exact_match"]))

    def describe(self) -> str:
        if self.task == "asr":
            return f"error rate {self.counts.rate * 100:.1f}%" if self.counts.reference_length else ""
        return f"accuracy {self.correct / self.total * 100:.1f}%" if self.total else ""


class _NoBar:
    def update(self, n): pass
    def set_postfix_str(self, text): pass
    def close(self): pass


def _progress(total: int, initial: int, enabled: bool, task: str):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=f"eval {task}", unit="item", file=sys.stderr)
