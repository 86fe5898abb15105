"""`omni serve` under concurrent streaming load: the batching engine against one thread per request.

    python bench/serve.py [--preset small|tiny] [--requests 8] [--levels 1,4,8,16] [--repeats 2]
    python bench/serve.py --turns 4 [--preset small]

Load mode (default): starts two servers on the same random-weight checkpoint, one with the engine
(`--scheduler engine`, the default) and one with today's one-thread-per-request path (`--scheduler
threads`), each sends one warm-up request, then the two take turns: for every concurrency level in
`--levels` (and `--repeats` times at `--requests`), N concurrent streaming requests asking for text and
audio; then the headline load once more asking for text only (`--text-tokens` per reply), where the
batched Thinker is all the work (`text_throughput_ratio`, text tokens per second engine / threads). Figures per side and level: time to the first audio byte and first text (p50/p95, from
sending the request), audio seconds produced per wall second, errors. `throughput_ratio` is engine /
threads audio-seconds-per-second at `--requests` (median over repeats), `single_user_ttfa_ratio`
engine / threads median time to first audio with one request.

Turns mode (`--turns N`): one conversation with an image and an audio clip, resent whole every turn
as an HTTP client does; the N-th turn's time to first audio with the engine's prefix cache
(`--cache-gb 1`) against without it (`--cache-gb 0`), the two servers taking turns over `--repeats`
conversations (each starts with a different question, so conversations do not share a prefix
beyond the system prompt). `prefix_cache_speedup` = without / with.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.server_process import ServerProcess  # noqa: E402
from omni.tools.make_checkpoint import cached_checkpoint  # noqa: E402

PROMPTS = ["Tell me about rivers.", "What is the weather like on Mars?", "Describe a busy market.",
           "How do birds fly?", "Say something kind.", "Explain rainbows.", "What is music?", "Describe the sea."]


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))], 4)


def start_server(checkpoint: Path, args, *extra: str) -> ServerProcess:
    options = ["--dtype", args.dtype, "--device", args.device, *extra]
    if args.threads is not None:
        options += ["--threads", str(args.threads)]
    return ServerProcess(checkpoint, options, ready_timeout_s=300)


async def _one_request(client: httpx.AsyncClient, url: str, messages: list, args, spoken: bool = True) -> dict:
    body = {"messages": messages, "max_tokens": args.max_tokens, "stream": True, "temperature": 0,
            "stream_options": {"include_usage": True}}
    if spoken:
        body.update(modalities=["text", "audio"], audio={"voice": args.voice, "format": "pcm16"})
    started = time.perf_counter()
    first_text = first_audio = None
    audio_bytes = 0
    tokens = 0
    text = ""
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return {"error": f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"}
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"error": chunk["error"]["message"]}
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens_details"]["text_tokens"]
            for choice in chunk.get("choices", []):
                delta = choice["delta"]
                audio = delta.get("audio") or {}
                now = time.perf_counter() - started
                piece = delta.get("content") or audio.get("transcript")
                if piece:
                    text += piece
                    if first_text is None:
                        first_text = now
                if audio.get("data"):
                    audio_bytes += len(base64.b64decode(audio["data"]))
                    if first_audio is None:
                        first_audio = now
    return {"first_text_s": first_text, "first_audio_s": first_audio, "total_s": time.perf_counter() - started,
            "audio_s": audio_bytes / 2 / 24000, "text": text, "text_tokens": tokens}


async def _load(url: str, requests: int, args, spoken: bool | None = None) -> dict:
    spoken = not args.text_only if spoken is None else spoken
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0)) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(
            _one_request(client, url, [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], args,
                         spoken=spoken) for i in range(requests)))
        wall_s = time.perf_counter() - started
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    for message in sorted(set(errors)):
        print(f"error: {message}", file=sys.stderr)
    audio_total = sum(r["audio_s"] for r in ok)
    return {"wall_s": wall_s, "audio_s": audio_total, "audio_s_per_s": audio_total / wall_s,
            "text_tokens_per_s": sum(r["text_tokens"] for r in ok) / wall_s,
            "first_audio": [r["first_audio_s"] for r in ok if r["first_audio_s"] is not None],
            "first_text": [r["first_text_s"] for r in ok if r["first_text_s"] is not None],
            "errors": len(errors), "texts": [r["text"] for r in ok]}


def _warm(url: str, args) -> None:
    async def go():
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
            result = await _one_request(client, url, [{"role": "user", "content": "Hello."}], args,
                                        spoken=not args.text_only)
        if "error" in result:
            raise SystemExit(f"warm-up request failed: {result['error']}")
    asyncio.run(go())


def load_mode(checkpoint: Path, args) -> dict:
    levels = sorted({int(n) for n in args.levels.split(",")} | {1, args.requests})
    engine = start_server(checkpoint, args, "--scheduler", "engine", "--max-batch", str(max(levels)),
                    "--max-queue", str(max(levels)))
    threads = start_server(checkpoint, args, "--scheduler", "threads", "--max-concurrent", str(max(levels)),
                     "--max-queue", str(max(levels)))
    servers = {"engine": engine, "threads": threads}
    runs: dict[tuple[str, int], list[dict]] = {}
    try:
        for server in servers.values():
            server.wait_ready()
            _warm(server.url, args)
        plan = [(level, 1) for level in levels]
        plan += [(args.requests, 1)] * (args.repeats - 1)
        plan += [(1, 1)] * (args.repeats - 1)
        for turn, (level, _) in enumerate(plan):
            order = ["engine", "threads"] if turn % 2 == 0 else ["threads", "engine"]
            for name in order:
                result = asyncio.run(_load(servers[name].url, level, args))
                runs.setdefault((name, level), []).append(result)
                print(f"{name} x{level}: {result['audio_s_per_s']:.3f} audio s/s, first audio p50 "
                      f"{_percentile(result['first_audio'], 0.5)} s, errors {result['errors']}", file=sys.stderr)
        text_runs: dict[str, list[float]] = {"engine": [], "threads": []}
        if args.text_tokens:
            # the same load asking for text only (longer replies): what batching the Thinker alone gives
            text_args = argparse.Namespace(**{**vars(args), "max_tokens": args.text_tokens})
            for repeat in range(args.repeats):
                for name in (["engine", "threads"] if repeat % 2 == 0 else ["threads", "engine"]):
                    result = asyncio.run(_load(servers[name].url, args.requests, text_args, spoken=False))
                    text_runs[name].append(result["text_tokens_per_s"])
                    print(f"{name} x{args.requests} text only: {result['text_tokens_per_s']:.1f} tokens/s",
                          file=sys.stderr)
        engine_stats = engine.stats().get("engine", {})
    finally:
        for server in servers.values():
            server.stop()
    figures: dict = {}
    for (name, level), results in sorted(runs.items()):
        first_audio = [v for r in results for v in r["first_audio"]]
        figures[f"{name}_x{level}"] = {
            "audio_s_per_s": round(statistics.median(r["audio_s_per_s"] for r in results), 4),
            "first_audio_p50_s": _percentile(first_audio, 0.5), "first_audio_p95_s": _percentile(first_audio, 0.95),
            "first_text_p50_s": _percentile([v for r in results for v in r["first_text"]], 0.5),
            "errors": sum(r["errors"] for r in results), "runs": len(results),
        }
    same_text = all(sorted(a["texts"]) == sorted(b["texts"]) for a, b in zip(runs[("engine", args.requests)],
                                                                              runs[("threads", args.requests)]))
    headline_engine = figures[f"engine_x{args.requests}"]
    headline_threads = figures[f"threads_x{args.requests}"]
    single_engine = statistics.median(v for r in runs[("engine", 1)] for v in r["first_audio"] or [float("nan")])
    single_threads = statistics.median(v for r in runs[("threads", 1)] for v in r["first_audio"] or [float("nan")])
    return {
        "requests": args.requests,
        "throughput_ratio": round(headline_engine["audio_s_per_s"] / headline_threads["audio_s_per_s"], 3),
        "single_user_ttfa_ratio": round(single_engine / single_threads, 3),
        "errors": sum(f["errors"] for f in figures.values()),
        "same_texts_engine_and_threads": same_text,
        "peak_batch_size": engine_stats.get("peak_batch_size"),
        "engine_busy_s": engine_stats.get("busy_s"),
        **({"text_tokens_per_s_engine": round(statistics.median(text_runs["engine"]), 2),
            "text_tokens_per_s_threads": round(statistics.median(text_runs["threads"]), 2),
            "text_throughput_ratio": round(statistics.median(text_runs["engine"])
                                           / statistics.median(text_runs["threads"]), 3)}
           if text_runs["engine"] else {}),
        "levels": figures,
    }


def _media_urls() -> tuple[str, str]:
    from omni.audio_io import wav_bytes
    from omni.tools.media_factory import drawing, tone

    image = io.BytesIO()
    drawing(1280, 960, seed=1).save(image, format="JPEG", quality=90)  # a phone photo's size, as bench/preprocess.py
    waveform = tone(8.0, 440.0, rate=16000).astype(np.float32).reshape(-1)  # an 8 s question
    return ("data:image/jpeg;base64," + base64.b64encode(image.getvalue()).decode(),
            base64.b64encode(wav_bytes(waveform, 16000)).decode())


def turns_mode(checkpoint: Path, args) -> dict:
    cached = start_server(checkpoint, args, "--cache-gb", "1")
    uncached = start_server(checkpoint, args, "--cache-gb", "0")
    servers = {"cache": cached, "no_cache": uncached}
    image_url, audio_b64 = _media_urls()
    last_turn: dict[str, list[float]] = {"cache": [], "no_cache": []}
    texts: dict[str, list[str]] = {"cache": [], "no_cache": []}

    async def conversation(url: str, opening: str) -> tuple[float, str]:
        messages = [{"role": "user", "content": [
            {"type": "text", "text": opening},
            {"type": "image_url", "image_url": {"url": image_url}},
            {"type": "input_audio", "input_audio": {"data": audio_b64, "format": "wav"}},
            {"type": "text", "text": "What do you see and hear?"}]}]
        async with httpx.AsyncClient(timeout=httpx.Timeout(900.0)) as client:
            for turn in range(args.turns):
                result = await _one_request(client, url, messages, args)
                if "error" in result:
                    raise SystemExit(f"turn {turn + 1} failed: {result['error']}")
                if turn + 1 == args.turns:
                    return result["first_audio_s"], result["text"]
                messages = messages + [{"role": "assistant", "content": result["text"]},
                                       {"role": "user", "content": f"Tell me more about point {turn + 1}."}]

    try:
        for server in servers.values():
            server.wait_ready()
            _warm(server.url, args)
        for repeat in range(args.repeats):
            order = ["cache", "no_cache"] if repeat % 2 == 0 else ["no_cache", "cache"]
            for name in order:
                first_audio, text = asyncio.run(conversation(servers[name].url, f"Conversation {repeat}."))
                last_turn[name].append(first_audio)
                texts[name].append(text)
                print(f"{name} conversation {repeat}: turn {args.turns} first audio {first_audio:.3f} s",
                      file=sys.stderr)
        cache_stats = cached.stats().get("engine", {}).get("prefix_cache", {})
    finally:
        for server in servers.values():
            server.stop()
    with_cache, without = statistics.median(last_turn["cache"]), statistics.median(last_turn["no_cache"])
    return {
        "turns": args.turns, "repeats": args.repeats,
        "last_turn_first_audio_s_cache": round(with_cache, 4), "last_turn_first_audio_s_no_cache": round(without, 4),
        "prefix_cache_speedup": round(without / with_cache, 3),
        "same_texts": texts["cache"] == texts["no_cache"],
        "prefix_cache": cache_stats,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small", choices=["tiny", "small"])
    parser.add_argument("--requests", type=int, default=8, help="the concurrency of the headline ratio")
    parser.add_argument("--levels", default="1,4,8,16", help="concurrency levels to report first audio at")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--turns", type=int, default=None, help="multi-turn mode: the turn whose first audio counts")
    parser.add_argument("--max-tokens", type=int, default=16,
                        help="text tokens per reply (a random-weight Talker speaks up to ~50 codec tokens per text token)")
    parser.add_argument("--voice", default="Chelsie")
    parser.add_argument("--text-only", action="store_true", help="ask for text only")
    parser.add_argument("--text-tokens", type=int, default=128,
                        help="load mode: also run the headline load text-only with this many tokens per reply (0: skip)")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="--threads for both servers")
    args = parser.parse_args()

    checkpoint = cached_checkpoint(args.preset, os.environ.get("OMNI_TEST_CACHE", REPO / ".omni-cache"))
    figures = turns_mode(checkpoint, args) if args.turns else load_mode(checkpoint, args)
    print(json.dumps({"bench": "serve", "preset": args.preset, "device": args.device, "max_tokens": args.max_tokens,
                      "audio": not args.text_only, "cpu": _cpu_name(), **figures}))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"unknown x{os.cpu_count()}"


if __name__ == "__main__":
    main()
