"""The real-size GPU job (issue 12): omni vs the transformers reference on the same random weights at
the 7B shape, on one GPU. `bash bench/gpu.sh` runs it there; `--preset tiny --device cpu` tests it here.

    python bench/gpu_real.py [--preset 7b] [--device cuda] [--checkpoint DIR]

1. builds the checkpoint on the device (omni make-checkpoint's device build: shards written as they
   fill, the host never holds a full copy), unless --checkpoint names one;
2. loads both sides: Thinker and Talker in bf16 on CUDA (fp32 on the CPU), the codec in fp32;
3. a prompt of ~1k tokens: an image (~530 tokens), 10 s of audio (250 tokens), and text;
4. measures, the two sides taking turns (bench/turns.py):
   - `prefill_ms`: preprocessing, encoders and the Thinker prefill up to the first token; omni's clock
     also covers reading and decoding the image and audio files, the reference's starts from the decoded
     media (as bench/ttfa.py);
   - decode tokens/s: (N - 1) / (time of token N - time of token 1) within the same run, no stop tokens;
   - a spoken reply of 10 s (`--codes` 500 at 50 codes/s): omni's time to first audio and total; the
     reference's `generate` returns audio only at its end, so its time to audio is its total;
   - the codec alone on 10 s of codes: real-time factor (compute s / audio s);
   - peak device memory per side (weights + the runs);
5. parity: the greedy Thinker tokens (`--tokens`, >= 16) and the Talker's codes of the spoken reply
   must be identical; where they part, the JSON carries the position and both sides' top-2 logits
   there, so a bf16 near-tie can be told from a bug.
The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gpu_smoke import _first_difference  # noqa: E402
from bench.sizes import PRESET_CHOICES, llm_dtype, load_reference, size_fields, synchronize  # noqa: E402
from bench.token2wav import cpu_name  # noqa: E402
from bench.turns import take_turns  # noqa: E402
from omni.chat import AUDIO_SYSTEM_PROMPT  # noqa: E402
from omni.events import AudioChunk, ReplyDone  # noqa: E402
from omni.loading import load_model  # noqa: E402
from omni.prompt import encode_media, merge_prompt, prepare_prompt  # noqa: E402
from omni.sampling import SamplingParams  # noqa: E402
from omni.session import OmniSession  # noqa: E402
from omni.speech import SpeechOptions  # noqa: E402
from omni.talker.generate import TalkerOptions  # noqa: E402
from omni.thinker.generate import stream_thinker  # noqa: E402
from omni.tools.make_checkpoint import make_checkpoint  # noqa: E402
from omni.tools.media_factory import drawing, tone, write_audio  # noqa: E402
from omni.tools.reference import reference_inputs, reference_speech  # noqa: E402

PROMPT_TOKENS = 1000
FILLER = "Describe the picture, then answer the question you heard, and say how the two relate. "


def _messages(directory: Path, filler_repeats: int) -> list[dict]:
    drawing(644, 644, seed=1).save(directory / "picture.png")  # 23 x 23 merged patches: 529 tokens
    audio = write_audio(directory / "question.wav", tone(10.0, 330.0, rate=16000), 16000, "wav")  # 250 tokens
    return [{"role": "user", "content": [
        {"type": "image", "image": str(directory / "picture.png")}, {"type": "audio", "audio": str(audio)},
        {"type": "text", "text": FILLER * filler_repeats}]}]


class Memory:
    """Peak device memory of the phase since `start` (CUDA), or the process's peak RSS (CPU)."""

    def __init__(self, device: str):
        self.device = device

    def start(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        if self.device.startswith("cuda"):
            return round(torch.cuda.max_memory_allocated() / 2**30, 3)
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # KiB -> GiB


def _top2(logits: torch.Tensor) -> list[list[float]]:
    values, ids = logits.float().topk(2)
    return [[int(i), round(float(v), 4)] for v, i in zip(values, ids)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="7b", choices=PRESET_CHOICES)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--checkpoint", default=None, help="an existing checkpoint (default: build one)")
    parser.add_argument("--tokens", type=int, default=32, help="greedy Thinker tokens to time and compare (>= 16)")
    parser.add_argument("--text-tokens", type=int, default=24, help="reply tokens of the spoken reply")
    parser.add_argument("--codes", type=int, default=500, help="codec tokens of the spoken reply (50 per s)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    device = args.device
    figures: dict = {"bench": "real_size", **size_fields(args.preset, device), "torch": torch.__version__,
                     "cpu": cpu_name()}
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # bf16 runs are bf16; fp32 would be fp32

    workdir = Path(tempfile.mkdtemp(prefix="omni-real-"))
    memory = Memory(device)
    if args.checkpoint:
        path = Path(args.checkpoint)
    else:
        started = time.perf_counter()
        memory.start()
        path = make_checkpoint(workdir / args.preset, args.preset, device=device)
        figures["build_s"] = round(time.perf_counter() - started, 1)
        figures["build_peak_gib"] = memory.peak_gib()

    from transformers import Qwen2_5OmniForConditionalGeneration, Qwen2_5OmniProcessor

    started = time.perf_counter()
    memory.start()
    loaded = load_model(path, dtype=llm_dtype(device), device=device, audio_output=True)
    figures["omni_load_s"] = round(time.perf_counter() - started, 1)
    figures["omni_weights_gib"] = memory.peak_gib()
    started = time.perf_counter()
    reference = load_reference(Qwen2_5OmniForConditionalGeneration, path, device, with_codec=True)
    processor = Qwen2_5OmniProcessor.from_pretrained(path)
    figures["reference_load_s"] = round(time.perf_counter() - started, 1)

    thinker = loaded.model.thinker
    base = prepare_prompt(loaded.tokenizer, thinker.config, [_messages(workdir, 0)], system_prompt=AUDIO_SYSTEM_PROMPT,
                          pad_token_id=loaded.generation.pad_token_id)
    per_filler = len(loaded.tokenizer.encode(FILLER))
    repeats = max(0, -(-(PROMPT_TOKENS - base.input_ids.shape[1]) // per_filler))
    while True:  # the filler's tokens inside the chat may differ from its tokens alone
        messages = _messages(workdir, repeats)
        prepared = prepare_prompt(loaded.tokenizer, thinker.config, [messages], system_prompt=AUDIO_SYSTEM_PROMPT,
                                  pad_token_id=loaded.generation.pad_token_id)
        if prepared.input_ids.shape[1] >= PROMPT_TOKENS:
            break
        repeats += 1
    conversation = [{"role": "system", "content": [{"type": "text", "text": AUDIO_SYSTEM_PROMPT}]}] + messages
    figures["prompt_tokens"] = int(prepared.input_ids.shape[1])

    def reference_thinker_inputs():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inputs = dict(reference_inputs(processor, [conversation], prepared.items))
        inputs = {k: v.to(device) for k, v in inputs.items()}
        for key in ("pixel_values", "input_features"):
            inputs[key] = inputs[key].to(reference.thinker.dtype)
        return inputs

    # --- Thinker: prefill and decode (the same decoded media on both sides) ---
    # One run gives both: the time to the first token (prefill) and, from the first token's timestamp
    # to the last's, the decode rate (N - 1 tokens); every timestamp is taken after the token is on the host.
    def omni_thinker(keep: list | None = None):
        synchronize(device)
        started = time.perf_counter()
        media = prepare_prompt(loaded.tokenizer, thinker.config, [messages], system_prompt=AUDIO_SYSTEM_PROMPT,
                               pad_token_id=loaded.generation.pad_token_id)
        prompt = merge_prompt(thinker, media, encode_media(thinker, media.media))
        tokens, stamps = [], []
        for step in stream_thinker(thinker, prompt, SamplingParams(), args.tokens, stop_token_ids=[], pad_token_id=0):
            tokens.append(int(step.token_ids[0]))
            stamps.append(time.perf_counter())
            if keep is not None:
                keep.append(thinker.lm_head(step.hidden[:, -1:]).float().cpu()[0, -1])
        assert len(tokens) == args.tokens
        return stamps[0] - started, (len(stamps) - 1) / (stamps[-1] - stamps[0]), tokens

    class Stamps:
        """A generate streamer that only notes when each new token exists on the host."""

        def __init__(self):
            self.times: list[float] = []

        def put(self, value):
            synchronize(device)
            self.times.append(time.perf_counter())

        def end(self):
            pass

    def reference_thinker(keep: list | None = None):
        synchronize(device)
        started = time.perf_counter()
        inputs = reference_thinker_inputs()
        stamps = Stamps()
        out = reference.thinker.generate(**inputs, max_new_tokens=args.tokens, min_new_tokens=None, do_sample=False,
                                         eos_token_id=None, pad_token_id=0, output_scores=keep is not None,
                                         return_dict_in_generate=True, streamer=stamps)
        if keep is not None:
            keep.extend(score[0].float().cpu() for score in out.scores)
        tokens = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
        times = stamps.times[1:]  # the streamer is first handed the prompt
        assert len(tokens) == args.tokens == len(times)
        return times[0] - started, (len(times) - 1) / (times[-1] - times[0]), tokens

    memory.start()
    omni_logits, ref_logits = [], []
    with torch.inference_mode():
        omni_runs, ref_runs = take_turns([omni_thinker, reference_thinker], args.repeats)
        # untimed: the same runs again, keeping every step's logits (an extra lm_head per step on omni's side)
        omni_tokens, ref_tokens = omni_thinker(omni_logits)[2], reference_thinker(ref_logits)[2]
    assert omni_tokens == omni_runs[-1][2] and ref_tokens == ref_runs[-1][2], "greedy decoding is not repeatable"
    omni_rate = statistics.median(r[1] for r in omni_runs)
    ref_rate = statistics.median(r[1] for r in ref_runs)
    differs = _first_difference(omni_tokens, ref_tokens)
    figures.update(
        omni_prefill_ms=round(statistics.median(r[0] for r in omni_runs) * 1000, 1),
        reference_prefill_ms=round(statistics.median(r[0] for r in ref_runs) * 1000, 1),
        omni_decode_tokens_per_s=round(omni_rate, 2), reference_decode_tokens_per_s=round(ref_rate, 2),
        decode_speed_ratio=round(omni_rate / ref_rate, 3),
        greedy_tokens_compared=args.tokens, greedy_tokens_identical=differs is None,
    )
    if differs is not None:
        figures["greedy_first_difference"] = {
            "index": differs, "omni_top2": _top2(omni_logits[differs]), "reference_top2": _top2(ref_logits[differs])}

    # --- The spoken reply (Thinker + Talker + codec) ---
    talker_options = TalkerOptions(sampling=SamplingParams(do_sample=False, repetition_penalty=1.05),
                                   max_codes=args.codes, codes_per_text_token=None)

    def omni_speech():
        session = OmniSession(loaded, sampling=SamplingParams(do_sample=False))
        speech = SpeechOptions(voice="Chelsie", seed=0, talker=talker_options)
        synchronize(device)
        started = time.perf_counter()
        first_audio, done = None, None
        for event in session.stream(messages, return_audio=True, max_new_tokens=args.text_tokens, speech=speech):
            if isinstance(event, AudioChunk) and first_audio is None:
                first_audio = time.perf_counter() - started
            elif isinstance(event, ReplyDone):
                done = event
        return first_audio, time.perf_counter() - started, list(done.codec_codes), done.text

    def reference_run():
        synchronize(device)
        started = time.perf_counter()
        inputs = reference_thinker_inputs()
        input_ids = inputs.pop("input_ids")
        inputs.pop("attention_mask")
        inputs["thinker_pixel_values"] = inputs.pop("pixel_values")  # generate would hand it to the talker too
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = reference_speech(reference, input_ids, "Chelsie", args.text_tokens, args.codes, **inputs)
        synchronize(device)
        return time.perf_counter() - started, result

    memory.start()
    with torch.inference_mode():
        omni_runs, ref_runs = take_turns([omni_speech, reference_run], args.repeats)
    omni_codes, ref_result = omni_runs[-1][2], ref_runs[-1][1]
    codes_differ = _first_difference(omni_codes, ref_result.codes)
    figures.update(
        spoken_audio_s=round(len(omni_codes) * 480 / 24000, 2),
        omni_time_to_first_audio_s=round(statistics.median(r[0] for r in omni_runs), 3),
        omni_spoken_total_s=round(statistics.median(r[1] for r in omni_runs), 3),
        reference_spoken_total_s=round(statistics.median(r[0] for r in ref_runs), 3),
        reply_text_identical=omni_runs[-1][3] == loaded.tokenizer.decode(ref_result.text_ids),
        codes_compared=min(len(omni_codes), len(ref_result.codes)),
        codes_identical=codes_differ is None,
        speech_peak_gib=memory.peak_gib(),
    )
    figures["ttfa_ratio"] = round(figures["omni_time_to_first_audio_s"] / figures["reference_spoken_total_s"], 4)
    figures["total_ratio"] = round(figures["omni_spoken_total_s"] / figures["reference_spoken_total_s"], 3)
    if codes_differ is not None:
        figures["codes_first_difference"] = {"index": codes_differ,
                                             "reference_top2": _top2(ref_result.talker_logits[codes_differ + 1])
                                             if codes_differ + 1 < len(ref_result.talker_logits) else None}

    # --- The codec alone: 10 s of codes, fp32 both ---
    codes = torch.randint(0, 8192, (1, args.codes), generator=torch.Generator().manual_seed(0)).to(device)
    speaker = loaded.speakers["Chelsie"]
    t2w = loaded.model.token2wav
    voice = t2w.voice("Chelsie", speaker)
    audio_s = args.codes * 480 / 24000

    def omni_codec():
        started = time.perf_counter()
        t2w.synthesize(codes, voice, t2w.noise(seed=1))
        synchronize(device)
        return time.perf_counter() - started

    def reference_codec():
        started = time.perf_counter()
        reference.token2wav(codes, conditioning=speaker["cond"].float().to(device),
                            reference_mel=speaker["ref_mel"].float().to(device))
        synchronize(device)
        return time.perf_counter() - started

    with torch.inference_mode():
        omni_codec_s, ref_codec_s = take_turns([omni_codec, reference_codec], args.repeats)
    figures.update(omni_codec_rtf=round(statistics.median(omni_codec_s) / audio_s, 4),
                   reference_codec_rtf=round(statistics.median(ref_codec_s) / audio_s, 4))
    figures["peak_memory_gib"] = memory.peak_gib()
    figures["ok"] = bool(figures["greedy_tokens_identical"] and figures["codes_identical"])
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
