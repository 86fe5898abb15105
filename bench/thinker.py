"""Thinker decode speed: omni vs the transformers reference `generate`, same checkpoint, prompt and
token count, in one process.

    python bench/thinker.py --preset small [--tokens 128] [--repeats 3]

Decode rate is (N - 1) / (time(N tokens) - time(1 token)) for both, so prefill is excluded the same
way. Neither side may stop early (no stop tokens). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from omni.chat import render_chat
from omni.loading import load_model
from omni.tools.make_checkpoint import cached_checkpoint
from omni.sampling import SamplingParams
from omni.thinker.generate import stream_thinker, text_prompt

PROMPT = [{"role": "user", "content": "Describe, in detail, how a river shapes the valley it flows through."}]


def _omni_seconds(loaded, prompt, tokens: int) -> float:
    start = time.perf_counter()
    for _ in stream_thinker(loaded.model.thinker, prompt, SamplingParams(), tokens, stop_token_ids=[], pad_token_id=0):
        pass
    return time.perf_counter() - start


def _reference_seconds(reference, input_ids, tokens: int) -> float:
    start = time.perf_counter()
    out = reference.generate(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=tokens,
        min_new_tokens=None, do_sample=False, eos_token_id=None, pad_token_id=0,
    )
    elapsed = time.perf_counter() - start
    assert out.shape[1] == input_ids.shape[1] + tokens
    return elapsed


def _decode_rate(measure, tokens: int, repeats: int) -> tuple[float, float]:
    measure(4)  # warm-up
    one = statistics.median(measure(1) for _ in range(repeats))
    full = statistics.median(measure(tokens) for _ in range(repeats))
    return (tokens - 1) / (full - one), one


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small", choices=["tiny", "small"])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    checkpoint = cached_checkpoint(args.preset)
    loaded = load_model(checkpoint, dtype="fp32", audio_output=False)
    reference = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    ids = loaded.tokenizer.encode(render_chat(PROMPT))
    prompt = text_prompt([ids], pad_id=0)

    with torch.inference_mode():
        omni_rate, omni_prefill = _decode_rate(lambda n: _omni_seconds(loaded, prompt, n), args.tokens, args.repeats)
        ref_rate, ref_prefill = _decode_rate(
            lambda n: _reference_seconds(reference, prompt.input_ids, n), args.tokens, args.repeats
        )
    result = {
        "bench": "thinker_decode",
        "preset": args.preset,
        "threads": torch.get_num_threads(),
        "prompt_tokens": len(ids),
        "new_tokens": args.tokens,
        "omni_decode_tokens_per_s": round(omni_rate, 2),
        "reference_decode_tokens_per_s": round(ref_rate, 2),
        "omni_first_token_ms": round(omni_prefill * 1000, 2),
        "reference_first_token_ms": round(ref_prefill * 1000, 2),
        "decode_speed_ratio": round(omni_rate / ref_rate, 3),
    }
    print(f"omni      : {omni_rate:8.1f} tokens/s decode, first token {omni_prefill * 1000:.1f} ms")
    print(f"reference : {ref_rate:8.1f} tokens/s decode, first token {ref_prefill * 1000:.1f} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
