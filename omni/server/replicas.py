"""`omni serve MODEL --replicas N | --autoscale MIN:MAX`: the same server as N replicas on Ray Serve.

Each replica is a Ray actor that loads the model once and serves today's app (chat completions,
the Realtime WebSocket, /stats, /metrics) behind Ray's HTTP proxy, which routes every request to
a replica with room. What each replica is:
- its torch thread pool matches its CPU share (`--replica-cpus`, default 1): replicas sharing
  cores with full pools collapse (two torch processes on two cores slowed a reply 50-fold);
- with `--replica-pin-cores`, it runs on its own cores: Ray's `num_cpus` is bookkeeping, not a limit,
  and a replica with one torch thread still ran on 1.25-1.5 cores here (its engine, encoder and codec
  threads each compute; bench/scale.py sampled /proc), taking them from its neighbours. Pinned, the
  replica of local rank r gets cores r*C .. r*C+C-1 (C = `--replica-cpus`, rounded down, at least 1)
  of those the node lets it use; a replica whose cores the node does not have runs unpinned and says
  so on stderr and in /stats. Ray hands a new replica the smallest free local rank, so a replacement
  takes its predecessor's cores (while a stopping replica still holds its rank, its successor may run
  unpinned for its life);
- Ray's `max_ongoing_requests` is the replica's own admission limit (running replies plus open
  realtime sessions), so Ray routes away from a full replica and queues at the proxy instead of the
  replica answering 429 (omni's own queue behind Ray is a small slack, REPLICA_QUEUE_SLACK);
- graceful shutdown: a replica being stopped (scale-down, `serve deploy` of a new version, Ctrl-C)
  takes no new requests and lets running replies finish, up to `--drain-s`.

State a later request may refer to lives where every replica reads it: spoken replies' transcripts
(an assistant turn cites its audio id) go to one named Ray actor (`SharedTranscripts`), each
replica keeping its own copy as a cache. The prefix cache stays per replica: a conversation whose
next turn lands on another replica misses it and prefills again, which gives the same reply
(tests/omni/server/test_replicas.py). A realtime connection is one request: it stays on its replica.

/stats and /health answer for the whole deployment (`cluster` section: every replica's figures,
gathered with a broadcast); /metrics gives every replica's Prometheus metrics, labelled by replica.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
import time
from typing import Any

TRANSCRIPTS_ACTOR = "omni-transcripts"
NAMESPACE = "omni"
DEPLOYMENT = "omni"
# a replica's own queue behind Ray: Ray keeps at most max_ongoing_requests on it, but a request's
# slot comes back a moment after its response ends, so a few may briefly wait instead of a 429
REPLICA_QUEUE_SLACK = 4


@dataclasses.dataclass(frozen=True)
class ReplicaPlan:
    """How many replicas and what each one gets, from the command line."""

    replicas: int | None  # fixed count; None with autoscaling
    autoscale: tuple[int, int] | None  # (min, max) replicas
    cpus: float
    gpus: float
    max_ongoing_requests: int
    drain_s: float
    pin_cores: bool = False

    @property
    def threads(self) -> int:
        """torch threads per replica: its CPU share, at least one."""
        return max(1, int(self.cpus))

    def deployment_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "name": DEPLOYMENT,
            "ray_actor_options": {"num_cpus": self.cpus, "num_gpus": self.gpus,
                                  "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(self.threads)}}},
            "max_ongoing_requests": self.max_ongoing_requests,
            "graceful_shutdown_timeout_s": self.drain_s,
            "graceful_shutdown_wait_loop_s": 1.0,
            "health_check_period_s": 5.0,
        }
        if self.autoscale is not None:
            low, high = self.autoscale
            # scale on ongoing requests: a replica is "full" at its admission limit, so aim for
            # three quarters of it, leaving room for bursts while a new replica loads
            options["autoscaling_config"] = {
                "min_replicas": low, "max_replicas": high, "initial_replicas": low,
                "target_ongoing_requests": max(1.0, 0.75 * self.max_ongoing_requests),
                "upscale_delay_s": 10.0, "downscale_delay_s": 120.0,
            }
        else:
            options["num_replicas"] = self.replicas
        return options


def plan_from_args(args: argparse.Namespace) -> ReplicaPlan | None:
    """None when neither --replicas nor --autoscale is given (a plain uvicorn process)."""
    from omni.errors import InputError

    if args.replicas is None and args.autoscale is None:
        return None
    if args.replicas is not None and args.autoscale is not None:
        raise InputError("give --replicas N or --autoscale MIN:MAX, not both")
    autoscale = None
    if args.autoscale is not None:
        try:
            low, high = (int(part) for part in args.autoscale.split(":"))
        except ValueError:
            raise InputError(f"--autoscale must be MIN:MAX replicas, e.g. 1:4; got {args.autoscale!r}") from None
        if not 0 <= low <= high or high < 1:
            raise InputError(f"--autoscale {args.autoscale}: need 0 <= MIN <= MAX and MAX >= 1")
        autoscale = (low, high)
    elif args.replicas < 1:
        raise InputError(f"--replicas must be >= 1, got {args.replicas}")
    if args.replica_cpus <= 0 or args.replica_gpus < 0:
        raise InputError(f"--replica-cpus must be > 0 and --replica-gpus >= 0 (got {args.replica_cpus}, "
                         f"{args.replica_gpus})")
    running = args.max_concurrent if args.max_concurrent is not None else args.max_batch
    realtime = getattr(args, "realtime_max_sessions", 0) or 0
    return ReplicaPlan(replicas=args.replicas, autoscale=autoscale, cpus=args.replica_cpus, gpus=args.replica_gpus,
                       max_ongoing_requests=running + realtime, drain_s=args.drain_s,
                       pin_cores=getattr(args, "replica_pin_cores", False))


def replica_args(args: argparse.Namespace, plan: ReplicaPlan) -> argparse.Namespace:
    """What each replica's server is built from: the same arguments, with its thread pool set to
    its CPU share, its running limit fixed (Ray's max_ongoing_requests is derived from it) and
    hardly a queue of its own (Ray queues at the proxy)."""
    running = plan.max_ongoing_requests - (getattr(args, "realtime_max_sessions", 0) or 0)
    return argparse.Namespace(**{**vars(args), "threads": plan.threads, "max_concurrent": running, "max_queue": REPLICA_QUEUE_SLACK,
                                 "replicas": None, "autoscale": None})


def replica_cores(local_rank: int, cores_each: int, allowed: list[int]) -> list[int] | None:
    """The cores of the replica of `local_rank` on its node: its own `cores_each` of `allowed` (the
    node's usable cores, ascending), or None when the node has too few for this rank."""
    first = local_rank * cores_each
    if local_rank < 0 or cores_each < 1 or first + cores_each > len(allowed):
        return None
    return allowed[first : first + cores_each]


def pin_process(cores: list[int]) -> None:
    """Pin every thread of this process (Ray's own included) to `cores`; threads started later
    inherit it. (`os.sched_setaffinity(0, ...)` alone pins only the calling thread.)"""
    import os

    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), cores)
        except (ProcessLookupError, PermissionError):  # a thread that just ended
            pass


def _pin_replica(local_rank: int | None, cores_each: int) -> list[int] | None:
    import os

    allowed = sorted(os.sched_getaffinity(0))
    cores = replica_cores(local_rank if local_rank is not None else -1, cores_each, allowed)
    if cores is None:
        print(f"omni replica (local rank {local_rank}): not pinned: the node lets it use {len(allowed)} cores, "
              f"too few for {cores_each} each at this rank", file=sys.stderr)
        return None
    pin_process(cores)
    return cores


# ---------------------------------------------------------------------------------------------
# Shared state


class TranscriptsActorBody:
    """The deployment's spoken-reply transcripts by audio id (bounded like the replicas' own
    stores: count, characters, age). One named actor; replicas write after each spoken reply and
    read the ids a request cites that they do not hold themselves."""

    def __init__(self, max_entries: int = 65536, max_chars: int = 256 * 1024 * 1024) -> None:
        from collections import OrderedDict

        self._entries: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self.max_entries, self.max_chars, self.chars = max_entries, max_chars, 0

    def put(self, audio_id: str, transcript: str, expires_at_s: float) -> None:
        old = self._entries.pop(audio_id, None)
        self.chars -= len(old[1]) if old else 0
        self._entries[audio_id] = (expires_at_s, transcript)
        self.chars += len(transcript)
        now_s = time.time()
        while self._entries and (len(self._entries) > self.max_entries or self.chars > self.max_chars
                                 or next(iter(self._entries.values()))[0] < now_s):
            self.chars -= len(self._entries.popitem(last=False)[1][1])

    def get_many(self, audio_ids: list[str]) -> dict[str, str]:
        now_s = time.time()
        return {audio_id: entry[1] for audio_id in audio_ids
                if (entry := self._entries.get(audio_id)) is not None and entry[0] >= now_s}


class SharedTranscripts:
    """A replica's handle on the deployment's transcripts actor (created by whichever replica comes
    first; `get_if_exists` makes that race-free)."""

    def __init__(self) -> None:
        import ray

        actor = ray.remote(num_cpus=0)(TranscriptsActorBody)
        self._actor = actor.options(name=TRANSCRIPTS_ACTOR, namespace=NAMESPACE, lifetime="detached",
                                    get_if_exists=True).remote()

    async def get_many(self, audio_ids: list[str]) -> dict[str, str]:
        if not audio_ids:
            return {}
        return await self._actor.get_many.remote(audio_ids)

    def put(self, audio_id: str, transcript: str, expires_at_s: float) -> None:
        self._actor.put.remote(audio_id, transcript, expires_at_s)  # fire and forget: ordered per caller


class ClusterView:
    """/stats, /health and /metrics for the whole deployment, from inside one replica."""

    def __init__(self, replica_id: str, app_name: str, deployment: str) -> None:
        self.replica_id, self.app_name, self.deployment = replica_id, app_name, deployment

    async def gather(self, method: str) -> list[Any]:
        from ray import serve

        handle = serve.get_deployment_handle(self.deployment, app_name=self.app_name)
        return await handle.broadcast(method).results_async(timeout_s=10.0)


# ---------------------------------------------------------------------------------------------
# The deployment


def build_application(args: argparse.Namespace, plan: ReplicaPlan):
    """The Ray Serve application: `plan`'s replicas of the omni server for `args`."""
    from ray import serve

    @serve.ingress()
    class OmniReplica:
        def __init__(self, server_args: argparse.Namespace) -> None:
            from ray.serve import get_replica_context

            from omni.server.cli import build_server

            context = get_replica_context()
            self.replica_id = context.replica_id.unique_id
            self.cores: list[int] | None = None
            if plan.pin_cores:  # before the model loads, so that every thread it starts inherits the cores
                rank = getattr(context, "rank", None)
                self.cores = _pin_replica(getattr(rank, "local_rank", rank), plan.threads)  # its CPU share
            self.server_app, self.server_config, self.loaded = build_server(server_args)
            state = self.server_app.state.omni
            state.shared_transcripts = SharedTranscripts()
            state.cluster = ClusterView(self.replica_id, context.app_name, context.deployment)

        def __serve_build_asgi_app__(self):
            return self.server_app

        async def replica_stats(self) -> dict:
            return {"replica": self.replica_id, "cores": self.cores, **await self.server_app.state.stats_body()}

        async def replica_metrics(self) -> list:
            return self.server_app.state.metric_families(replica=self.replica_id)

        def check_health(self) -> None:
            engine = self.server_app.state.omni.engine
            if engine is not None and not engine.alive:
                raise RuntimeError("the engine loop has stopped")

    return serve.deployment(OmniReplica, **plan.deployment_options()).bind(replica_args(args, plan))


def application(config: dict[str, Any]):
    """The application builder for Ray Serve config files (`serve run` / `serve deploy`, see
    deploy/serve.yaml): config = {"model": checkpoint, "serve_args": [omni serve's options]}, the
    replica flags among them (--replicas or --autoscale, --replica-cpus/-gpus; default one replica)."""
    from omni.cli import build_parser
    from omni.errors import InputError

    if "model" not in config:
        raise InputError("the application's args need `model` (the checkpoint directory)")
    args = build_parser().parse_args(["serve", str(config["model"]), *map(str, config.get("serve_args", []))])
    plan = plan_from_args(args) or plan_from_args(argparse.Namespace(**{**vars(args), "replicas": 1}))
    return build_application(args, plan)


def run_replicas(args: argparse.Namespace, plan: ReplicaPlan) -> int:
    """Start (or join, `--ray-address`) a Ray cluster, deploy the replicas, serve until Ctrl-C or
    SIGTERM, then shut the deployment down gracefully (running replies finish, up to --drain-s)."""
    import ray
    from ray import serve

    ray.init(address=args.ray_address, namespace=NAMESPACE, ignore_reinit_error=True)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build_application(args, plan), name=DEPLOYMENT, route_prefix="/")
    count = (f"{plan.replicas} replica{'s' if plan.replicas != 1 else ''}" if plan.autoscale is None
             else f"{plan.autoscale[0]}-{plan.autoscale[1]} replicas")
    print(f"omni serve: {count} on Ray Serve, http://{args.host}:{args.port}/v1 ({plan.cpus:g} CPU, {plan.gpus:g} GPU "
          f"and {plan.threads} torch threads each; {plan.max_ongoing_requests} requests at once each)", file=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("omni serve: stopping: running replies finish first", file=sys.stderr)
    serve.delete(DEPLOYMENT)
    serve.shutdown()
    ray.shutdown()
    return 0


async def cluster_stats(local: dict, cluster: ClusterView) -> dict:
    """Every replica's /stats with totals of the counters that add up."""
    replicas = await cluster.gather("replica_stats")
    totals: dict[str, float] = {}
    for body in replicas:
        for key, value in body.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                totals[key] = totals.get(key, 0) + value
    return {**local, "cluster": {"replicas": len(replicas), "totals": totals, "per_replica": replicas}}


async def cluster_health(cluster: ClusterView) -> dict:
    try:
        replicas = await cluster.gather("replica_stats")
    except Exception as error:  # a replica that does not answer makes the deployment unhealthy
        return {"status": "degraded", "error": f"{type(error).__name__}: {error}"}
    return {"status": "ok", "replicas": len(replicas)}


async def cluster_metrics(cluster: ClusterView) -> str:
    from omni.server.metrics import text

    return text(*await cluster.gather("replica_metrics"))

