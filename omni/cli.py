"""The `omni` command line."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import TYPE_CHECKING

from omni.errors import AudioOutputUnavailable, InputError, OmniError

if TYPE_CHECKING:
    from omni.audio_io import PcmPlayer


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="checkpoint directory or hub id (e.g. Qwen/Qwen2.5-Omni-7B)")
    parser.add_argument("--dtype", default="auto", help="auto (as saved), bf16, fp16 or fp32")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--quantize", default=None, metavar="MODE",
                        help="int8 (per output channel) or int4 / int4:GROUP (group-wise, 128 by default): the "
                             "Thinker's decoder linears, quantized while loading (GPTQ/AWQ checkpoints need none)")
    parser.add_argument("--offload", default=None, choices=["encoders", "talker", "all"],
                        help="encoders, talker or all: keep the vision/audio towers, the Talker + codec, or both in "
                             "host memory (pinned) and move them to the device only while they run (no effect on cpu)")


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=None, help="> 0 samples; 0 is greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)


def _add_conversation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--system", default=None, help="system prompt (default: the one Qwen2.5-Omni speaks under)")
    parser.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    parser.add_argument("--audio", action="append", default=[], help="audio file (repeatable)")
    parser.add_argument("--video", action="append", default=[], help="video file (repeatable)")
    parser.add_argument("--use-audio-in-video", action="store_true", help="also listen to the videos' sound")
    parser.add_argument("--voice", default=None, help="voice of the spoken reply (e.g. Chelsie, Ethan)")
    parser.add_argument("--text-only", action="store_true",
                        help="reply in text only (the Talker never runs); the default without --out/--save-audio/--play")
    parser.add_argument("--max-speech-seconds", type=float, default=None,
                        help="stop the speech after this many seconds (default: the Talker's own end, at most 82 s)")
    _add_sampling_options(parser)


def _cmd_make_checkpoint(args: argparse.Namespace) -> int:
    from omni.tools.make_checkpoint import make_checkpoint

    if args.family == "qwen3":
        return _make_qwen3_checkpoint(args)
    if not args.quantize and (args.group_size is not None or args.desc_act):
        raise InputError("--group-size and --desc-act go with --quantize gptq|awq")
    if args.quantize == "awq" and args.desc_act:
        raise InputError("--desc-act (act-order) is a GPTQ option; AWQ files have no g_idx")
    path = make_checkpoint(args.directory, preset=args.preset, seed=args.seed, force=args.force, device=args.device,
                           max_shard_size=args.max_shard_size)
    print(f"wrote a random-weight {args.preset} Qwen2.5-Omni checkpoint to {path}")
    if args.quantize:
        from omni.tools.quantized_checkpoint import quantize_checkpoint

        section = quantize_checkpoint(path, args.quantize, group_size=args.group_size, desc_act=args.desc_act,
                                      seed=args.seed)
        print(f"rewrote its Thinker decoder linears in the {args.quantize.upper()} layout: {json.dumps(section)}")
    return 0


def _make_qwen3_checkpoint(args: argparse.Namespace) -> int:
    from omni.tools.qwen3_checkpoint import make_qwen3_checkpoint
    from omni.tools.qwen3_presets import PRESETS as QWEN3_PRESETS

    if args.preset not in QWEN3_PRESETS:
        raise InputError(f"--family qwen3 has the presets {', '.join(QWEN3_PRESETS)}, not {args.preset!r}")
    unsupported = [flag for flag, value in (("--device", args.device), ("--max-shard-size", args.max_shard_size),
                                            ("--quantize", args.quantize)) if value]
    if unsupported:
        raise InputError(f"{', '.join(unsupported)} go with --family qwen2_5; the qwen3 test checkpoints are "
                         "built on the CPU in fp32")
    path = make_qwen3_checkpoint(args.directory, preset=args.preset, seed=args.seed, force=args.force)
    print(f"wrote a random-weight {args.preset} Qwen3-Omni checkpoint to {path}")
    return 0


def _sampling_overrides(args: argparse.Namespace) -> dict:
    overrides = {"top_k": args.top_k, "top_p": args.top_p, "repetition_penalty": args.repetition_penalty, "seed": args.seed}
    if args.temperature is not None:
        overrides.update(do_sample=args.temperature > 0, temperature=args.temperature)
    return {key: value for key, value in overrides.items() if value is not None}


def _user_message(text: str, images=(), audios=(), videos=()) -> dict:
    content = [{"type": "image", "image": path} for path in images]
    content += [{"type": "audio", "audio": path} for path in audios]
    content += [{"type": "video", "video": path} for path in videos]
    if text:
        content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def _speech_plan(args: argparse.Namespace, file_sink: str | None) -> tuple[bool, PcmPlayer | None]:
    """Whether replies are spoken, and the player that plays them. Speech nobody hears is never
    made: without a file to write or a player to play it, the Talker is not even loaded."""
    from omni.audio_io import find_pcm_player, no_player_message

    file_flag = "--out" if args.command == "run" else "--save-audio"
    if args.text_only and (file_sink or args.play):
        raise InputError(f"--text-only contradicts {file_flag if file_sink else '--play'}: "
                         "keep --text-only for a text reply, or drop it to hear or save the speech")
    player = None
    if args.play:
        player = find_pcm_player()
        if player is None:
            after = (f"the speech still goes to {file_flag}" if file_sink
                     else f"replying in text only ({file_flag} would save the speech instead)")
            print(f"omni: {no_player_message()}; {after}", file=sys.stderr)
    speak = bool(file_sink) or player is not None
    unused = [flag for flag, value in (("--voice", args.voice), ("--max-speech-seconds", args.max_speech_seconds))
              if value is not None]
    if not speak and unused:
        verb = "has" if len(unused) == 1 else "have"
        print(f"omni: note: {' and '.join(unused)} {verb} no effect without {file_flag} or --play (the reply is "
              "text only)", file=sys.stderr)
    return speak, player


def _session(args: argparse.Namespace, speak: bool):
    from omni.loading import load_model
    from omni.session import OmniSession

    options = {"max_new_tokens": args.max_new_tokens, "use_audio_in_video": args.use_audio_in_video}
    if args.system is not None:
        options["system_prompt"] = args.system
    if speak:
        options["voice"] = args.voice  # a wrong name fails now, not after the first prompt
    try:
        loaded = load_model(args.model, dtype=args.dtype, device=args.device, audio_output=speak,
                            quantize=args.quantize, offload=args.offload)
        return OmniSession(loaded, **options)
    except AudioOutputUnavailable as exc:
        raise AudioOutputUnavailable(f"{exc} (here: leave out --out/--save-audio/--play for a text reply)") from None


class _CtrlCStops:
    """While active, Ctrl-C calls `stop` instead of raising: the reply ends cleanly at its next step
    and stays in the conversation. A second Ctrl-C raises KeyboardInterrupt, for a stop that hangs
    (a long media encode checks for cancellation only when it is done)."""

    def __init__(self, stop) -> None:
        self._stop = stop
        self._pressed = False
        self._previous = None
        self._installed = False

    def _handle(self, signum, frame) -> None:
        if self._pressed:
            raise KeyboardInterrupt
        self._pressed = True
        self._stop()

    def __enter__(self) -> _CtrlCStops:
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


def _speak_reply(session, message, args: argparse.Namespace, speak: bool, player: PcmPlayer | None = None,
                 out_path=None, on_done=None) -> bool:
    """Stream one reply to the terminal; its speech (when `speak`) plays through `player` as it
    arrives and goes to `out_path`; `on_done` gets its ReplyDone. Ctrl-C stops the reply; returns
    True when it was stopped."""
    from omni.audio_io import StreamingPlayback
    from omni.events import AudioChunk, ReplyDone, TextDelta

    speech = None
    if speak and args.max_speech_seconds is not None:
        from omni.speech import SpeechOptions, codec_timing
        from omni.talker.generate import TalkerOptions

        # codes per second: 50 for Qwen2.5-Omni's codec tokens, 12.5 for Qwen3-Omni's frames
        timing = codec_timing(session.model)
        codes = max(1, int(args.max_speech_seconds * timing.sample_rate_hz / timing.samples_per_code))
        speech = SpeechOptions(talker=TalkerOptions(max_codes=codes))
    stop = threading.Event()
    stream = playback = None
    chunks = []
    cancelled = False

    def request_stop() -> None:
        stop.set()
        if stream is not None:
            stream.cancel()

    with _CtrlCStops(request_stop):
        try:
            stream = session.stream(message, return_audio=speak, voice=args.voice, speech=speech,
                                    **_sampling_overrides(args))
            if stop.is_set():  # Ctrl-C while the media were read: stop before the first step
                stream.cancel()
            with stream:
                for event in stream:
                    if isinstance(event, TextDelta):
                        sys.stdout.write(event.text)
                        sys.stdout.flush()
                    elif isinstance(event, AudioChunk):
                        if out_path is not None:
                            chunks.append(event)
                        if player is not None and playback is None and not stop.is_set():
                            try:
                                playback = StreamingPlayback(player, event.sample_rate_hz)
                            except OSError as exc:  # found on PATH but would not start: the text goes on
                                print(f"\nomni: cannot start {player.executable}: {exc}", file=sys.stderr)
                                player = None
                        if playback is not None and not stop.is_set():
                            playback.feed(event.pcm16())
                    elif isinstance(event, ReplyDone):
                        cancelled = event.finish_reason == "cancelled"
                        if on_done is not None:
                            on_done(event)
            sys.stdout.write(" [stopped]\n" if cancelled else "\n")
            sys.stdout.flush()
            if chunks:
                _save_speech(chunks, out_path)
            if playback is not None:
                status = playback.finish(stop)
                if stop.is_set() and not cancelled:
                    print("[audio stopped]", file=sys.stderr)
                elif status:
                    print(f"omni: {playback.player.name} exited with status {status} (see its message above)",
                          file=sys.stderr)
        except KeyboardInterrupt:  # the second Ctrl-C
            stop.set()
            if stream is not None:
                stream.close()  # ends the turn, so the session takes the next one
            sys.stdout.write(" [stopped]\n")
            sys.stdout.flush()
        finally:
            if playback is not None:
                playback.stop()  # nothing left to do when it finished
    return stop.is_set()


def _save_speech(chunks, out_path) -> None:
    import numpy as np

    from omni.audio_io import write_wav

    write_wav(out_path, np.concatenate([c.samples for c in chunks]), chunks[0].sample_rate_hz)
    print(f"[audio: {sum(c.duration_s for c in chunks):.1f} s -> {out_path}]", file=sys.stderr)


def _cmd_run(args: argparse.Namespace) -> int:
    speak, player = _speech_plan(args, args.out)
    session = _session(args, speak)
    message = _user_message(args.prompt, args.image, args.audio, args.video)
    replies = []
    stopped = _speak_reply(session, [message], args, speak, player, out_path=args.out, on_done=replies.append)
    if args.stats:
        _print_stats(session.model, replies[-1] if replies else None)
    return 130 if stopped else 0  # the shell's code for an interrupted command


def _print_stats(loaded, done=None) -> None:
    """Weight memory, the process's peaks and the reply's peak per stage, on stderr after the reply."""
    from omni.memory_stats import STAGES, process_peaks
    from omni.quant.footprint import MIB, weight_bytes
    from omni.quant.loader import decoder_linear_names

    # Qwen3-Omni's decoder feed-forwards are MoE blocks, not the linears omni.quant counts
    linears = [] if loaded.family == "qwen3_omni_moe" else decoder_linear_names(loaded.config.thinker.text.num_layers)
    weights = weight_bytes(loaded.model, linears)
    mode = loaded.quantization or str(loaded.dtype).removeprefix("torch.")
    peaks = process_peaks(loaded.device)
    parts = [f"weights {weights.total / MIB:.0f} MiB ({mode})",
             f"peak host {peaks.host_bytes / MIB:.0f} MiB resident (mapped checkpoint pages included)"]
    if peaks.device_bytes is not None:
        parts.append(f"peak {loaded.device} {peaks.device_bytes / MIB:.0f} MiB allocated")
    print(f"[stats: {'; '.join(parts)}]", file=sys.stderr)
    timings = done.timings if done is not None else None
    if timings is not None and timings.stage_peak_bytes:
        figures = sorted(timings.stage_peak_bytes.items(), key=lambda item: STAGES.index(item[0]))
        stages = ", ".join(f"{stage} {size / MIB:.0f} MiB{'*' if stage in timings.stage_peak_shared else ''}"
                           for stage, size in figures)
        shared = "; *: ran beside another stage, whose memory it includes" if timings.stage_peak_shared else ""
        print(f"[stats: peak per stage ({timings.memory_measure}): {stages}{shared}]", file=sys.stderr)
    if loaded.offload is not None:
        print(f"[stats: {loaded.offload.describe()}]", file=sys.stderr)


def _cmd_chat(args: argparse.Namespace) -> int:
    """Interactive chat: each line is a turn; `/image PATH`, `/audio PATH`, `/video PATH` attach media
    to the next turn, `/reset` starts over, `/quit` (or Ctrl-D) leaves. Ctrl-C stops a reply (or
    clears the line being typed), and the chat goes on."""
    from pathlib import Path

    speak, player = _speech_plan(args, args.save_audio)
    session = _session(args, speak)
    attached = {"image": list(args.image), "audio": list(args.audio), "video": list(args.video)}
    save_dir = Path(args.save_audio) if args.save_audio else None
    if save_dir:
        save_dir.mkdir(parents=True, exist_ok=True)
    turn = 0
    print("omni chat — /image, /audio, /video PATH attach media; /reset; /quit", file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            return 0
        except KeyboardInterrupt:  # as in Python's own prompt: drop the line, ask again
            print()
            print("[/quit or Ctrl-D leaves]", file=sys.stderr)
            continue
        if not line:
            continue
        command, _, rest = line.partition(" ")
        if command == "/quit":
            return 0
        if command == "/reset":
            session.reset()
            print("[conversation reset]", file=sys.stderr)
            continue
        if command in ("/image", "/audio", "/video"):
            attached[command[1:]].append(rest.strip())
            continue
        message = _user_message(line, attached["image"], attached["audio"], attached["video"])
        attached = {"image": [], "audio": [], "video": []}
        turn += 1
        try:
            sys.stdout.write("omni> ")
            _speak_reply(session, [message], args, speak, player,
                         out_path=(save_dir / f"reply-{turn:03d}.wav") if save_dir else None)
        except OmniError as exc:
            print(f"omni: error: {exc}", file=sys.stderr)
        except KeyboardInterrupt:  # a Ctrl-C before the reply had started
            sys.stdout.write(" [stopped]\n")


def _cmd_eval(args: argparse.Namespace) -> int:
    from omni.eval.data import load_asr, load_vqa
    from omni.eval.runner import format_table, run_eval
    from omni.loading import load_model

    samples = load_asr(args.data) if args.task == "asr" else load_vqa(args.data)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device, audio_output=False, quantize=args.quantize,
                        offload=args.offload)
    out = args.out or f"eval-{args.task}-{__import__('pathlib').Path(args.data).stem}"
    summary = run_eval(
        args.task, loaded, samples, out, batch_size=args.batch_size, limit=args.limit, seed=args.seed,
        max_new_tokens=args.max_new_tokens, progress=not args.no_progress, restart=args.restart,
    )
    print(format_table(summary))
    print(f"predictions and summary.json in {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from omni.demo.app import serve
    except ImportError as exc:
        raise OmniError(f"`omni demo` needs the demo extra ({exc.name} is missing): pip install -e '.[demo]'") from None

    serve(args.model, host=args.host, port=args.port, share=args.share == "yes", dtype=args.dtype,
          device=args.device, max_new_tokens=args.max_new_tokens, quantize=args.quantize, offload=args.offload)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omni", description="Streaming multimodal inference for Qwen2.5-Omni")
    commands = parser.add_subparsers(dest="command", required=True)

    make = commands.add_parser("make-checkpoint", help="write a random-weight test checkpoint (needs the dev extra)")
    make.add_argument("directory")
    make.add_argument("--family", choices=["qwen2_5", "qwen3"], default="qwen2_5",
                      help="qwen2_5: Qwen2.5-Omni (default); qwen3: Qwen3-Omni-30B-A3B's layout (presets tiny, small)")
    make.add_argument("--preset", choices=["tiny", "small", "3b-wide", "3b", "7b"], default="tiny",
                      help="tiny/small: test sizes; 3b, 7b: the published shapes; 3b-wide: 3B widths, few layers")
    make.add_argument("--device", default=None,
                      help="build the weights there, one submodel at a time, writing shards as they fill "
                           "(e.g. cuda for 7b: the host never holds more than a shard)")
    make.add_argument("--max-shard-size", default=None, help="e.g. 2GB (default: the preset's)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--quantize", choices=["gptq", "awq"], default=None,
                      help="write the Thinker's decoder linears as the published Qwen2.5-Omni-7B-GPTQ-Int4 (GPTQ v1) "
                           "or -AWQ (AWQ GEMM) files hold them: 4 bit, round-to-nearest values")
    make.add_argument("--group-size", type=int, default=None,
                      help="with --quantize: inputs per group (default 128, or the largest of 64/32 the widths allow)")
    make.add_argument("--desc-act", action="store_true", help="with --quantize gptq: act-order (g_idx permuted)")
    make.add_argument("--force", action="store_true",
                      help="replace DIR even when it holds files make-checkpoint did not write")
    make.set_defaults(handler=_cmd_make_checkpoint)

    run = commands.add_parser("run", help="answer one prompt (with optional media), streaming the reply")
    _add_model_options(run)
    run.add_argument("--prompt", required=True)
    _add_conversation_options(run)
    run.add_argument("--out", default=None, help="write the spoken reply to this WAV file")
    run.add_argument("--play", action="store_true",
                     help="play the speech as it is generated (through aplay, paplay, pw-play, ffplay or sox's play)")
    run.add_argument("--stats", action="store_true",
                     help="after the reply, print the weights' memory and the peak host and device memory")
    run.set_defaults(handler=_cmd_run)

    chat = commands.add_parser("chat", help="interactive chat in the terminal")
    _add_model_options(chat)
    _add_conversation_options(chat)
    chat.add_argument("--save-audio", default=None, metavar="DIR", help="write each spoken reply to DIR/reply-NNN.wav")
    chat.add_argument("--play", action="store_true",
                      help="play each reply's speech as it is generated (aplay, paplay, pw-play, ffplay or sox's play)")
    chat.set_defaults(handler=_cmd_chat)

    evaluate = commands.add_parser("eval", help="speech recognition (asr) or visual question answering (vqa) scores")
    evaluate.add_argument("task", choices=["asr", "vqa"])
    _add_model_options(evaluate)
    evaluate.add_argument("--data", required=True, help="JSONL manifest (or a LibriSpeech-style directory for asr)")
    evaluate.add_argument("--out", default=None,
                          help="output directory (predictions.jsonl, summary.json, run.json); rerun to resume")
    evaluate.add_argument("--restart", action="store_true",
                          help="discard the predictions already in --out and start over (e.g. with another model)")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N samples")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--max-new-tokens", type=int, default=128)
    evaluate.add_argument("--no-progress", action="store_true")
    evaluate.set_defaults(handler=_cmd_eval)

    from omni.server import cli as server_cli

    serve = commands.add_parser("serve", help="OpenAI-compatible HTTP server (/v1/chat/completions)")
    server_cli.add_arguments(serve)
    serve.set_defaults(handler=server_cli.run)

    demo = commands.add_parser("demo", help="browser voice/video chat (Gradio) on MODEL (needs the demo extra)")
    _add_model_options(demo)
    demo.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for every one)")
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument("--share", choices=["no", "yes"], default="no", help="also open a public gradio.live link")
    demo.add_argument("--max-new-tokens", type=int, default=256, help="the reply length the settings start at")
    demo.set_defaults(handler=_cmd_demo)
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
