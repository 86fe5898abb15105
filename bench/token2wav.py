"""Token2Wav speed: omni's codec streaming and non-streaming vs the transformers reference token2wav,
same checkpoint, codec tokens and voice, in one process.

    python bench/token2wav.py --preset small|3b-wide|3b|7b [--device cpu|cuda] [--codes 250] [--repeats 3]
        [--engine-thread] [--one-thread-below-frames N]

Real-time factor (RTF) = compute seconds / seconds of audio produced (below 1 is faster than real
time). The streaming decoder is fed the codes one at a time, as a Talker would deliver them; its
first-chunk latency is the time from the first codec token until the first chunk comes back when
the codes arrive as fast as it can take them (so it measures the decoder, not the Talker). Every
path runs once untimed first (PyTorch/oneDNN warm-up), then the median of `repeats` runs counts,
the three paths taking turns. `--engine-thread` runs them in a second thread after the main thread
has run torch, as a served model does (loaded in the main thread, run by the engine's thread): with
two threads owning OpenMP teams, GNU OpenMP stops spin-waiting between parallel regions, so every
small operation pays a thread wake-up (see omni.talker.streaming). `--one-thread-below-frames`
overrides the streaming schedule's knob of that name. The codec runs in fp32 on every device (both
sides); on CUDA each timed run ends with a device synchronisation.
The last line is JSON; `cpu` names the processor and the kernels PyTorch chose for it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sizes import PRESET_CHOICES, llm_dtype, peak_memory_gib, reset_peak_memory, size_fields, synchronize  # noqa: E402
from bench.turns import take_turns  # noqa: E402
from omni.loading import load_model  # noqa: E402
from omni.tools.make_checkpoint import cached_checkpoint  # noqa: E402
from omni.talker.streaming import ChunkSchedule, StreamingToken2Wav  # noqa: E402


def cpu_name() -> str:
    """The processor's model name and the vector kernels PyTorch dispatches to (ATEN_CPU_CAPABILITY)."""
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform
        model = platform.processor() or "unknown"
    return f"{model}, {torch.backends.cpu.get_cpu_capability()}"


def _seconds(run, device: str = "cpu"):
    def timed() -> float:
        start = time.perf_counter()
        run()
        synchronize(device)
        return time.perf_counter() - start
    return timed


def _stream_quality(chunks: list[torch.Tensor], whole: torch.Tensor) -> dict[str, float]:
    joined = torch.cat(chunks)
    snr_db = 10 * torch.log10(whole.pow(2).sum() / (joined - whole).pow(2).sum()).item()
    borders = torch.tensor([len(c) for c in chunks[:-1]]).cumsum(0)
    return {
        "streaming_snr_db": round(snr_db, 2),
        "max_border_jump": round((joined[borders] - joined[borders - 1]).abs().max().item(), 4),
        "whole_max_sample_step": round((whole[1:] - whole[:-1]).abs().max().item(), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small", choices=PRESET_CHOICES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--codes", type=int, default=250, help="codec tokens (50 per second of audio)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--voice", default="Chelsie")
    parser.add_argument("--engine-thread", action="store_true", help="run the paths in a second thread, as the engine does")
    parser.add_argument("--one-thread-below-frames", type=int, default=ChunkSchedule.one_thread_below_frames)
    args = parser.parse_args()
    schedule = ChunkSchedule(one_thread_below_frames=args.one_thread_below_frames)

    from transformers import Qwen2_5OmniForConditionalGeneration

    path = cached_checkpoint(args.preset)
    # Only the codecs run (fp32 on both sides, whatever the LLMs are stored in); the LLMs load in the
    # device's dtype to keep a 7B pair within memory. The reference stays on the host but its codec.
    loaded = load_model(path, dtype=llm_dtype(args.device), device=args.device, audio_output=True)
    reference = Qwen2_5OmniForConditionalGeneration.from_pretrained(
        path, dtype=torch.bfloat16 if args.device.startswith("cuda") else torch.float32).eval()
    reference.token2wav.float().to(args.device)
    t2w = loaded.model.token2wav
    speaker = loaded.speakers[args.voice]
    voice = t2w.voice(args.voice, speaker)
    codes = torch.randint(0, 8192, (1, args.codes), generator=torch.Generator().manual_seed(0)).to(args.device)
    audio_s = args.codes * t2w.samples_per_code / 24000

    def reference_run():
        with torch.no_grad():
            reference.token2wav(codes, conditioning=speaker["cond"].float().to(args.device),
                                reference_mel=speaker["ref_mel"].float().to(args.device))

    outputs = {}

    def whole_run():
        outputs["whole"] = t2w.synthesize(codes, voice, t2w.noise(seed=1))

    first_chunk_s = []

    def streaming_run():
        stream = StreamingToken2Wav(t2w, voice, t2w.noise(seed=1), schedule)
        start = time.perf_counter()
        first = None
        chunks = []
        for code in codes[0].tolist():
            chunks += stream.push(code)
            if chunks and first is None:
                first = time.perf_counter() - start
        chunks += stream.finish()
        first_chunk_s.append(first)
        outputs["chunks"] = chunks

    runs = [_seconds(reference_run, args.device), _seconds(whole_run, args.device), _seconds(streaming_run, args.device)]
    reset_peak_memory(args.device)
    if args.engine_thread:
        results = []
        worker = threading.Thread(target=lambda: results.append(take_turns(runs, args.repeats)), name="engine")
        worker.start()
        worker.join()
        turns = results[0]
    else:
        turns = take_turns(runs, args.repeats)
    reference_s, whole_s, streaming_s = (statistics.median(times) for times in turns)
    figures = {
        **size_fields(args.preset, args.device),
        "cpu": cpu_name(),
        "engine_thread": args.engine_thread,
        "one_thread_below_frames": schedule.one_thread_below_frames,
        "codes": args.codes,
        "audio_s": round(audio_s, 3),
        "threads": torch.get_num_threads(),
        "reference_rtf": round(reference_s / audio_s, 4),
        "omni_rtf": round(whole_s / audio_s, 4),
        "omni_streaming_rtf": round(streaming_s / audio_s, 4),
        "first_chunk_s": round(statistics.median(first_chunk_s[1:]), 4),  # warm runs only
        "rtf_ratio": round(whole_s / reference_s, 3),
        "streaming_rtf_overhead": round(streaming_s / whole_s, 3),
        # quality of the stream against the whole-utterance waveform from the same noise
        **_stream_quality([chunk.float().cpu() for chunk in outputs["chunks"]], outputs["whole"].float().cpu()),
        "peak_device_memory_gib": peak_memory_gib(args.device),
    }
    if "note" in figures:
        print(f"note: {figures['note']}")
    print(f"reference {reference_s:.3f}s, omni whole {whole_s:.3f}s, omni streaming {streaming_s:.3f}s for {audio_s:.2f}s of audio")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
