"""Time to first audio: omni's streaming reply vs the transformers reference `generate`, same
checkpoint, prompt (an image, an audio clip and a question) and output lengths, in one process.

    python bench/ttfa.py --preset small|3b-wide|3b|7b [--device cpu|cuda] [--text-tokens 48] [--codes 400]
        [--repeats 3] [--one-thread-below-frames N]
    python bench/ttfa.py --family qwen3 --preset tiny|small [--text-tokens 48] [--frames 100] [--repeats 3]

(--family qwen3 runs bench/ttfa_qwen3.py: Qwen3-Omni against its transformers reference; see there.)

The defaults are a typical spoken reply: 48 text tokens, 8 s of speech.

Both sides decode greedily (the Talker keeps the reference's repetition penalty) and run to the same
lengths: `--text-tokens` reply tokens and `--codes` codec tokens (the random Talker is held to
exactly that many; the bench checks both sides produced them). The reference's clock covers its
processor and `generate`, which returns audio only at the end: its time to audio is its total.
omni's clock covers the whole `session.stream` call: reading the files, preprocessing, encoders,
Thinker, Talker, codec. `streaming_overhead` compares omni streaming to omni with the codec run
once over the finished codes. Every path runs once untimed first; then the three take turns and medians of `--repeats` count.
`--one-thread-below-frames` overrides the streaming schedule's knob of that name.
On CUDA the Thinker and Talker run in bf16 on both sides and the codec in fp32 (omni always runs it in
fp32; the reference's token2wav is cast back to fp32); `peak_device_memory_gib` is the whole run's.
The last line is JSON; `cpu` names the processor and the kernels PyTorch chose for it.
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

from bench.sizes import (  # noqa: E402
    PRESET_CHOICES, llm_dtype, load_reference, peak_memory_gib, reset_peak_memory, size_fields, synchronize,
)
from bench.token2wav import cpu_name  # noqa: E402
from bench.turns import take_turns  # noqa: E402
from omni.chat import AUDIO_SYSTEM_PROMPT  # noqa: E402
from omni.events import AudioChunk, ReplyDone  # noqa: E402
from omni.loading import load_model  # noqa: E402
from omni.tools.make_checkpoint import cached_checkpoint  # noqa: E402
from omni.prompt import prepare_prompt  # noqa: E402
from omni.sampling import SamplingParams  # noqa: E402
from omni.session import OmniSession  # noqa: E402
from omni.speech import SpeechOptions  # noqa: E402
from omni.talker.generate import TalkerOptions  # noqa: E402
from omni.talker.streaming import ChunkSchedule  # noqa: E402
from omni.tools.media_factory import drawing, tone, write_audio  # noqa: E402
from omni.tools.reference import reference_inputs  # noqa: E402
from omni.tools.reference import codec_bad_words  # noqa: E402


def _media(directory: Path) -> list[dict]:
    image = directory / "picture.png"
    drawing(640, 480, seed=1).save(image)
    audio = write_audio(directory / "question.wav", tone(4.0, 330.0, rate=16000), 16000, "wav")
    return [{"role": "user", "content": [
        {"type": "image", "image": str(image)}, {"type": "audio", "audio": str(audio)},
        {"type": "text", "text": "Describe the picture and answer the question you heard."}]}]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small", choices=PRESET_CHOICES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--text-tokens", type=int, default=48)
    parser.add_argument("--codes", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one-thread-below-frames", type=int, default=ChunkSchedule.one_thread_below_frames)
    parser.add_argument("--family", default="qwen2_5", choices=["qwen2_5", "qwen3"])
    parser.add_argument("--frames", type=int, default=100, help="qwen3: codec frames (80 ms each) of the reply")
    args = parser.parse_args()
    if args.family == "qwen3":
        from bench.ttfa_qwen3 import print_run

        print_run(args)
        return
    schedule = ChunkSchedule(one_thread_below_frames=args.one_thread_below_frames)

    from transformers import Qwen2_5OmniForConditionalGeneration, Qwen2_5OmniProcessor

    path = cached_checkpoint(args.preset)
    loaded = load_model(path, dtype=llm_dtype(args.device), device=args.device, audio_output=True)
    reference = load_reference(Qwen2_5OmniForConditionalGeneration, path, args.device, with_codec=True)
    processor = Qwen2_5OmniProcessor.from_pretrained(path)
    workdir = Path(tempfile.mkdtemp(prefix="omni-ttfa-"))
    messages = _media(workdir)
    conversation = [{"role": "system", "content": [{"type": "text", "text": AUDIO_SYSTEM_PROMPT}]}] + messages
    prepared = prepare_prompt(loaded.tokenizer, loaded.model.thinker.config, [messages], system_prompt=AUDIO_SYSTEM_PROMPT,
                              pad_token_id=loaded.generation.pad_token_id)
    config = reference.config
    bad = codec_bad_words(config.talker_config.vocab_size, config.token2wav_config.dit_config.num_embeds)

    def reference_run():
        start = time.perf_counter()
        inputs = reference_inputs(processor, [conversation], prepared.items)
        # transformers' generate hands un-prefixed inputs to the talker too, which rejects
        # pixel_values: the thinker_ prefix routes them to the Thinker alone.
        inputs["thinker_pixel_values"] = inputs.pop("pixel_values")
        inputs = {key: value.to(args.device) if hasattr(value, "to") else value for key, value in inputs.items()}
        for key in ("thinker_pixel_values", "input_features"):
            if key in inputs and inputs[key].is_floating_point():
                inputs[key] = inputs[key].to(reference.thinker.dtype)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            text, waveform = reference.generate(
                **inputs, speaker="Chelsie", thinker_max_new_tokens=args.text_tokens, thinker_do_sample=False,
                thinker_eos_token_id=[151645, 151643], talker_do_sample=False, talker_max_new_tokens=args.codes,
                talker_bad_words_ids=bad)
        synchronize(args.device)
        elapsed = time.perf_counter() - start
        return elapsed, text.shape[1] - inputs["input_ids"].shape[1], waveform.numel() // 480

    def omni_run(streaming: bool):
        session = OmniSession(loaded, sampling=SamplingParams(do_sample=False))
        speech = SpeechOptions(voice="Chelsie", streaming=streaming, seed=0, schedule=schedule, talker=TalkerOptions(
            sampling=SamplingParams(do_sample=False, repetition_penalty=1.05), max_codes=args.codes,
            codes_per_text_token=None))
        start = time.perf_counter()
        first_audio = None
        for event in session.stream(messages, return_audio=True, max_new_tokens=args.text_tokens, speech=speech):
            if isinstance(event, AudioChunk) and first_audio is None:
                first_audio = time.perf_counter() - start
            if isinstance(event, ReplyDone):
                done = event
        total = time.perf_counter() - start
        return first_audio, total, done.usage.text_tokens, done.usage.codec_tokens

    reset_peak_memory(args.device)
    reference_runs, streaming_runs, whole_runs = take_turns(
        [reference_run, lambda: omni_run(True), lambda: omni_run(False)], args.repeats)
    lengths = {"reference": reference_runs[0][1:], "omni": streaming_runs[0][2:], "omni_whole": whole_runs[0][2:]}
    if len({tuple(v) for v in lengths.values()}) != 1:
        raise SystemExit(f"the runs produced different lengths (text tokens, codes): {lengths}")

    reference_s = statistics.median(r[0] for r in reference_runs)
    ttfa_s = statistics.median(r[0] for r in streaming_runs)
    streaming_s = statistics.median(r[1] for r in streaming_runs)
    whole_s = statistics.median(r[1] for r in whole_runs)
    whole_ttfa_s = statistics.median(r[0] for r in whole_runs)
    figures = {
        **size_fields(args.preset, args.device),
        "cpu": cpu_name(),
        "one_thread_below_frames": schedule.one_thread_below_frames,
        "text_tokens": lengths["omni"][0],
        "codes": lengths["omni"][1],
        "audio_s": round(lengths["omni"][1] * 480 / 24000, 3),
        "threads": torch.get_num_threads(),
        "reference_time_to_audio_s": round(reference_s, 3),
        "omni_ttfa_s": round(ttfa_s, 3),
        "omni_total_s": round(streaming_s, 3),
        "omni_non_streaming_total_s": round(whole_s, 3),
        "omni_non_streaming_ttfa_s": round(whole_ttfa_s, 3),
        "ttfa_ratio": round(ttfa_s / reference_s, 4),
        "total_ratio": round(streaming_s / reference_s, 3),
        "streaming_overhead": round(streaming_s / whole_s, 3),
        "peak_device_memory_gib": peak_memory_gib(args.device),
    }
    if "note" in figures:
        print(f"note: {figures['note']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
