"""The `omni` command line."""

from __future__ import annotations

import argparse
import sys

from omni.errors import OmniError


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="checkpoint directory or hub id (e.g. Qwen/Qwen2.5-Omni-7B)")
    parser.add_argument("--dtype", default="auto", help="auto (as saved), bf16, fp16 or fp32")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=None, help="> 0 samples; 0 is greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)


def _cmd_make_checkpoint(args: argparse.Namespace) -> int:
    from omni.make_checkpoint import make_checkpoint

    path = make_checkpoint(args.directory, preset=args.preset, seed=args.seed)
    print(f"wrote a random-weight {args.preset} Qwen2.5-Omni checkpoint to {path}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from omni.chat import render_chat
    from omni.loading import load_model
    from omni.sampling import SamplingParams
    from omni.thinker.generate import stream_thinker, text_prompt

    loaded = load_model(args.model, dtype=args.dtype, device=args.device, audio_output=False)
    messages = [{"role": "user", "content": args.prompt}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    tokenizer = loaded.tokenizer
    prompt = text_prompt([tokenizer.encode(render_chat(messages))], pad_id=loaded.generation.pad_token_id)
    defaults = loaded.generation
    sampling = SamplingParams(
        do_sample=defaults.do_sample, temperature=defaults.temperature, top_k=defaults.top_k,
        top_p=defaults.top_p, repetition_penalty=defaults.repetition_penalty,
    )
    if args.temperature is not None:
        sampling = sampling.with_overrides(do_sample=args.temperature > 0, temperature=args.temperature)
    sampling = sampling.with_overrides(
        top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed
    )
    detokenizer = tokenizer.detokenizer()
    for step in stream_thinker(
        loaded.model.thinker, prompt, sampling, args.max_new_tokens,
        stop_token_ids=defaults.eos_token_ids, pad_token_id=defaults.pad_token_id,
    ):
        sys.stdout.write(detokenizer.push(int(step.token_ids[0])))
        sys.stdout.flush()
    sys.stdout.write(detokenizer.flush() + "\n")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from omni.eval.data import load_asr, load_vqa
    from omni.eval.runner import format_table, run_eval
    from omni.loading import load_model

    samples = load_asr(args.data) if args.task == "asr" else load_vqa(args.data)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device, audio_output=False)
    out = args.out or f"eval-{args.task}-{__import__('pathlib').Path(args.data).stem}"
    summary = run_eval(
        args.task, loaded, samples, out, batch_size=args.batch_size, limit=args.limit, seed=args.seed,
        max_new_tokens=args.max_new_tokens, progress=not args.no_progress,
    )
    print(format_table(summary))
    print(f"predictions and summary.json in {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omni", description="Streaming multimodal inference for Qwen2.5-Omni")
    commands = parser.add_subparsers(dest="command", required=True)

    make = commands.add_parser("make-checkpoint", help="write a random-weight test checkpoint (needs the dev extra)")
    make.add_argument("directory")
    make.add_argument("--preset", choices=["tiny", "small"], default="tiny")
    make.add_argument("--seed", type=int, default=0)
    make.set_defaults(handler=_cmd_make_checkpoint)

    run = commands.add_parser("run", help="answer one prompt, streaming the reply")
    _add_model_options(run)
    run.add_argument("--prompt", required=True)
    run.add_argument("--system", default=None, help="system prompt")
    _add_sampling_options(run)
    run.set_defaults(handler=_cmd_run)

    evaluate = commands.add_parser("eval", help="speech recognition (asr) or visual question answering (vqa) scores")
    evaluate.add_argument("task", choices=["asr", "vqa"])
    _add_model_options(evaluate)
    evaluate.add_argument("--data", required=True, help="JSONL manifest (or a LibriSpeech-style directory for asr)")
    evaluate.add_argument("--out", default=None, help="output directory (predictions.jsonl, summary.json); rerun to resume")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N samples")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--max-new-tokens", type=int, default=128)
    evaluate.add_argument("--no-progress", action="store_true")
    evaluate.set_defaults(handler=_cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except OmniError as exc:
        print(f"omni: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
