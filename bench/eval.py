"""Batched evaluation throughput: items/s of `omni eval asr` at batch size 1 and 8, same data, same
checkpoint, in one run (speech made with espeak-ng). The last line is JSON with `batch8_speedup`.

    python bench/eval.py [--preset small] [--items 16] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from omni.eval.data import load_asr
from omni.eval.runner import run_eval
from omni.loading import load_model
from omni.tools.make_checkpoint import cached_checkpoint

SENTENCES = [
    "the quick brown fox jumps over the lazy dog", "open the window and let the fresh air in",
    "she sells sea shells by the sea shore", "a journey of a thousand miles begins with one step",
    "the rain in spain stays mainly in the plain", "please call me back when you have a moment",
    "we will meet at the station at noon", "numbers like forty two are easy to say",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small", choices=["tiny", "small"])
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    loaded = load_model(cached_checkpoint(args.preset), dtype="fp32", audio_output=False)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        lines = []
        for index in range(args.items):
            text = SENTENCES[index % len(SENTENCES)]
            subprocess.run(["espeak-ng", "-w", str(root / f"{index}.wav"), text], check=True, capture_output=True)
            lines.append(json.dumps({"id": str(index), "audio": f"{index}.wav", "text": text}))
        (root / "data.jsonl").write_text("\n".join(lines) + "\n")
        samples = load_asr(root / "data.jsonl")
        run_eval("asr", loaded, samples[:2], root / "warmup", batch_size=2, max_new_tokens=4, progress=False)
        rates = {}
        for batch_size in (1, 8):
            start = time.perf_counter()
            run_eval("asr", loaded, samples, root / f"bs{batch_size}", batch_size=batch_size,
                     max_new_tokens=args.max_new_tokens, progress=False)
            rates[batch_size] = len(samples) / (time.perf_counter() - start)
            print(f"batch size {batch_size}: {rates[batch_size]:.2f} items/s")
        same = (root / "bs1" / "summary.json").read_text() == (root / "bs8" / "summary.json").read_text()
    print(json.dumps({
        "bench": "eval_asr_throughput", "preset": args.preset, "items": args.items,
        "max_new_tokens": args.max_new_tokens, "batch1_items_per_s": round(rates[1], 3),
        "batch8_items_per_s": round(rates[8], 3), "batch8_speedup": round(rates[8] / rates[1], 3),
        "same_summary": same,
    }))


if __name__ == "__main__":
    main()
