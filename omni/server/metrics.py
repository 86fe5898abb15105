"""GET /metrics: the server's figures in Prometheus' text exposition format (version 0.0.4).

Written by hand (a dozen lines of format, no dependency): counters of finished replies by finish
reason and of generated tokens, a histogram of the time to first audio, gauges of running and
waiting requests, realtime sessions, and with the engine its batch size, queue, cache memory and
prefix-cache use. Behind Ray Serve every replica labels its series `replica="..."` and /metrics
answers with all replicas' series (omni.server.replicas).
"""

from __future__ import annotations

from omni.server.admission import FIRST_AUDIO_BUCKETS_S

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    escaped = (key + '="' + str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
               for key, value in labels.items())
    return "{" + ",".join(escaped) + "}"


class _Writer:
    """Families as (name, kind, help, sample lines): several servers' families merge by name."""

    def __init__(self, labels: dict[str, str]) -> None:
        self.families: list[tuple[str, str, str, list[str]]] = []
        self.labels = labels

    def metric(self, name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]],
               suffix_samples: list[tuple[str, dict[str, str], float]] = ()) -> None:
        lines = [f"{name}{_labels({**self.labels, **extra})} {value:g}" for extra, value in samples]
        lines += [f"{name}{suffix}{_labels({**self.labels, **extra})} {value:g}" for suffix, extra, value in suffix_samples]
        self.families.append((name, kind, help_text, lines))


def text(*servers: list[tuple[str, str, str, list[str]]]) -> str:
    """The exposition of one or more servers' families: one HELP/TYPE per family, its samples from
    every server together (the format allows each family once)."""
    merged: dict[str, tuple[str, str, list[str]]] = {}
    for families in servers:
        for name, kind, help_text, lines in families:
            merged.setdefault(name, (kind, help_text, []))[2].extend(lines)
    out = []
    for name, (kind, help_text, lines) in merged.items():
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *lines]
    return "\n".join(out) + "\n"


def families(state, replica: str | None = None, realtime_sessions: int | None = None
             ) -> list[tuple[str, str, str, list[str]]]:
    """One server's metric families (`state`: omni.server.app.ServerState); `text` writes them."""
    out = _Writer({"replica": replica} if replica else {})
    snapshot = state.stats.snapshot()
    out.metric("omni_requests_finished_total", "counter", "Replies finished, by finish reason.",
               [({"finish_reason": reason}, count) for reason, count in sorted(snapshot["finished"].items())])
    out.metric("omni_generated_tokens_total", "counter", "Text and codec tokens generated.",
               [({}, state.stats.completion_tokens)])
    counts, total_s = state.stats.histogram()
    cumulative, buckets = 0, []
    for bound, count in zip((*FIRST_AUDIO_BUCKETS_S, float("inf")), counts):
        cumulative += count
        buckets.append(("_bucket", {"le": "+Inf" if bound == float("inf") else f"{bound:g}"}, cumulative))
    out.metric("omni_time_to_first_audio_seconds", "histogram", "From a spoken reply's start to its first audio chunk.",
               [], buckets + [("_sum", {}, total_s), ("_count", {}, cumulative)])
    out.metric("omni_requests_running", "gauge", "Requests generating now.", [({}, state.admission.running)])
    out.metric("omni_requests_waiting", "gauge", "Requests waiting for a slot.", [({}, state.admission.waiting)])
    if realtime_sessions is not None:
        out.metric("omni_realtime_sessions", "gauge", "Open realtime WebSocket sessions.", [({}, realtime_sessions)])
    if state.engine is not None:
        engine = state.engine.stats()
        out.metric("omni_engine_batch_size", "gauge", "Replies in the engine's batch.", [({}, engine["batch_size"])])
        out.metric("omni_engine_queue_length", "gauge", "Replies waiting for the engine.", [({}, engine["queue_length"])])
        out.metric("omni_engine_kv_reserved_bytes", "gauge", "Cache memory reserved by live replies.",
                   [({}, engine["kv_reserved_bytes"])])
        budget = engine["kv_budget_bytes"]
        if budget is not None:
            out.metric("omni_engine_kv_budget_bytes", "gauge", "Cache memory the engine may reserve.", [({}, budget)])
        cache = engine["prefix_cache"]
        out.metric("omni_prefix_cache_bytes", "gauge", "Bytes held by the conversation prefix cache.",
                   [({}, cache.get("bytes", 0))])
        out.metric("omni_prefix_cache_lookups_total", "counter", "Prefix cache lookups, by result.",
                   [({"result": "hit"}, cache.get("hits", 0)), ({"result": "miss"}, cache.get("misses", 0))])
    return out.families
