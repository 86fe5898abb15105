"""Time to first audio for Qwen3-Omni: omni's streaming reply vs transformers'
Qwen3OmniMoeForConditionalGeneration.generate, same checkpoint, prompt (a spoken question and a line of
text) and output lengths, in one process. Run as `python bench/ttfa.py --family qwen3 --preset small`.

Both sides decode greedily and run to the same lengths: `--text-tokens` reply tokens and `--frames`
codec frames (80 ms each; the random Talker never says codec eos, so both run to the frame limit and the
bench checks they produced the same counts). The reference's clock covers its processor and `generate`,
which returns audio only at the end (its Talker starts after its Thinker has finished): its time to
audio is its total. omni's clock covers the whole `session.stream` call: reading the file, features,
encoders, Thinker, Talker, code predictor, codec. `streaming_overhead` compares streaming to omni with
Code2Wav run once over the finished frames. `codec_first_frame_ms` is the streaming Code2Wav's time to
decode a reply's first frame (its first 1365 samples, 56.9 ms of audio), median over repeats.
The reference runs with its default attention and expert kernels (what a user gets); the parity tests
pin it to eager ones.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from bench.sizes import llm_dtype, peak_memory_gib, reset_peak_memory, size_fields, synchronize, torch_dtype
from bench.token2wav import cpu_name
from bench.turns import take_turns
from omni.events import AudioChunk, ReplyDone
from omni.loading import load_model
from omni.sampling import SamplingParams
from omni.session import OmniSession
from omni.speech import SpeechOptions
from omni.talker.generate import TalkerOptions
from omni.talker.qwen3.code2wav_streaming import Code2WavStream
from omni.tools.make_checkpoint import cached_checkpoint
from omni.tools.media_factory import tone, write_audio

QUESTION = "Answer the question you heard in one sentence."
SAMPLES_PER_FRAME = 1920


def _messages(directory: Path, audio_path: Path) -> list[dict]:
    return [{"role": "user", "content": [{"type": "audio", "audio": str(audio_path)},
                                         {"type": "text", "text": QUESTION}]}]


def run(args) -> dict:
    from transformers import AutoProcessor, Qwen3OmniMoeForConditionalGeneration

    if args.preset not in ("tiny", "small"):
        raise SystemExit("--family qwen3 has the tiny and small presets")
    path = cached_checkpoint(args.preset, family="qwen3")
    loaded = load_model(path, dtype=llm_dtype(args.device), device=args.device, audio_output=True)
    reference = Qwen3OmniMoeForConditionalGeneration.from_pretrained(
        path, dtype=torch_dtype(llm_dtype(args.device))).eval().to(args.device)
    reference.code2wav.float()
    processor = AutoProcessor.from_pretrained(path)
    workdir = Path(tempfile.mkdtemp(prefix="omni-ttfa-qwen3-"))
    wave_16k = tone(4.0, 330.0, rate=16000)
    audio_path = write_audio(workdir / "question.wav", wave_16k, 16000, "wav")
    messages = _messages(workdir, audio_path)
    talker_tokens = args.frames + 1  # the reference gives the last group-0 token no residual codes

    def reference_run():
        start = time.perf_counter()
        from omni.encoders.audio_loader import load_audio
        from omni.encoders.limits import MediaLimits

        waveform = load_audio(str(audio_path), MediaLimits())
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=text, audio=[waveform], return_tensors="pt")
        inputs = {key: value.to(args.device) if hasattr(value, "to") else value for key, value in inputs.items()}
        if inputs["input_features"].is_floating_point():
            inputs["input_features"] = inputs["input_features"].to(reference.thinker.dtype)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sequences, audio = reference.generate(
                **inputs, speaker="Ethan", thinker_max_new_tokens=args.text_tokens, thinker_do_sample=False,
                talker_do_sample=False, talker_max_new_tokens=talker_tokens)
        synchronize(args.device)
        elapsed = time.perf_counter() - start
        frames = (audio.numel() + 555) // SAMPLES_PER_FRAME  # chunked_decode keeps frames * 1920 - 555 samples
        return elapsed, sequences.shape[1] - inputs["input_ids"].shape[1], frames

    def omni_run(streaming: bool):
        session = OmniSession(loaded, sampling=SamplingParams(do_sample=False), system_prompt=None)
        speech = SpeechOptions(voice="Ethan", streaming=streaming, talker=TalkerOptions(
            sampling=SamplingParams(do_sample=False, repetition_penalty=1.05), max_codes=args.frames,
            codes_per_text_token=None))
        start = time.perf_counter()
        first_audio = None
        for event in session.stream(messages, return_audio=True, max_new_tokens=args.text_tokens, speech=speech):
            if isinstance(event, AudioChunk) and first_audio is None:
                synchronize(args.device)
                first_audio = time.perf_counter() - start
            if isinstance(event, ReplyDone):
                done = event
        synchronize(args.device)
        return first_audio, time.perf_counter() - start, done.usage.text_tokens, done.usage.codec_tokens

    reset_peak_memory(args.device)
    reference_runs, streaming_runs, whole_runs = take_turns(
        [reference_run, lambda: omni_run(True), lambda: omni_run(False)], args.repeats)
    # text tokens: the reference counts its sampled stop token, omni does not; the random model rarely stops
    lengths = {"reference": reference_runs[0][1:], "omni": streaming_runs[0][2:], "omni_whole": whole_runs[0][2:]}
    if len({tuple(v) for v in lengths.values()}) != 1:
        raise SystemExit(f"the runs produced different lengths (text tokens, frames): {lengths}")

    codec = loaded.model.code2wav
    first_frame = []
    codes = torch.randint(0, codec.config.codebook_size, (codec.config.num_quantizers, 1))
    for _ in range(args.repeats + 1):
        stream = Code2WavStream(codec)
        start = time.perf_counter()
        stream.step(codes)
        synchronize(args.device)
        first_frame.append(time.perf_counter() - start)
    reference_s = statistics.median(r[0] for r in reference_runs)
    ttfa_s = statistics.median(r[0] for r in streaming_runs)
    streaming_s = statistics.median(r[1] for r in streaming_runs)
    whole_s = statistics.median(r[1] for r in whole_runs)
    return {
        **size_fields(args.preset, args.device),
        "family": "qwen3",
        "cpu": cpu_name(),
        "text_tokens": lengths["omni"][0],
        "frames": lengths["omni"][1],
        "audio_s": round(lengths["omni"][1] * SAMPLES_PER_FRAME / 24000, 3),
        "threads": torch.get_num_threads(),
        "reference_time_to_audio_s": round(reference_s, 3),
        "omni_ttfa_s": round(ttfa_s, 3),
        "omni_total_s": round(streaming_s, 3),
        "omni_non_streaming_total_s": round(whole_s, 3),
        "codec_first_frame_ms": round(1000 * statistics.median(first_frame[1:]), 2),
        "ttfa_ratio": round(ttfa_s / reference_s, 4),
        "total_ratio": round(streaming_s / reference_s, 3),
        "streaming_overhead": round(streaming_s / whole_s, 3),
        "peak_device_memory_gib": peak_memory_gib(args.device),
    }


def print_run(args) -> None:
    print(json.dumps(run(args)))
