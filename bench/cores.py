"""Two torch processes on one machine: sharing every core against splitting the cores between them.

    python bench/cores.py [--preset tiny] [--repeats 2]

One spoken reply (fixed length, greedy) is timed three ways, the ways taking turns:
- `alone`: nothing else runs; the reply uses every core (`--threads` = cores);
- `shared`: a second torch process keeps every core busy with matrix products, and both use every
  core (what two default processes do: each one's thread pool spans all cores, and their threads
  wait on each other at every parallel region);
- `split`: the same neighbour, but each process pinned to its own half of the cores
  (`taskset`) with `--threads` = that half, as the README's "Splitting cores" section advises.

`shared_slowdown` and `split_slowdown` are those times over `alone`. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

REPLY = r"""
import sys, time, torch
threads = int(sys.argv[2])
torch.set_num_threads(threads)
from omni.engine import Engine, EngineOptions
from omni.loading import load_model
from omni.sampling import SamplingParams
from omni.session import OmniSession
from omni.speech import SpeechOptions
from omni.talker.generate import TalkerOptions
model = load_model(sys.argv[1], dtype="fp32")
engine = Engine(model, EngineOptions(threads=threads))
talker = TalkerOptions(sampling=SamplingParams(do_sample=False, repetition_penalty=1.05), max_codes=int(sys.argv[3]))
def reply():
    session = OmniSession(model, sampling=SamplingParams(do_sample=False), engine=engine)
    return session.reply("Tell me about rivers.", max_new_tokens=12, speech=SpeechOptions(talker=talker, seed=1))
reply()  # warm-up
began = time.perf_counter()
done = reply().done
print("SECONDS", time.perf_counter() - began, done.timings.audio_duration_s)
"""

NEIGHBOUR = r"""
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(768, 768)
while True:
    a = torch.tanh(a @ a) * 0.5
"""


def _cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _pinned(command: list[str], cores: list[int] | None) -> list[str]:
    return (["taskset", "-c", ",".join(map(str, cores))] if cores else []) + command


def _time_reply(checkpoint: Path, threads: int, cores: list[int] | None, codes: int) -> tuple[float, float]:
    out = subprocess.run(_pinned([sys.executable, "-c", REPLY, str(checkpoint), str(threads), str(codes)], cores),
                         cwd=REPO, capture_output=True, text=True, check=True, timeout=3600)
    line = next(line for line in out.stdout.splitlines() if line.startswith("SECONDS"))
    seconds, audio = line.split()[1:]
    return float(seconds), float(audio)


def _run(way: str, checkpoint: Path, codes: int) -> float:
    cores = _cores()
    half = max(1, len(cores) // 2)
    neighbour = None
    if way != "alone":
        threads, pin = (len(cores), None) if way == "shared" else (half, cores[half:] or cores)
        neighbour = subprocess.Popen(_pinned([sys.executable, "-c", NEIGHBOUR, str(threads)], pin))
        time.sleep(2)
    try:
        if way == "alone":
            return _time_reply(checkpoint, len(cores), None, codes)[0]
        if way == "shared":
            return _time_reply(checkpoint, len(cores), None, codes)[0]
        return _time_reply(checkpoint, half, cores[:half], codes)[0]
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--codes", type=int, default=200, help="codec tokens of the spoken reply")
    args = parser.parse_args()
    from omni.tools.make_checkpoint import cached_checkpoint

    checkpoint = cached_checkpoint(args.preset, os.environ.get("OMNI_TEST_CACHE", REPO / ".omni-cache"))
    ways = ["alone", "shared", "split"]
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    for repeat in range(args.repeats):
        for way in (ways if repeat % 2 == 0 else ways[::-1]):
            seconds[way].append(_run(way, checkpoint, args.codes))
            print(f"{way}: {seconds[way][-1]:.2f} s", file=sys.stderr)
    median = {way: statistics.median(values) for way, values in seconds.items()}
    print(json.dumps({"bench": "cores", "preset": args.preset, "cores": len(_cores()), "codes": args.codes,
                      **{f"{way}_s": round(value, 3) for way, value in median.items()},
                      "shared_slowdown": round(median["shared"] / median["alone"], 2),
                      "split_slowdown": round(median["split"] / median["alone"], 2)}))


if __name__ == "__main__":
    main()
