"""The Thinker's vocabulary projection on the CPU in fp32, at the real widths: the reference's plain
product over the checkpoint's row-major weight (`row`, as transformers runs it), the plain product over
the column-major weight (`plain`, how `Thinker.lm_head` stores it), omni's split product over that
weight (`split`, omni.linear: one slice of the inputs per thread, what `Thinker.logits` runs for one
row and, past the small presets, for several) and oneDNN's prepacked inner product (`packed`, the copy
`Thinker.logits` makes for batched calls where it pays).

    python bench/lm_head.py [--widths 256 2048 3584] [--batches 1 2 4 8] [--repeats 9] [--threads N]

Widths: 256 is the `small` preset; 2048 is Qwen2.5-Omni-3B's thinker hidden_size, 3584 is 7B's
(Qwen/Qwen2.5-Omni-{3B,7B} config.json, thinker_config.text_config; 3584 and vocab 152064 are also
transformers' Qwen2_5OmniTextConfig defaults, which omni/config.py copies). Vocab 152064 for every
width (the 3B checkpoint's 151936, if that is its value, is 0.08% fewer rows: the same figures).

What the packed copy buys depends on how much of a batched decoding step the projection is, so
the same rows also go through one decoder layer's seven projections (q, k, v, o, gate, up, down, as
omni.linear runs them in omni/decoder.py) at that model's sizes; a step is about `layers` of those plus
the vocabulary projection (attention over the cache, norms and sampling are left out: small at
short contexts). `step_saving` is the packed copy's share of that step, against the split product.

Random weights: the product's speed does not depend on the values. The runs take turns
(bench/turns.py) after one untimed run each; min and median of `repeats` runs per path. Every
projection is checked against a float64 product on a slice of the vocabulary. Needs
3 x 4 x vocab x width bytes plus one layer (7.3 GB at 3584). The last line is JSON.
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
from omni.linear import linear  # noqa: E402

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
            linear(wide if weight.shape[1] != width else hidden, weight)
    return layer


def measure_width(width: int, batches: list[int], repeats: int) -> dict[str, dict[str, float]]:
    generator = torch.Generator().manual_seed(width)
    layers = DECODERS[width][0]
    layer = _layer_projections(width, generator)
    # column-major like Thinker.lm_head.weight: the same (vocab, width) tensor, transposed storage
    weight = (torch.randn(width, VOCAB, generator=generator) * 0.02).t()
    row_major = weight.contiguous()
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_BATCH_HINT)
    exact_weight = weight[:CHECKED_ROWS].double()

    def row(hidden):
        return F.linear(hidden, row_major)

    def plain(hidden):
        return F.linear(hidden, weight)

    def split(hidden):
        return linear(hidden, weight)

    def prepacked(hidden):
        return torch.ops.mkldnn._linear_pointwise(hidden, packed, None, "none", [], "")

    figures = {}
    for batch in batches:
        hidden = torch.randn(batch, width, generator=generator)
        exact = hidden.double() @ exact_weight.t()
        wide = torch.randn(batch, DECODERS[width][1], generator=generator)
        paths = {"row": row, "plain": plain, "split": split, "packed": prepacked}
        timings = take_turns([_timed(product, hidden) for product in paths.values()]
                             + [_timed(lambda h: layer(h, wide), hidden)], repeats)
        row_figures: dict[str, float] = {}
        for (name, product), seconds in zip(paths.items(), timings):
            row_figures[f"{name}_ms_min"] = min(seconds) * 1e3
            row_figures[f"{name}_ms_median"] = statistics.median(seconds) * 1e3
            row_figures[f"{name}_rel_error"] = _max_relative_error(product(hidden), exact)
        row_figures["layer_ms_median"] = statistics.median(timings[-1]) * 1e3
        row_figures["step_ms_estimate"] = layers * row_figures["layer_ms_median"] + row_figures["split_ms_median"]
        row_figures["step_saving"] = ((row_figures["split_ms_median"] - row_figures["packed_ms_median"])
                                      / row_figures["step_ms_estimate"])
        for name in ("plain", "split", "packed"):
            row_figures[f"{name}_vs_row"] = row_figures["row_ms_median"] / row_figures[f"{name}_ms_median"]
        figures[str(batch)] = {k: float(f"{v:.4g}") for k, v in row_figures.items()}
        print(f"width {width:5d} batch {batch}: medians row {row_figures['row_ms_median']:7.1f}, column-major "
              f"{row_figures['plain_ms_median']:7.1f}, split {row_figures['split_ms_median']:7.1f}, packed "
              f"{row_figures['packed_ms_median']:7.1f} ms; step ~{row_figures['step_ms_estimate']:.0f} ms ({layers} x "
              f"{row_figures['layer_ms_median']:.1f} ms layers), packed saves {100 * row_figures['step_saving']:.1f}% "
              f"of it; max rel. error vs fp64: "
              + ", ".join(f"{name} {row_figures[f'{name}_rel_error']:.1e}" for name in paths), flush=True)
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
