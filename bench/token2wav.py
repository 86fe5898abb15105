"""Token2Wav speed: omni's codec streaming and non-streaming vs the transformers reference token2wav,
same checkpoint, codec tokens and voice, in one process.

    python bench/token2wav.py --preset small [--codes 250] [--repeats 3]

Real-time factor (RTF) = compute seconds / seconds of audio produced (below 1 is faster than real
time). The streaming decoder is fed the codes one at a time, as a Talker would deliver them; its
first-chunk latency is the time from the first codec token until the first chunk comes back when
the codes arrive as fast as it can take them (so it measures the decoder, not the Talker). Every
path runs once untimed first (PyTorch/oneDNN warm-up), then the median of `repeats` runs counts,
the three paths taking turns.
The last line is JSON.
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

from bench.turns import take_turns  # noqa: E402
from omni.loading import load_model  # noqa: E402
from omni.tools.make_checkpoint import cached_checkpoint  # noqa: E402
from omni.talker.streaming import StreamingToken2Wav  # noqa: E402


def _seconds(run):
    def timed() -> float:
        start = time.perf_counter()
        run()
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
    parser.add_argument("--preset", default="small", choices=["tiny", "small"])
    parser.add_argument("--codes", type=int, default=250, help="codec tokens (50 per second of audio)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--voice", default="Chelsie")
    args = parser.parse_args()

    from transformers import Qwen2_5OmniForConditionalGeneration

    path = cached_checkpoint(args.preset)
    loaded = load_model(path, dtype="fp32", audio_output=True)
    reference = Qwen2_5OmniForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    t2w = loaded.model.token2wav
    speaker = loaded.speakers[args.voice]
    voice = t2w.voice(args.voice, speaker)
    codes = torch.randint(0, 8192, (1, args.codes), generator=torch.Generator().manual_seed(0))
    audio_s = args.codes * t2w.samples_per_code / 24000

    def reference_run():
        with torch.no_grad():
            reference.token2wav(codes, conditioning=speaker["cond"].float(), reference_mel=speaker["ref_mel"].float())

    outputs = {}

    def whole_run():
        outputs["whole"] = t2w.synthesize(codes, voice, t2w.noise(seed=1))

    first_chunk_s = []

    def streaming_run():
        stream = StreamingToken2Wav(t2w, voice, t2w.noise(seed=1))
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

    reference_s, whole_s, streaming_s = (statistics.median(times) for times in take_turns(
        [_seconds(reference_run), _seconds(whole_run), _seconds(streaming_run)], args.repeats))
    figures = {
        "preset": args.preset,
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
        **_stream_quality(outputs["chunks"], outputs["whole"]),
    }
    print(f"reference {reference_s:.3f}s, omni whole {whole_s:.3f}s, omni streaming {streaming_s:.3f}s for {audio_s:.2f}s of audio")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
