"""`omni serve MODEL ...`: the arguments, and loading the model and running uvicorn."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omni.encoders.limits import MediaLimits
from omni.errors import InputError

GIB = 1024**3

STATIC_MAX_CONCURRENT = 4  # without a model to measure (tests, `config_from_args(args)`)
STATIC_MAX_QUEUE = 32
DEFAULT_MAX_VIDEO_SECONDS = 600.0  # 10 min: 768 frames at 2 fps cover 384 s; see the README
EXTRA_CONNECTIONS = 8  # beyond running + waiting requests: /health, /stats, requests being parsed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="checkpoint directory or hub id")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dtype", default="auto", help="auto (as saved), bf16, fp16 or fp32")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--quantize", default=None, metavar="MODE",
                        help="int8 or int4 / int4:GROUP: the Thinker's decoder linears, quantized while loading")
    parser.add_argument("--offload", default=None, choices=["encoders", "talker", "all"],
                        help="encoders, talker or all: keep the vision/audio towers, the Talker + codec, or both in "
                             "host memory (pinned) and move them to the device only while they run (no effect on cpu)")
    parser.add_argument("--served-model-name", default=None, help="the model id clients use (default: the checkpoint "
                                                                   "directory's name)")
    parser.add_argument("--text-only", action="store_true", help="load without the talker/token2wav (no audio out)")
    parser.add_argument("--max-concurrent", type=int, default=None,
                        help="generations running at once (default: what the free memory holds, 1 to 8)")
    parser.add_argument("--max-queue", type=int, default=None,
                        help="requests waiting for a slot; more get 429 (default: what 25%% of free memory holds, "
                             "at most 32)")
    parser.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body (413 above)")
    parser.add_argument("--max-tokens-limit", type=int, default=8192, help="largest max_tokens a request may ask")
    parser.add_argument("--default-max-tokens", type=int, default=512, help="max_tokens when a request gives none")
    parser.add_argument("--max-media-items", type=int, default=16, help="images, audio clips and videos per request")
    parser.add_argument("--media-root", default=None, help="serve local media paths / file:// URLs under DIR only "
                                                            "(default: local paths are refused)")
    parser.add_argument("--allow-remote-media", action="store_true", help="fetch http(s) media URLs")
    parser.add_argument("--allow-private-media-urls", action="store_true",
                        help="let remote media URLs reach loopback/private addresses (off: public hosts only)")
    parser.add_argument("--remote-timeout-s", type=float, default=10.0)
    parser.add_argument("--max-remote-mb", type=float, default=64.0)
    parser.add_argument("--max-audio-seconds", type=float, default=300.0, help="longest audio clip accepted")
    parser.add_argument("--max-video-seconds", type=float, default=DEFAULT_MAX_VIDEO_SECONDS,
                        help="longest video accepted (bounds its decoding time)")
    parser.add_argument("--max-video-total-pixels", type=int, default=None,
                        help="a video's frames after resizing, all together (default: what the model's context "
                             "can hold, at most qwen-omni-utils' budget)")
    parser.add_argument("--max-image-source-pixels", type=int, default=None, help="largest decoded image accepted")
    parser.add_argument("--max-decode-seconds", type=float, default=MediaLimits.max_decode_seconds,
                        help="wall-clock budget for reading and decoding one request's media")
    parser.add_argument("--scheduler", choices=["engine", "threads"], default="engine",
                        help="engine: one loop batches every request's steps (default); threads: each request runs "
                             "alone in its own thread (the old path, kept for comparison)")
    parser.add_argument("--max-batch", type=int, default=16, help="replies the engine decodes at once; more wait")
    parser.add_argument("--kv-gb", type=float, default=None,
                        help="cache memory (GiB) the engine's live replies may reserve (default: 40%% of the memory "
                             "free after loading, on the GPU with --device cuda)")
    parser.add_argument("--cache-gb", type=float, default=1.0,
                        help="prefix cache (GiB): conversations kept so the next turn of a client that resends the "
                             "whole history prefills only the new part (0: off)")
    parser.add_argument("--prefill-chunk", type=int, default=512,
                        help="prompt tokens the engine reads per step: a long prompt never stalls others' audio more")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for model work (default: every core this process may use); give two "
                             "processes on one machine disjoint halves, see the README")
    parser.add_argument("--realtime-max-sessions", type=int, default=8,
                        help="Realtime API WebSocket sessions open at once (/v1/realtime); each response also takes a "
                             "generation slot like an HTTP request")
    parser.add_argument("--realtime-max-session-s", type=float, default=1800.0,
                        help="longest realtime session (seconds); it then ends with an error event and close 1000")
    parser.add_argument("--realtime-idle-timeout-s", type=float, default=300.0,
                        help="a realtime session with no client event and no response playing this long is closed")
    parser.add_argument("--realtime-max-input-s", type=float, default=60.0,
                        help="input audio a realtime session may buffer before a commit (with VAD: the longest turn)")
    replicas = parser.add_argument_group("replicas on Ray Serve (pip install 'omni[scale]'; see omni.server.replicas)")
    replicas.add_argument("--replicas", type=int, default=None, help="serve N replicas behind Ray's HTTP proxy")
    replicas.add_argument("--autoscale", default=None, metavar="MIN:MAX",
                          help="replicas scaled between MIN and MAX on ongoing requests")
    replicas.add_argument("--replica-cpus", type=float, default=1.0,
                          help="CPUs per replica (its torch threads: this, rounded down, at least 1)")
    replicas.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs per replica (fractions share one)")
    replicas.add_argument("--replica-pin-cores", action="store_true",
                          help="pin each replica to its own --replica-cpus cores of its node (by its rank on the "
                               "node), so that replicas on one node never share a core; Ray's CPU count alone "
                               "limits nothing (see omni.server.replicas)")
    replicas.add_argument("--ray-address", default=None,
                          help="join this Ray cluster (e.g. auto, ray://head:10001); default: start a local one")
    replicas.add_argument("--drain-s", type=float, default=120.0,
                          help="a stopping replica lets running replies finish for up to this long")
    parser.add_argument("--log-level", default="info")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse counts out of range before anything is loaded (InputError naming the option)."""
    for name in ("max_concurrent", "max_queue", "max_media_items", "max_tokens_limit", "default_max_tokens",
                 "max_batch", "prefill_chunk", "threads"):
        value = getattr(args, name)
        if value is not None and value < (1 if name != "max_queue" else 0):
            raise InputError(f"--{name.replace('_', '-')} must be >= {1 if name != 'max_queue' else 0}, got {value}")
    for name in ("realtime_max_sessions", "realtime_max_session_s", "realtime_idle_timeout_s", "realtime_max_input_s"):
        value = getattr(args, name, None)
        if value is not None and not value > 0:
            raise InputError(f"--{name.replace('_', '-')} must be > 0, got {value}")
    for name in ("kv_gb", "cache_gb"):
        value = getattr(args, name)
        if value is not None and (value != value or value < (0 if name == "cache_gb" else 0.001)):
            raise InputError(f"--{name.replace('_', '-')} must be a positive number of GiB, got {value}")


def config_from_args(args: argparse.Namespace, model_path: Path | None = None, loaded=None):
    """The server's config. With the loaded model, what the arguments leave open is derived from it
    and from the machine's free memory (see omni.server.memory); without it, the static defaults."""
    from omni.encoders.limits import MIB, MediaLimits
    from omni.server.app import ServerConfig
    from omni.server.memory import video_pixels_for_context

    check_arguments(args)
    overrides = {}
    if args.max_image_source_pixels is not None:
        overrides["max_image_source_pixels"] = args.max_image_source_pixels
    if args.max_video_total_pixels is not None:
        overrides["max_video_total_pixels"] = args.max_video_total_pixels
    elif loaded is not None:
        context = loaded.config.thinker.text.max_position_embeddings
        overrides["max_video_total_pixels"] = min(MediaLimits.max_video_total_pixels, video_pixels_for_context(context))
    limits = MediaLimits(
        allow_remote=args.allow_remote_media, remote_timeout_s=args.remote_timeout_s,
        max_remote_bytes=int(args.max_remote_mb * MIB),
        media_root=Path(args.media_root).resolve() if args.media_root else None,
        max_audio_seconds=args.max_audio_seconds, max_video_seconds=args.max_video_seconds,
        max_decode_seconds=args.max_decode_seconds, **overrides,
    )
    name = args.served_model_name or (model_path or Path(str(args.model))).name
    max_body_bytes = int(args.max_body_mb * MIB)
    max_concurrent, max_queue = args.max_concurrent, args.max_queue
    engine = args.scheduler == "engine"
    if engine and max_concurrent is None:
        # the engine admits by cache memory itself: requests in flight are bounded by their host memory
        max_concurrent = _engine_slots(loaded, max_body_bytes, limits, args.max_media_items, args.max_batch)
    if loaded is not None and (max_concurrent is None or max_queue is None):
        derived = _derived_slots(loaded, max_body_bytes, limits, args.max_media_items)
        max_concurrent = derived[0] if max_concurrent is None else max_concurrent
        max_queue = derived[1] if max_queue is None else max_queue
    engine_options = None
    if engine:
        from omni.engine import EngineOptions

        kv_gb = args.kv_gb
        if kv_gb is None and loaded is not None:
            kv_gb = _derived_kv_gb(loaded)
        engine_options = EngineOptions(
            max_batch=args.max_batch, kv_budget_bytes=int(kv_gb * GIB) if kv_gb else None,
            prefill_chunk=args.prefill_chunk, threads=args.threads, prefix_cache_bytes=int(args.cache_gb * GIB),
        )
    from omni.server.realtime import RealtimeLimits

    realtime = RealtimeLimits(
        max_connections=getattr(args, "realtime_max_sessions", RealtimeLimits.max_connections),
        max_session_s=getattr(args, "realtime_max_session_s", RealtimeLimits.max_session_s),
        idle_timeout_s=getattr(args, "realtime_idle_timeout_s", RealtimeLimits.idle_timeout_s),
        max_input_audio_s=getattr(args, "realtime_max_input_s", RealtimeLimits.max_input_audio_s),
    )
    return ServerConfig(
        model_name=name, max_concurrent=max_concurrent or STATIC_MAX_CONCURRENT,
        max_queue=STATIC_MAX_QUEUE if max_queue is None else max_queue,
        max_body_bytes=max_body_bytes, media_limits=limits,
        allow_private_remote=args.allow_private_media_urls, default_max_tokens=args.default_max_tokens,
        max_tokens_limit=args.max_tokens_limit, max_media_items=args.max_media_items, engine=engine_options,
        realtime=realtime,
    )


def _engine_slots(loaded, max_body_bytes: int, limits, max_media_items: int, max_batch: int) -> int:
    from omni.server.memory import engine_request_slots, host_free_bytes, plan_for

    host = host_free_bytes() if loaded is not None else None
    if host is None:
        return max_batch
    return engine_request_slots(plan_for(loaded, max_body_bytes, limits, max_media_items), host, max_batch)


def _derived_kv_gb(loaded) -> float | None:
    """40% of the memory free after loading (the GPU's with a CUDA model), for live replies' caches."""
    from omni.server.memory import device_free_bytes, host_free_bytes

    free = device_free_bytes(loaded.device) if loaded.device.type != "cpu" else host_free_bytes()
    return 0.4 * free / GIB if free else None


def _derived_slots(loaded, max_body_bytes: int, limits, max_media_items: int) -> tuple[int, int]:
    from omni.server.memory import derived_limits, device_free_bytes, host_free_bytes, plan_for

    host = host_free_bytes()
    if host is None:
        return STATIC_MAX_CONCURRENT, STATIC_MAX_QUEUE
    plan = plan_for(loaded, max_body_bytes, limits, max_media_items)
    return derived_limits(plan, host, device_free_bytes(loaded.device))


def memory_report(loaded, config) -> list[str]:
    """What `omni serve` prints about memory at startup: the per-request costs, and warnings."""
    from omni.server.memory import device_free_bytes, fit_warnings, host_free_bytes, plan_for

    plan = plan_for(loaded, config.max_body_bytes, config.media_limits, config.max_media_items)
    host, device = host_free_bytes(), device_free_bytes(loaded.device)
    lines = [f"memory {plan.describe()}; {config.max_concurrent} running, {config.max_queue} waiting"]
    return lines + [f"warning: {w}" for w in fit_warnings(plan, config.max_concurrent, config.max_queue, host, device)]


def build_server(args: argparse.Namespace):
    """Load the model and build the app for `args`: (app, config, loaded). One process's server, or
    one Ray Serve replica's (omni.server.replicas)."""
    from omni.loading import load_model
    from omni.server.app import create_app

    check_arguments(args)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device, audio_output=False if args.text_only else None,
                        quantize=args.quantize, offload=getattr(args, "offload", None))
    from omni.warmup import warm_up

    print(f"omni serve: warmed up in {warm_up(loaded):.1f}s", file=sys.stderr)
    config = config_from_args(args, loaded.path, loaded)
    for line in memory_report(loaded, config):
        print(f"omni serve: {line}", file=sys.stderr)
    app = create_app(loaded, config)
    return app, config, loaded


def run(args: argparse.Namespace) -> int:
    import uvicorn

    if args.media_root and not Path(args.media_root).is_dir():
        print(f"omni serve: --media-root {args.media_root!r} is not a directory", file=sys.stderr)
        return 2
    check_arguments(args)  # before the model loads: a typo must not cost a 7B load to report
    from omni.server.replicas import plan_from_args

    plan = plan_from_args(args)
    if plan is not None:
        from omni.server.replicas import run_replicas

        return run_replicas(args, plan)
    app, config, loaded = build_server(args)
    print(f"omni serve: {config.model_name} on http://{args.host}:{args.port}/v1 (audio output: "
          f"{'yes, voices ' + ', '.join(loaded.voices) if loaded.audio_output else 'no'})", file=sys.stderr)
    # Connections beyond running + waiting + a few for /health and /stats (and the realtime sessions,
    # which stay open) get 503 from uvicorn before their bodies are read: the bodies held in memory are
    # bounded, not only the generations. One more realtime connection than allowed is let in to be told so.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                limit_concurrency=config.max_concurrent + config.max_queue + EXTRA_CONNECTIONS
                + config.realtime.max_connections + 1)
    return 0
