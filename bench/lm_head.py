"""The Thinker's vocabulary projection on the CPU in fp32: PyTorch's plain product over the
column-major weight (how `Thinker.lm_head` stores it) vs oneDNN's prepacked inner product (the copy
`Thinker.logits` makes for batched calls), at the real widths.

    python bench/lm_head.py [--widths 256 2048 3584] [--batches 1 2 4 8] [--repeats 9] [--threads N]

Widths: 256 is the `small` preset; 2048 is Qwen2.5-Omni-3B's thinker hidden_size, 3584 is 7B's
(Qwen/Qwen2.5-Omni-{3B,7B} config.json, thinker_config.text_config; 3584 and vocab 152064 are also
transformers' Qwen2_5OmniTextConfig defaults, which omni/config.py copies). Vocab 152064 for every
width (the 3B checkpoint's 151936, if that is its value, is 0.08% fewer rows: the same figures).

What the packed copy buys depends on how much of a batched decoding step the projection is, so
the same rows also go through one decoder layer's seven projections (q, k, v, o, gate, up, down, as
nn.Linear runs them in omni/decoder.py) at that model's sizes; a step is about `layers` of those plus
the vocabulary projection (attention over the cache, norms and sampling are left out: small at
short contexts). `step_saving` is the packed copy's share of that step.

Random weights: the product's speed does not depend on the values. The three runs take turns
(bench/turns.py) after one untimed run each; min and median of `repeats` runs per path. Both
projections are checked against a float64 product on a slice of the vocabulary. Needs
2 x 4 x vocab x width bytes plus one layer (5.3 GB at 3584). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.turns import take_turns  # noqa: E402

VOCAB = 152064
CHECKED_ROWS = 8192  # vocabulary rows compared against float64 (all of them would need 8.7 GB at 3584)
PACK_BATCH_HINT = 8  # what Thinker.logits packs for
# width -> (decoder layers, intermediate size, key/value width): the small preset, Qwen2.5-Omni-3B, -7B
DECODERS = {256: (4, 1024, 128), 2048: (36, 11008, 256), 3584: (28, 18944, 512)}


def cpu_description() -> dict[str, object]:
    model_name = platform.processor() or "unknown"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model_name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {
        "cpu": model_name,
        "avx512": "avx512f" in flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


def _timed(product, hidden):
    def run() -> float:
        start = time.perf_counter()
        product(hidden)
        return time.perf_counter() - start
    return run


def _max_relative_error(logits: torch.Tensor, exact: torch.Tensor) -> float:
    return ((logits[:, :CHECKED_ROWS].double() - exact).abs().max() / exact.abs().max()).item()


def _layer_projections(width: int, generator: torch.Generator):
    _, intermediate, kv_width = DECODERS[width]
    shapes = [(width, width), (kv_width, width), (kv_width, width), (width, width),
              (intermediate, width), (intermediate, width), (width, intermediate)]
    weights = [torch.randn(shape, generator=generator) * 0.02 for shape in shapes]

    def layer(hidden, wide):
        for weight in weights:
            F.linear(wide if weight.shape[1] != width else hidden, weight)
    return layer


def measure_width(width: int, batches: list[int], repeats: int) -> dict[str, dict[str, float]]:
    generator = torch.Generator().manual_seed(width)
    layers = DECODERS[width][0]
    layer = _layer_projections(width, generator)
    # column-major like Thinker.lm_head.weight: the same (vocab, width) tensor, transposed storage
    weight = (torch.randn(width, VOCAB, generator=generator) * 0.02).t()
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_BATCH_HINT)
    exact_weight = weight[:CHECKED_ROWS].double()

    def plain(hidden):
        return F.linear(hidden, weight)

    def prepacked(hidden):
        return torch.ops.mkldnn._linear_pointwise(hidden, packed, None, "none", [], "")

    figures = {}
    for batch in batches:
        hidden = torch.randn(batch, width, generator=generator)
        exact = hidden.double() @ exact_weight.t()
        wide = torch.randn(batch, DECODERS[width][1], generator=generator)
        plain_s, packed_s, layer_s = take_turns(
            [_timed(plain, hidden), _timed(prepacked, hidden), _timed(lambda h: layer(h, wide), hidden)], repeats)
        row = {
            "plain_ms_min": min(plain_s) * 1e3, "plain_ms_median": statistics.median(plain_s) * 1e3,
            "packed_ms_min": min(packed_s) * 1e3, "packed_ms_median": statistics.median(packed_s) * 1e3,
            "plain_rel_error": _max_relative_error(plain(hidden), exact),
            "packed_rel_error": _max_relative_error(prepacked(hidden), exact),
        }
        row["layer_ms_median"] = statistics.median(layer_s) * 1e3
        row["step_ms_estimate"] = layers * row["layer_ms_median"] + row["plain_ms_median"]
        row["step_saving"] = (row["plain_ms_median"] - row["packed_ms_median"]) / row["step_ms_estimate"]
        row["speedup_median"] = row["plain_ms_median"] / row["packed_ms_median"]
        row["speedup_min"] = row["plain_ms_min"] / row["packed_ms_min"]
        figures[str(batch)] = {k: float(f"{v:.4g}") for k, v in row.items()}
        print(f"width {width:5d} batch {batch}: plain {row['plain_ms_min']:7.1f} / {row['plain_ms_median']:7.1f} ms, "
              f"packed {row['packed_ms_min']:7.1f} / {row['packed_ms_median']:7.1f} ms (min / median), "
              f"packed is {row['speedup_median']:.2f}x; step ~{row['step_ms_estimate']:.0f} ms "
              f"({layers} x {row['layer_ms_median']:.1f} ms layers), packed saves {100 * row['step_saving']:.1f}% of it; "
              f"max rel. error vs fp64: plain {row['plain_rel_error']:.1e}, packed {row['packed_rel_error']:.1e}",
              flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--widths", type=int, nargs="+", default=sorted(DECODERS), choices=sorted(DECODERS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        raise SystemExit("this PyTorch has no oneDNN prepacked linear: nothing to compare")

    machine = cpu_description()
    print(f"{machine['cpu']}, AVX-512: {'yes' if machine['avx512'] else 'no'} (PyTorch uses "
          f"{machine['torch_cpu_capability']}), {machine['threads']} threads, torch {torch.__version__}")
    with torch.inference_mode():
        widths = {str(width): measure_width(width, args.batches, args.repeats) for width in args.widths}
    print(json.dumps({**machine, "torch": torch.__version__, "vocab": VOCAB, "repeats": args.repeats,
                      "packed_mb": {w: round(VOCAB * int(w) * 4 / 2**20) for w in widths}, "widths": widths}))


if __name__ == "__main__":
    main()
