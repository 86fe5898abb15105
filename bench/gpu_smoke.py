"""Does every stage run on a GPU? A smoke check for a lent CUDA machine (bench/gpu.sh runs it there).

    python bench/gpu_smoke.py [--device cuda] [--preset tiny]

On one random-weight checkpoint it runs, on `--device`:
- greedy text in fp32 (TF32 off) against the same model on the CPU: are the first tokens equal?
- a text reply in bf16 and one in fp16 (tokens/s; the reply must be non-empty);
- a spoken reply in bf16 (the codec in fp32): time to first audio, audio seconds, every sample finite;
- the session's hardening paths on the device: a stop string, a cancelled long turn whose KV cache
  then shrinks, reset() from the iterating loop, and the next turn.
The last line is JSON. It proves the CUDA path runs, not its speed at real sizes (that is issue 12's
bench); a random tiny model's near-tied logits may legitimately differ between CPU and GPU sums, so
the fp32 comparison reports where the first difference is instead of asserting.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from omni.events import AudioChunk, ReplyDone, TextDelta
from omni.session import OmniSession
from omni.tools.make_checkpoint import cached_checkpoint

PROMPT = "Tell me a long story about rivers and mountains."


def _text(session: OmniSession, tokens: int) -> tuple[str, float]:
    started = time.perf_counter()
    reply = session.reply(PROMPT, max_new_tokens=tokens, return_audio=False)
    return reply.text, time.perf_counter() - started


def _first_difference(a, b) -> int | None:
    """The first index where two sequences (texts, token or code lists) differ; None if equal."""
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    path = cached_checkpoint(args.preset)
    figures: dict = {"device": args.device, "preset": args.preset, "torch": torch.__version__,
                     "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}

    cpu_text, _ = _text(OmniSession.from_pretrained(path, dtype="fp32", audio_output=False), args.tokens)
    device_text, _ = _text(OmniSession.from_pretrained(path, device=args.device, dtype="fp32", audio_output=False),
                           args.tokens)
    figures["fp32_text_equal_to_cpu"] = cpu_text == device_text
    figures["fp32_first_difference_char"] = _first_difference(cpu_text, device_text)

    for dtype in ("bf16", "fp16"):
        session = OmniSession.from_pretrained(path, device=args.device, dtype=dtype, audio_output=False)
        _text(session, 8)  # first-call costs
        session.reset()
        text, seconds = _text(session, args.tokens)
        assert text, f"empty {dtype} reply"
        figures[f"{dtype}_text_s"] = round(seconds, 3)

    spoken = OmniSession.from_pretrained(path, device=args.device, dtype="bf16")
    samples, done = [], None
    for event in spoken.stream("Hello!", max_new_tokens=16, seed=1):
        if isinstance(event, AudioChunk):
            samples.append(event.samples)
        elif isinstance(event, ReplyDone):
            done = event
    audio = np.concatenate(samples) if samples else np.zeros(0, np.float32)
    assert done is not None and audio.size and np.isfinite(audio).all(), "no finite audio from the spoken reply"
    figures.update(spoken_first_audio_s=round(done.timings.first_audio_s, 3),
                   spoken_audio_s=round(done.timings.audio_duration_s, 2),
                   spoken_rtf=round(done.timings.real_time_factor, 3))

    session = OmniSession.from_pretrained(path, device=args.device, dtype="bf16", audio_output=False)
    stopped = session.reply(PROMPT, max_new_tokens=32, stop=[" "])
    assert " " not in stopped.text and stopped.done.finish_reason == "stop", stopped.done.finish_reason
    with session.stream(PROMPT, max_new_tokens=4000) as events:  # a long turn, cut short
        for count, event in enumerate(events):
            if isinstance(event, TextDelta) and count >= 8:
                events.cancel()
    figures["kv_capacity_after_cut_turn"] = session.state.cache.capacity
    assert session.state.cache.capacity < 4000, "the KV cache kept the long turn's capacity"
    for event in session.stream(PROMPT, max_new_tokens=64):
        if isinstance(event, TextDelta):
            session.reset()  # from the loop that iterates the reply: must not deadlock
    assert session.state.cache is None and not session.messages
    figures["after_reset_reply_chars"] = len(session.reply("Again?", max_new_tokens=8).text)
    figures["ok"] = True
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
