"""Memory and decode speed of each weight mode: bf16, load-time int8 and int4, and the GPTQ / AWQ
layouts that `omni make-checkpoint --quantize` writes, Thinker only (audio_output=False: text-only
serving never loads the Talker and codec; bf16 text-only is the baseline every ratio divides by);
then the whole model with speech output (`speech`) and with `--offload encoders|talker|all`
(`offload-encoders`, `offload-talker`, `offload-all`), bf16.

    python bench/memory.py --preset 3b-wide|small|7b [--device cpu|cuda] [--modes bf16,int8,...,offload-all]
        [--tokens 24] [--dtype bf16]            (int4:GROUP for another group size, e.g. int4:32 at tiny)
    python bench/memory.py --preset 3b|7b --computed   # weight bytes per mode from the shapes, nothing loaded

Offload modes: the weight bytes of each offloaded stage (vision tower, audio tower, Talker + codec)
are those of the loaded tensors; `device_idle_weights` is what the device holds between uses (every
other weight), `device_one_reply_weights` that plus the largest stage one reply holds at a time (a
reply holds one tower per call, then the Talker and codec while it speaks; replies overlapping in an
engine can hold them all). On CUDA `device_allocated_after_load` measures the idle figure; on a CPU
offload moves nothing (the device's memory is the host's), so the figures are the loaded tensors'
bytes, arithmetic that holds on a GPU. Byte figures do not depend on the machine's load; the
seconds (load_s, decode) do, and this CPU is shared.

Memory: each mode loads in a fresh process (its peaks are its own): the weight bytes (the whole
loaded model, and the decoder linears that quantization touches against the same linears in bf16),
the load's peak host memory (RssAnon polled every 2 ms: the process's own memory; VmHWM, which also
counts the mapped checkpoint pages read, is reported beside it), device peak on CUDA.
Speed: the `--speed-modes` (default bf16, int8, int4; GPTQ and AWQ run int4's kernel) loaded side
by side in one more process, each decoding greedily after a 16-token prompt, one step per mode in
turn (bench/turns.py: a slow spell of a shared machine hits every mode), `--tokens` rounds; the
median step is split into the decoder layers and the vocabulary projection (the lm_head stays in
the model dtype in every mode, so only the layers' time can change).
The ratios compare each mode with bf16 (int8_weight_ratio: int8 decoder-linear bytes / bf16 ones).
The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sizes import PRESET_CHOICES, size_fields, synchronize  # noqa: E402
from bench.token2wav import cpu_name  # noqa: E402

QUANT_MODES = ("bf16", "int8", "int4", "gptq", "awq")
OFFLOAD_MODES = ("offload-encoders", "offload-talker", "offload-all")
MODES = QUANT_MODES + ("speech",) + OFFLOAD_MODES
MIB = 2**20
PROMPT_TOKENS = 16


def _checkpoint(preset: str, mode: str) -> Path:
    from omni.tools.make_checkpoint import cached_checkpoint
    from omni.tools.quantized_checkpoint import cached_quantized_checkpoint

    if mode in ("gptq", "awq"):
        return cached_quantized_checkpoint(preset, mode)
    return cached_checkpoint(preset)


def measure(path: Path, mode: str, dtype: str, device: str, tokens: int) -> dict:
    """One mode, in this process: load, weigh, decode."""
    from omni.loading import load_model
    from omni.quant.footprint import (
        HostMemorySampler,
        device_peak_bytes,
        host_anon_bytes,
        host_peak_bytes,
        weight_bytes,
    )
    from omni.quant.loader import decoder_linear_names

    torch.manual_seed(0)
    before = host_anon_bytes()
    quantize = mode if mode.startswith("int") else None
    speaks = mode == "speech" or mode in OFFLOAD_MODES
    offload = mode.removeprefix("offload-") if mode in OFFLOAD_MODES else None
    start = time.perf_counter()
    with HostMemorySampler() as sampler:
        loaded = load_model(path, dtype=dtype, device=device, audio_output=speaks, quantize=quantize, offload=offload)
    load_s = time.perf_counter() - start
    weights = weight_bytes(loaded.model, decoder_linear_names(loaded.config.thinker.text.num_layers))
    figures = {
        "mode": mode, "quantization": loaded.quantization, "audio_output": loaded.audio_output,
        "load_s": round(load_s, 2), "weights": weights.as_dict(),
        "host_anon_before_load": before, "load_peak_host_anon": sampler.peak_bytes,
        "load_peak_host_rss_vmhwm": host_peak_bytes(), "device_peak_after_load": device_peak_bytes(loaded.device),
    }
    if offload is not None:
        figures.update(_offload_figures(loaded, offload, weights.total))
    return figures


def _offload_figures(loaded, mode: str, total_bytes: int) -> dict:
    """What the device holds idle and during one reply under `mode` (see the module docstring)."""
    from omni.offload import STAGE_MODULES, stage_names

    stages = {}
    for name in stage_names(mode, loaded.audio_output):
        paths, kept = STAGE_MODULES[name]
        tensors = {id(t): t for p in paths for t in list(loaded.model.get_submodule(p).parameters())
                   + list(loaded.model.get_submodule(p).buffers())}
        for path in kept:  # stays on the device (what `.device` reads)
            tensors.pop(id(loaded.model.get_parameter(path)), None)
        stages[name] = sum(t.untyped_storage().nbytes() for t in tensors.values())
    idle = total_bytes - sum(stages.values())
    figures = {"offloaded_stage_weights": stages, "device_idle_weights": idle,
               "device_one_reply_weights": idle + max(stages.values(), default=0),
               "offload_note": loaded.offload.note}
    if loaded.device.type == "cuda":
        figures["device_allocated_after_load"] = int(torch.cuda.memory_allocated(loaded.device))
    return figures


class _Decoding:
    """One model's greedy decode after a fixed prompt, one step per call: (decoder s, lm_head s)."""

    def __init__(self, loaded, capacity: int, device: str) -> None:
        self.thinker, self.device, self.position = loaded.model.thinker, device, PROMPT_TOKENS
        ids = torch.arange(1000, 1000 + PROMPT_TOKENS, device=loaded.device)[None]
        self.cache = self.thinker.model.new_cache(1, PROMPT_TOKENS + capacity)
        with torch.inference_mode():
            positions = torch.arange(PROMPT_TOKENS, device=loaded.device).expand(3, 1, -1)
            hidden = self.thinker(self.thinker.embed(ids), positions, cache=self.cache)
            self.token = self.thinker.logits(hidden[:, -1]).argmax(-1)

    def step(self) -> tuple[float, float]:
        with torch.inference_mode():
            position = torch.full((3, 1, 1), self.position, device=self.token.device)
            synchronize(self.device)
            start = time.perf_counter()
            hidden = self.thinker(self.thinker.embed(self.token[:, None]), position, cache=self.cache)
            synchronize(self.device)
            middle = time.perf_counter()
            self.token = self.thinker.logits(hidden[:, -1]).argmax(-1)
            synchronize(self.device)
        self.position += 1
        return middle - start, time.perf_counter() - middle


def speed(paths: dict[str, str], dtype: str, device: str, tokens: int) -> dict:
    """Decode speed of each mode, the modes taking turns step by step (all loaded side by side)."""
    from bench.turns import take_turns
    from omni.loading import load_model

    decodings = {}
    for mode, path in paths.items():
        loaded = load_model(path, dtype=dtype, device=device, audio_output=False,
                            quantize=mode if mode.startswith("int") else None)
        decodings[mode] = _Decoding(loaded, tokens + 2, device)
    steps = take_turns([decoding.step for decoding in decodings.values()], repeats=tokens)
    results = {}
    for mode, times in zip(decodings, steps):
        decoder_ms = statistics.median(t[0] for t in times) * 1000
        projection_ms = statistics.median(t[1] for t in times) * 1000
        results[mode] = {"decode_tokens": tokens, "decoder_ms_per_token": round(decoder_ms, 3),
                         "lm_head_ms_per_token": round(projection_ms, 3),
                         "decode_tokens_per_s": round(1000 / (decoder_ms + projection_ms), 2)}
    return results


def computed(preset: str, group_size: int = 128) -> dict:
    """Weight bytes of each mode for `preset` from its shapes alone (the reference model built on the
    meta device): the Thinker's decoder linears at int8 (1 byte + a bf16 scale per output) or int4
    (half a byte + a bf16 scale and offset per group), everything else as omni loads it (bf16; the
    codec fp32)."""
    import re

    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    from omni.tools.presets import PRESETS

    spec = PRESETS[preset]
    config = Qwen2_5OmniConfig(thinker_config=spec.thinker, talker_config=spec.talker,
                               token2wav_config={"dit_config": spec.dit, "bigvgan_config": spec.bigvgan})
    with torch.device("meta"):
        model = Qwen2_5OmniForConditionalGeneration(config)
    linear = re.compile(r"thinker\.model\.(language_model\.)?layers\.\d+\."
                        r"(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight")
    linears: list[tuple[int, int]] = []
    other = {"thinker": 0, "talker": 0, "token2wav": 0}
    towers = {"vision": 0, "audio": 0}  # of other["thinker"]
    for name, parameter in model.named_parameters():
        if linear.fullmatch(name):
            linears.append(tuple(parameter.shape))
        else:
            other[name.split(".", 1)[0]] += parameter.numel()
            # transformers 5 nests the towers under thinker.model (the checkpoint names them thinker.visual, ...)
            if re.match(r"thinker\.(model\.)?visual\.", name):
                towers["vision"] += parameter.numel()
            elif re.match(r"thinker\.(model\.)?audio_tower\.", name):
                towers["audio"] += parameter.numel()
    linear_bytes = {
        "bf16": sum(2 * n * k for n, k in linears),
        "int8": sum(n * k + 2 * n for n, k in linears),
        f"int4 (group {group_size})": sum(n * k // 2 + 4 * n * (k // group_size) for n, k in linears),
    }
    audio_bytes = 2 * other["talker"] + 4 * other["token2wav"]
    stage_bytes = {"vision": 2 * towers["vision"], "audio": 2 * towers["audio"], "speech": audio_bytes}
    modes = {mode: {"decoder_linears": size, "thinker": size + 2 * other["thinker"],
                    "with_audio_output": size + 2 * other["thinker"] + audio_bytes}
             for mode, size in linear_bytes.items()}
    for mode, offloaded in (("encoders", ("vision", "audio")), ("talker", ("speech",)),
                            ("all", ("vision", "audio", "speech"))):
        for quant, figures in list(modes.items()):
            idle = figures["with_audio_output"] - sum(stage_bytes[s] for s in offloaded)
            figures[f"offload_{mode}_device_idle"] = idle
            figures[f"offload_{mode}_device_one_reply"] = idle + max(stage_bytes[s] for s in offloaded)
    return {"preset": preset, "computed": True, "decoder_linear_params": sum(n * k for n, k in linears),
            "stage_params": {"vision": towers["vision"], "audio": towers["audio"], "talker": other["talker"],
                             "token2wav": other["token2wav"]},
            "offloaded_stage_bytes": stage_bytes, "modes": modes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESET_CHOICES, default="3b-wide")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bf16", help="the model dtype of every mode (activations, lm_head, ...)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--tokens", type=int, default=24, help="decode steps of each mode in the speed phase")
    parser.add_argument("--speed-modes", default="bf16,int8,int4", help="modes of the speed phase (bf16 first)")
    parser.add_argument("--speed", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--computed", action="store_true",
                        help="only the weight bytes of each mode, computed from the preset's shapes (no loading)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(Path(args.path), args.child, args.dtype, args.device, args.tokens)))
        return
    if args.speed:
        print(json.dumps(speed(json.loads(args.speed), args.dtype, args.device, args.tokens)))
        return
    if args.computed:
        print(json.dumps(computed(args.preset)))
        return
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(m for m in modes if m not in MODES and not m.startswith("int4:"))
    if unknown or "bf16" not in modes:
        parser.error(f"--modes takes {', '.join(MODES)} and must include bf16 (the baseline); got {args.modes}")
    def child(*extra: str) -> dict:
        run = subprocess.run([sys.executable, __file__, "--dtype", args.dtype, "--device", args.device, "--tokens",
                              str(args.tokens), "--preset", args.preset, *extra], capture_output=True, text=True,
                             check=False)
        if run.returncode != 0:
            raise SystemExit(f"{' '.join(extra)} failed:\n{run.stderr[-3000:]}")
        return json.loads(run.stdout.strip().splitlines()[-1])

    paths = {mode: str(_checkpoint(args.preset, mode)) for mode in modes}
    results = {}
    for mode in modes:
        results[mode] = figures = child("--child", mode, "--path", paths[mode])
        print(f"{mode:16s} weights {figures['weights']['total'] / MIB:8.1f} MiB (decoder linears "
              f"{figures['weights']['decoder_linears'] / MIB:7.1f} MiB), load peak "
              f"{figures['load_peak_host_anon'] / MIB:8.1f} MiB anon / {figures['load_peak_host_rss_vmhwm'] / MIB:8.1f}"
              f" MiB VmHWM", file=sys.stderr)
        if "device_idle_weights" in figures:
            print(f"{'':16s} device holds {figures['device_idle_weights'] / MIB:8.1f} MiB idle, "
                  f"{figures['device_one_reply_weights'] / MIB:8.1f} MiB during one reply", file=sys.stderr)
    speed_modes = [m.strip() for m in args.speed_modes.split(",") if m.strip()]
    if speed_modes[:1] != ["bf16"] or not set(speed_modes) <= set(modes):
        parser.error("--speed-modes must start with bf16 and name modes of --modes")
    for mode, figures in child("--speed", json.dumps({m: paths[m] for m in speed_modes})).items():
        results[mode].update(figures)
        print(f"{mode:7s} decode {figures['decode_tokens_per_s']:6.2f} tok/s (layers "
              f"{figures['decoder_ms_per_token']:.1f} ms, lm_head {figures['lm_head_ms_per_token']:.1f} ms)",
              file=sys.stderr)

    base = results["bf16"]
    summary = {"bench": "memory", **size_fields(args.preset, args.device), "llm_dtype": args.dtype,
               "cpu": cpu_name(), "threads": torch.get_num_threads(),
               "baseline": "bf16, text only (audio_output=False: no Talker, no codec loaded)",
               "timing_note": "byte figures do not depend on the machine's load; load_s and decode speeds do "
                              "(this CPU is shared with other work)",
               "modes": results}
    with_speech = results.get("speech")
    if with_speech is not None:
        summary["text_only_saves_bytes"] = with_speech["weights"]["total"] - base["weights"]["total"]
    for mode in OFFLOAD_MODES:
        if mode in results:
            figures = results[mode]
            summary[f"{mode}_device_idle_bytes"] = figures["device_idle_weights"]
            summary[f"{mode}_device_one_reply_bytes"] = figures["device_one_reply_weights"]
            summary[f"{mode}_device_idle_vs_text_only"] = round(
                figures["device_idle_weights"] / base["weights"]["total"], 4)
    for mode, figures in results.items():
        if mode == "bf16" or mode == "speech" or mode in OFFLOAD_MODES:
            continue
        weights = figures["weights"]
        bound = 1.1 * weights["total"] + 512 * MIB
        summary[f"{mode}_weight_ratio"] = round(weights["decoder_linears"] / weights["decoder_linears_bf16"], 4)
        summary[f"{mode}_total_weight_ratio"] = round(weights["total"] / base["weights"]["total"], 4)
        summary[f"{mode}_load_peak_bound"] = int(bound)
        summary[f"{mode}_load_peak_within_bound"] = figures["load_peak_host_anon"] <= bound
        if "decode_tokens_per_s" in figures:
            summary[f"{mode}_decode_speed_vs_bf16"] = round(
                figures["decode_tokens_per_s"] / base["decode_tokens_per_s"], 3)
            summary[f"{mode}_decoder_layers_speed_vs_bf16"] = round(
                base["decoder_ms_per_token"] / figures["decoder_ms_per_token"], 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
