"""Scale-out on Ray Serve: the same concurrent spoken load against 1 replica and against 2.

    python bench/scale.py [--preset tiny|small] [--requests 32] [--concurrency 8] [--repeats 2] [--no-pin]

A local Ray instance with 2 CPUs; every replica gets one CPU (`--replica-cpus 1`, one torch thread)
and is pinned to its own core (`--replica-pin-cores`), so 2 replicas have twice the cores of 1 and the
comparison is fair on a 2-core machine. Without the pinning the limit is Ray's bookkeeping only: one
replica with one torch thread ran on 1.25-1.5 cores (its engine, encoder and codec threads; /proc
sampled every 5 s during a run), so "1 replica" had more than one core and two replicas took cores
from each other (`--no-pin` measures that layout).
The two layouts take turns over `--repeats` (each turn deploys its layout afresh and sends one
warm-up request per replica). Per layout: requests per second, p50/p95 time to first audio (from
sending the request to the first audio byte), errors. `scale_efficiency` = rps(2) / (2 x rps(1));
goal >= 0.8. The last line is one JSON object.

The load is `--concurrency` requests in flight, `--requests` per turn. Its default, 8, is one
replica's `--max-batch`: the load that keeps one replica's batches full, so that requests per second
is a throughput at saturation for both layouts (at 4 in flight two replicas each run half-empty
batches of 2, and the figure measures batch fill as much as scale-out). 32 requests per turn: with 16,
a turn's ramp and tail (the last requests running with fewer in flight) weigh too much.
Measured on this 2-core EPYC (quiet, 2 repeats unless said): unpinned, concurrency 4: 0.69-0.81 over
five runs (stop 20); unpinned, concurrency 8: 0.796; pinned, concurrency 4: 0.811 (1 repeat); pinned,
concurrency 8 (the defaults): 0.867 and 0.967 on two runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.server_process import free_port  # noqa: E402
from bench.token2wav import cpu_name  # noqa: E402
from omni.cli import build_parser  # noqa: E402
from omni.server.replicas import DEPLOYMENT, NAMESPACE, build_application, plan_from_args  # noqa: E402
from omni.tools.make_checkpoint import cached_checkpoint  # noqa: E402

MODEL = "omni-bench"


async def _one(client: httpx.AsyncClient, index: int, max_tokens: int) -> tuple[float | None, bool]:
    """(seconds to the first audio byte, ok)"""
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"Tell me a story, number {index}."}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True, "seed": index,
            "modalities": ["text", "audio"], "audio": {"voice": "Chelsie", "format": "pcm16"}}
    start = time.perf_counter()
    first_audio = None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                return None, False
            tail = b""
            async for line in response.aiter_lines():
                if not line.strip():
                    continue  # the blank line after each event
                if first_audio is None and '"audio"' in line and '"data":' in line:
                    first_audio = time.perf_counter() - start
                tail = line.encode()
            return first_audio, tail.strip() == b"data: [DONE]"
    except httpx.HTTPError:
        return first_audio, False


async def _load(base: str, requests: int, concurrency: int, max_tokens: int) -> dict:
    gate = asyncio.Semaphore(concurrency)

    async def gated(client, index):
        async with gate:
            return await _one(client, index, max_tokens)

    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(600.0)) as client:
        start = time.perf_counter()
        outcomes = await asyncio.gather(*(gated(client, i) for i in range(requests)))
        wall_s = time.perf_counter() - start
    firsts = sorted(first for first, ok in outcomes if ok and first is not None)
    errors = sum(not ok for _, ok in outcomes)
    return {"rps": (requests - errors) / wall_s, "wall_s": wall_s, "errors": errors,
            "first_audio_p50_s": statistics.median(firsts) if firsts else None,
            "first_audio_p95_s": firsts[min(len(firsts) - 1, int(0.95 * len(firsts)))] if firsts else None}


def _deploy(checkpoint: Path, replicas: int, port: int, max_tokens: int, pin: bool) -> None:
    from ray import serve

    args = build_parser().parse_args(["serve", str(checkpoint), "--served-model-name", MODEL, "--dtype", "fp32",
                                      "--replicas", str(replicas), "--replica-cpus", "1", "--max-batch", "8",
                                      "--default-max-tokens", str(max_tokens), "--kv-gb", "1", "--cache-gb", "0",
                                      *(["--replica-pin-cores"] if pin else [])])
    serve.run(build_application(args, plan_from_args(args)), name=DEPLOYMENT, route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    asyncio.run(_load(base, replicas, replicas, 4))  # warm-up: one request per replica


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--no-pin", action="store_true",
                        help="leave the replicas unpinned (Ray's CPU count only; see the docstring)")
    args = parser.parse_args()

    import ray
    from ray import serve

    checkpoint = cached_checkpoint(args.preset)
    ray.init(num_cpus=2, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    runs: dict[int, list[dict]] = {1: [], 2: []}
    try:
        for repeat in range(args.repeats):
            for replicas in (1, 2):
                _deploy(checkpoint, replicas, port, args.max_tokens, pin=not args.no_pin)
                figures = asyncio.run(_load(f"http://127.0.0.1:{port}", args.requests, args.concurrency,
                                            args.max_tokens))
                runs[replicas].append(figures)
                print(f"repeat {repeat} replicas {replicas}: {json.dumps(figures)}", file=sys.stderr)
                serve.delete(DEPLOYMENT)
    finally:
        serve.shutdown()
        ray.shutdown()

    def summary(replicas: int) -> dict:
        done = runs[replicas]
        p50s = [r["first_audio_p50_s"] for r in done if r["first_audio_p50_s"] is not None]
        p95s = [r["first_audio_p95_s"] for r in done if r["first_audio_p95_s"] is not None]
        return {"rps": round(statistics.median(r["rps"] for r in done), 4),
                "first_audio_p50_s": round(statistics.median(p50s), 3) if p50s else None,
                "first_audio_p95_s": round(statistics.median(p95s), 3) if p95s else None,
                "errors": sum(r["errors"] for r in done)}

    one, two = summary(1), summary(2)
    print(json.dumps({"bench": "scale", "preset": args.preset, "cpu": cpu_name(), "cpus": os.cpu_count(),
                      "requests": args.requests, "concurrency": args.concurrency, "repeats": args.repeats,
                      "pinned": not args.no_pin,
                      "replicas_1": one, "replicas_2": two,
                      "scale_efficiency": round(two["rps"] / (2 * one["rps"]), 3) if one["rps"] else None}))


if __name__ == "__main__":
    main()
