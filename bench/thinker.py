"""Thinker decode speed: omni vs the transformers reference `generate`, same checkpoint, prompt and
token count, in one process.

    python bench/thinker.py --preset small|3b-wide|3b|7b [--device cpu|cuda] [--tokens 128] [--repeats 3]

Decode rate is (N - 1) / (time(N tokens) - time(1 token)) for both, so prefill is excluded the same
way. Neither side may stop early (no stop tokens). The four timed paths (omni 1 token, omni N, reference
1, reference N) run once untimed, then take turns `--repeats` times (bench/turns.py), so a slow spell
on a shared machine hits both sides; medians count. On CUDA both run in bf16 and the clock stops
after a device synchronisation. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sizes import (  # noqa: E402
    PRESET_CHOICES, llm_dtype, load_reference, peak_memory_gib, reset_peak_memory, size_fields, synchronize,
)
from bench.token2wav import cpu_name  # noqa: E402
from bench.turns import take_turns  # noqa: E402
from omni.chat import render_chat  # noqa: E402
from omni.loading import load_model  # noqa: E402
from omni.sampling import SamplingParams  # noqa: E402
from omni.thinker.generate import stream_thinker, text_prompt  # noqa: E402
from omni.tools.make_checkpoint import cached_checkpoint  # noqa: E402

PROMPT = [{"role": "user", "content": "Describe, in detail, how a river shapes the valley it flows through."}]


def _omni_seconds(loaded, prompt, tokens: int, device: str) -> float:
    start = time.perf_counter()
    produced = sum(1 for _ in stream_thinker(loaded.model.thinker, prompt, SamplingParams(), tokens,
                                             stop_token_ids=[], pad_token_id=0))
    synchronize(device)
    elapsed = time.perf_counter() - start
    assert produced == tokens, f"omni produced {produced} tokens, not {tokens}"
    return elapsed


def _reference_seconds(reference, input_ids, tokens: int, device: str) -> float:
    start = time.perf_counter()
    out = reference.generate(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=tokens,
        min_new_tokens=None, do_sample=False, eos_token_id=None, pad_token_id=0,
    )
    synchronize(device)
    elapsed = time.perf_counter() - start
    assert out.shape[1] == input_ids.shape[1] + tokens
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small", choices=PRESET_CHOICES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    checkpoint = cached_checkpoint(args.preset)
    loaded = load_model(checkpoint, dtype=llm_dtype(args.device), device=args.device, audio_output=False)
    reference = load_reference(Qwen2_5OmniThinkerForConditionalGeneration, checkpoint, args.device)
    ids = loaded.tokenizer.encode(render_chat(PROMPT))
    prompt = text_prompt([ids], pad_id=0)
    prompt_ids = prompt.input_ids.to(args.device)  # stream_thinker moves omni's prompt itself

    reset_peak_memory(args.device)
    with torch.inference_mode():
        omni_one, omni_full, ref_one, ref_full = take_turns([
            lambda: _omni_seconds(loaded, prompt, 1, args.device),
            lambda: _omni_seconds(loaded, prompt, args.tokens, args.device),
            lambda: _reference_seconds(reference, prompt_ids, 1, args.device),
            lambda: _reference_seconds(reference, prompt_ids, args.tokens, args.device),
        ], args.repeats)
    omni_first, ref_first = statistics.median(omni_one), statistics.median(ref_one)
    omni_rate = (args.tokens - 1) / (statistics.median(omni_full) - omni_first)
    ref_rate = (args.tokens - 1) / (statistics.median(ref_full) - ref_first)
    result = {
        "bench": "thinker_decode",
        **size_fields(args.preset, args.device),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "prompt_tokens": len(ids),
        "new_tokens": args.tokens,
        "repeats": args.repeats,
        "omni_decode_tokens_per_s": round(omni_rate, 2),
        "reference_decode_tokens_per_s": round(ref_rate, 2),
        "omni_first_token_ms": round(omni_first * 1000, 2),
        "reference_first_token_ms": round(ref_first * 1000, 2),
        "decode_speed_ratio": round(omni_rate / ref_rate, 3),
        "peak_device_memory_gib": peak_memory_gib(args.device),
    }
    print(f"omni      : {omni_rate:8.1f} tokens/s decode, first token {omni_first * 1000:.1f} ms")
    print(f"reference : {ref_rate:8.1f} tokens/s decode, first token {ref_first * 1000:.1f} ms")
    if "note" in result:
        print(f"note: {result['note']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
