"""`omni serve MODEL ...`: the arguments, and loading the model and running uvicorn."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="checkpoint directory or hub id")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dtype", default="auto", help="auto (as saved), bf16, fp16 or fp32")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--served-model-name", default=None, help="the model id clients use (default: the checkpoint "
                                                                   "directory's name)")
    parser.add_argument("--text-only", action="store_true", help="load without the talker/token2wav (no audio out)")
    parser.add_argument("--max-concurrent", type=int, default=4, help="generations running at once")
    parser.add_argument("--max-queue", type=int, default=32, help="requests waiting for a slot; more get 429")
    parser.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body (413 above)")
    parser.add_argument("--max-tokens-limit", type=int, default=8192, help="largest max_tokens a request may ask")
    parser.add_argument("--default-max-tokens", type=int, default=512, help="max_tokens when a request gives none")
    parser.add_argument("--media-root", default=None, help="serve local media paths / file:// URLs under DIR only "
                                                            "(default: local paths are refused)")
    parser.add_argument("--allow-remote-media", action="store_true", help="fetch http(s) media URLs")
    parser.add_argument("--allow-private-media-urls", action="store_true",
                        help="let remote media URLs reach loopback/private addresses (off: public hosts only)")
    parser.add_argument("--remote-timeout-s", type=float, default=10.0)
    parser.add_argument("--max-remote-mb", type=float, default=64.0)
    parser.add_argument("--max-audio-seconds", type=float, default=300.0, help="longest audio clip accepted")
    parser.add_argument("--max-video-seconds", type=float, default=3600.0, help="longest video accepted")
    parser.add_argument("--max-image-source-pixels", type=int, default=None, help="largest decoded image accepted")
    parser.add_argument("--log-level", default="info")


def config_from_args(args: argparse.Namespace, model_path: Path | None = None):
    from omni.encoders.limits import MIB, MediaLimits
    from omni.server.app import ServerConfig

    overrides = {}
    if args.max_image_source_pixels is not None:
        overrides["max_image_source_pixels"] = args.max_image_source_pixels
    limits = MediaLimits(
        allow_remote=args.allow_remote_media, remote_timeout_s=args.remote_timeout_s,
        max_remote_bytes=int(args.max_remote_mb * MIB),
        media_root=Path(args.media_root).resolve() if args.media_root else None,
        max_audio_seconds=args.max_audio_seconds, max_video_seconds=args.max_video_seconds, **overrides,
    )
    name = args.served_model_name or (model_path or Path(str(args.model))).name
    return ServerConfig(
        model_name=name, max_concurrent=args.max_concurrent, max_queue=args.max_queue,
        max_body_bytes=int(args.max_body_mb * MIB), media_limits=limits,
        allow_private_remote=args.allow_private_media_urls, default_max_tokens=args.default_max_tokens,
        max_tokens_limit=args.max_tokens_limit,
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from omni.loading import load_model
    from omni.server.app import create_app

    if args.media_root and not Path(args.media_root).is_dir():
        print(f"omni serve: --media-root {args.media_root!r} is not a directory", file=sys.stderr)
        return 2
    loaded = load_model(args.model, dtype=args.dtype, device=args.device, audio_output=False if args.text_only else None)
    from omni.warmup import warm_up

    print(f"omni serve: warmed up in {warm_up(loaded):.1f}s", file=sys.stderr)
    config = config_from_args(args, loaded.path)
    app = create_app(loaded, config)
    print(f"omni serve: {config.model_name} on http://{args.host}:{args.port}/v1 (audio output: "
          f"{'yes, voices ' + ', '.join(loaded.voices) if loaded.audio_output else 'no'})", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
