"""`omni serve` under concurrent streaming load, over loopback.

    python bench/serve.py [--preset small|tiny] [--requests 8] [--max-tokens 16] [--text-only]

Starts the server in a subprocess on a random-weight checkpoint, sends one warm-up request, then N
concurrent streaming requests asking for text and audio, and measures requests/s, the time to the
first audio byte and to the first text piece (p50/p95, from sending the request), and errors. The
last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from omni.tools.make_checkpoint import cached_checkpoint

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["Tell me about rivers.", "What is the weather like on Mars?", "Describe a busy market.",
           "How do birds fly?", "Say something kind.", "Explain rainbows.", "What is music?", "Describe the sea."]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))], 4)


async def _one_request(client: httpx.AsyncClient, url: str, prompt: str, args) -> dict:
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": args.max_tokens, "stream": True,
            "temperature": 0, "stream_options": {"include_usage": True}}
    if not args.text_only:
        body.update(modalities=["text", "audio"], audio={"voice": args.voice, "format": "pcm16"})
    started = time.perf_counter()
    first_text = first_audio = None
    audio_bytes = 0
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            return {"error": f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"}
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"error": chunk["error"]["message"]}
            for choice in chunk.get("choices", []):
                delta = choice["delta"]
                audio = delta.get("audio") or {}
                now = time.perf_counter() - started
                if (delta.get("content") or audio.get("transcript")) and first_text is None:
                    first_text = now
                if audio.get("data"):
                    audio_bytes += len(base64.b64decode(audio["data"]))
                    if first_audio is None:
                        first_audio = now
    return {"first_text_s": first_text, "first_audio_s": first_audio, "total_s": time.perf_counter() - started,
            "audio_s": audio_bytes / 2 / 24000}


async def _load(base_url: str, args) -> dict:
    url = f"{base_url}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
        warm = await _one_request(client, url, "Hello.", args)
        if "error" in warm:
            raise SystemExit(f"warm-up request failed: {warm['error']}")
        started = time.perf_counter()
        results = await asyncio.gather(*(_one_request(client, url, PROMPTS[i % len(PROMPTS)], args)
                                         for i in range(args.requests)))
        wall_s = time.perf_counter() - started
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    text_s = [r["first_text_s"] for r in ok if r["first_text_s"] is not None]
    audio_s = [r["first_audio_s"] for r in ok if r["first_audio_s"] is not None]
    for message in sorted(set(errors)):
        print(f"error: {message}", file=sys.stderr)
    return {
        "requests": args.requests, "wall_s": round(wall_s, 3), "requests_per_s": round(len(ok) / wall_s, 3),
        "first_audio_p50_s": _percentile(audio_s, 0.5), "first_audio_p95_s": _percentile(audio_s, 0.95),
        "first_text_p50_s": _percentile(text_s, 0.5), "first_text_p95_s": _percentile(text_s, 0.95),
        "replies_with_audio": len(audio_s), "audio_s_total": round(sum(r["audio_s"] for r in ok), 3),
        "errors": len(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small", choices=["tiny", "small"])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16,
                        help="text tokens per reply (a random-weight Talker speaks up to ~50 codec tokens per text token)")
    parser.add_argument("--max-concurrent", type=int, default=None, help="server slots (default: --requests)")
    parser.add_argument("--voice", default="Chelsie")
    parser.add_argument("--text-only", action="store_true", help="ask for text only")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    checkpoint = cached_checkpoint(args.preset, os.environ.get("OMNI_TEST_CACHE", REPO / ".omni-cache"))
    port = _free_port()
    command = [sys.executable, "-m", "omni.cli", "serve", str(checkpoint), "--port", str(port), "--dtype", args.dtype,
               "--device", args.device, "--max-concurrent", str(args.max_concurrent or args.requests),
               "--max-queue", str(args.requests), "--log-level", "warning"]
    server = subprocess.Popen(command, cwd=REPO)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with {server.returncode}")
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start within 300 s")
            time.sleep(0.2)
        figures = asyncio.run(_load(base_url, args))
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(json.dumps({"bench": "serve", "preset": args.preset, "device": args.device, "max_tokens": args.max_tokens,
                      "audio": not args.text_only, **figures}))


if __name__ == "__main__":
    main()
