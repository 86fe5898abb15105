"""The Realtime API under load: N concurrent voice conversations of spoken turns over loopback.

    python bench/realtime.py [--preset tiny|small | --model DIR] [--connections 1,4] [--turns 3]
    python bench/realtime.py --measure-ratio --model DIR [--replies 16]

Conversation mode (default): starts `omni serve` on the checkpoint, measures the HTTP path's time to
first audio for the same spoken question (a streamed chat completion with the question's audio, the
median of 3), then for every level in `--connections` opens that many realtime sessions at once. Each
streams its microphone in real time (20 ms pieces of espeak-ng questions, then silence, as a client
that never stops sending), lets server VAD end each of `--turns` turns, and waits for the spoken
answer's response.done before its next question. Per turn: from the end of the user's speech (when
its last voiced piece was sent) to the first audio delta (`speech_end_to_audio`), and from the VAD's
decision (speech_stopped) to it (`decision_to_audio`), p50/p95; errors (error events, failed
responses, broken connections). Goal: errors 0, and at 1 connection `speech_end_to_audio` p50 <=
the HTTP time to first audio + the VAD's silence window + 0.1 s (`goal_s`, `goal_met`).

Ratio mode (`--measure-ratio`): the codec tokens the model speaks per text token, over spoken replies
that ended by themselves (finish_reason stop), which is what omni.pipeline.CODEC_TOKENS_PER_TEXT_TOKEN
should hold (the barge-in / truncation rule). Only meaningful on a real checkpoint.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import sys
import tempfile
import time
import wave
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.server_process import ServerProcess  # noqa: E402
RATE = 24000
PIECE_MS = 20
QUESTIONS = ["Hello there. What is the weather like in Paris today?", "Can you tell me a short story about a cat?",
             "Thank you. What should I cook for dinner tonight?", "How far away is the moon?"]
PROMPTS = ["Tell me about rivers.", "What is the weather like on Mars?", "Describe a busy market.", "How do birds fly?",
           "Say something kind.", "Explain rainbows.", "What is music?", "Describe the sea."]


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))], 4)


def _checkpoint(args) -> Path:
    if args.model:
        return Path(args.model)
    from omni.tools.make_checkpoint import cached_checkpoint

    return cached_checkpoint(args.preset, REPO / ".omni-cache")


def spoken_questions() -> list[np.ndarray]:
    """espeak-ng questions as int16 PCM at 24 kHz, their leading and trailing silence trimmed."""
    from omni.tools.media_factory import speech, trimmed_pcm16

    out = []
    folder = Path(tempfile.mkdtemp(prefix="omni-bench-realtime-"))
    for index, text in enumerate(QUESTIONS):
        out.append(trimmed_pcm16(speech(folder / f"q{index}.wav", text), RATE))
    return out


def _wav(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(samples.tobytes())
    return buffer.getvalue()


def start_server(checkpoint: Path, args) -> ServerProcess:
    return ServerProcess(checkpoint, ["--dtype", args.dtype, "--device", args.device,
                                      "--default-max-tokens", str(args.max_tokens),
                                      "--realtime-max-sessions", str(max(args.connections) + 1)])


async def http_first_audio(url: str, question: np.ndarray, args) -> float:
    """Seconds from sending a streamed chat completion with the spoken question to its first audio."""
    body = {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {
                "data": base64.b64encode(_wav(question)).decode(), "format": "wav"}}]}],
            "max_tokens": args.max_tokens, "stream": True, "modalities": ["text", "audio"],
            "audio": {"voice": "Chelsie", "format": "pcm16"}}
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0)) as client:
        started = time.perf_counter()
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("data: {") and '"data"' in line:
                    chunk = json.loads(line[6:])
                    if any((c["delta"].get("audio") or {}).get("data") for c in chunk.get("choices", [])):
                        return time.perf_counter() - started
    raise RuntimeError("the HTTP reply had no audio")


async def conversation(url: str, questions: list[np.ndarray], turns: int, args, offset: int) -> dict:
    """One realtime session: `turns` spoken questions streamed in real time; per-turn latencies."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", websocket_base_url=f"{url.replace('http', 'ws')}/v1",
                         api_key="unused", max_retries=0)
    result = {"speech_end_to_audio": [], "decision_to_audio": [], "errors": []}
    piece = int(RATE * PIECE_MS / 1000)
    silence = np.zeros(piece, np.int16)
    try:
        async with client.realtime.connect(model=args.served_name) as connection:
            await connection.recv()
            await connection.session.update(session={"type": "realtime", "max_output_tokens": args.max_tokens,
                                                     "audio": {"input": {"turn_detection": {
                                                         "type": "server_vad", "silence_duration_ms": args.silence_ms}}}})
            for turn in range(turns):
                question = questions[(offset + turn) % len(questions)]
                turn_state = {"speech_end": None, "decision": None, "first_audio": None, "done": asyncio.Event()}

                async def microphone(question, turn_state):
                    started = time.perf_counter()
                    sent = 0
                    for start in range(0, question.size, piece):
                        await connection.input_audio_buffer.append(
                            audio=base64.b64encode(question[start:start + piece].tobytes()).decode())
                        sent += 1
                        await asyncio.sleep(max(0.0, started + sent * PIECE_MS / 1000 - time.perf_counter()))
                    turn_state["speech_end"] = time.perf_counter()
                    while not turn_state["done"].is_set():  # a microphone keeps sending silence
                        await connection.input_audio_buffer.append(audio=base64.b64encode(silence.tobytes()).decode())
                        sent += 1
                        await asyncio.sleep(max(0.0, started + sent * PIECE_MS / 1000 - time.perf_counter()))

                sender = asyncio.create_task(microphone(question, turn_state))
                try:
                    while True:
                        event = await asyncio.wait_for(connection.recv(), args.turn_timeout_s)
                        now = time.perf_counter()
                        if event.type == "error":
                            result["errors"].append(event.error.message)
                        elif event.type == "input_audio_buffer.speech_stopped":
                            turn_state["decision"] = now
                        elif event.type == "response.output_audio.delta" and turn_state["first_audio"] is None:
                            turn_state["first_audio"] = now
                        elif event.type == "response.done":
                            if event.response.status not in ("completed", "incomplete"):
                                result["errors"].append(f"response {event.response.status}: "
                                                        f"{event.response.status_details}")
                            break
                finally:
                    turn_state["done"].set()
                    await sender
                if turn_state["first_audio"] is not None and turn_state["speech_end"] is not None:
                    result["speech_end_to_audio"].append(turn_state["first_audio"] - turn_state["speech_end"])
                if turn_state["first_audio"] is not None and turn_state["decision"] is not None:
                    result["decision_to_audio"].append(turn_state["first_audio"] - turn_state["decision"])
    except Exception as exc:  # noqa: BLE001 - counted as an error of the bench
        result["errors"].append(f"{type(exc).__name__}: {exc}")
    return result


def run_conversations(args) -> dict:
    checkpoint = _checkpoint(args)
    args.served_name = checkpoint.name
    questions = spoken_questions()
    server = start_server(checkpoint, args)
    try:
        server.wait_ready()
        asyncio.run(http_first_audio(server.url, questions[0], args))  # warm-up
        http = sorted(asyncio.run(http_first_audio(server.url, questions[0], args)) for _ in range(3))[1]
        print(f"HTTP time to first audio: {http:.3f} s", file=sys.stderr)
        levels = []
        for connections in args.connections:
            async def everyone(connections):
                return await asyncio.gather(*(conversation(server.url, questions, args.turns, args, offset)
                                              for offset in range(connections)))

            results = asyncio.run(everyone(connections))
            end = [v for r in results for v in r["speech_end_to_audio"]]
            decision = [v for r in results for v in r["decision_to_audio"]]
            errors = [e for r in results for e in r["errors"]]
            missing = connections * args.turns - len(end)
            level = {"connections": connections, "turns": len(end),
                     "speech_end_to_audio_p50_s": _percentile(end, 0.5),
                     "speech_end_to_audio_p95_s": _percentile(end, 0.95),
                     "decision_to_audio_p50_s": _percentile(decision, 0.5),
                     "decision_to_audio_p95_s": _percentile(decision, 0.95),
                     "errors": len(errors) + max(0, missing), "error_samples": errors[:3]}
            print(f"{connections} connection(s): {level}", file=sys.stderr)
            levels.append(level)
    finally:
        server.stop()
    goal = http + args.silence_ms / 1000 + 0.1
    single = next((lvl for lvl in levels if lvl["connections"] == 1), None)
    return {"bench": "realtime", "checkpoint": args.model or args.preset, "device": args.device,
            "turns_per_connection": args.turns, "silence_ms": args.silence_ms, "max_tokens": args.max_tokens,
            "http_first_audio_s": round(http, 4), "goal_s": round(goal, 4),
            "goal_met": bool(single and single["errors"] == 0 and single["speech_end_to_audio_p50_s"] is not None
                             and single["speech_end_to_audio_p50_s"] <= goal) if single else None,
            "levels": levels}


def measure_ratio(args) -> dict:
    """Codec tokens per text token over spoken replies that ended by themselves."""
    from omni.loading import load_model
    from omni.session import OmniSession

    loaded = load_model(_checkpoint(args), dtype=args.dtype, device=args.device)
    ratios, text_tokens, codec_tokens, skipped = [], 0, 0, 0
    for index in range(args.replies):
        session = OmniSession(loaded, engine=False)
        reply = session.reply(PROMPTS[index % len(PROMPTS)], return_audio=True, max_new_tokens=args.ratio_tokens)
        usage = reply.done.usage
        if reply.done.finish_reason != "stop" or not usage.text_tokens or not usage.codec_tokens:
            skipped += 1
            continue
        ratios.append(usage.codec_tokens / usage.text_tokens)
        text_tokens += usage.text_tokens
        codec_tokens += usage.codec_tokens
        print(f"reply {index}: {usage.text_tokens} text, {usage.codec_tokens} codec tokens "
              f"({ratios[-1]:.1f} per text token)", file=sys.stderr)
    return {"bench": "realtime_ratio", "checkpoint": args.model or args.preset, "replies": len(ratios),
            "skipped": skipped, "codec_tokens_per_text_token": round(codec_tokens / text_tokens, 3) if text_tokens else None,
            "per_reply_p10": _percentile(ratios, 0.1), "per_reply_p50": _percentile(ratios, 0.5),
            "per_reply_p90": _percentile(ratios, 0.9)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="random-weight checkpoint preset (without --model)")
    parser.add_argument("--model", default=None, help="a checkpoint directory")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--connections", default="1", help="comma-separated concurrency levels")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=8, help="text tokens per answer")
    parser.add_argument("--silence-ms", type=int, default=500, help="the VAD's silence window")
    parser.add_argument("--turn-timeout-s", type=float, default=300.0)
    parser.add_argument("--measure-ratio", action="store_true")
    parser.add_argument("--replies", type=int, default=16)
    parser.add_argument("--ratio-tokens", type=int, default=256, help="max text tokens per reply in ratio mode")
    args = parser.parse_args()
    if args.measure_ratio:
        print(json.dumps(measure_ratio(args)))
        return
    args.connections = [int(n) for n in args.connections.split(",")]
    print(json.dumps(run_conversations(args)))


if __name__ == "__main__":
    main()
