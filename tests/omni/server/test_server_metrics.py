"""GET /metrics on one server: Prometheus text whose counters and time-to-first-audio histogram
follow the replies the server finished."""

from __future__ import annotations

import re

import httpx

from tests.omni.server.conftest import greedy


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_follow_finished_replies(server, served_model):
    before = _samples(httpx.get(f"{server.base_url}/metrics", timeout=30).text)
    client = server.openai()
    client.chat.completions.create(model="omni-tiny", messages=[{"role": "user", "content": "Hi."}], max_tokens=3,
                                   **greedy())
    client.chat.completions.create(model="omni-tiny", messages=[{"role": "user", "content": "Say hi."}],
                                   max_tokens=3, modalities=["text", "audio"],
                                   audio={"voice": served_model.voices[0], "format": "pcm16"}, seed=1, **greedy())
    response = httpx.get(f"{server.base_url}/metrics", timeout=30)
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    for family in ("omni_requests_finished_total", "omni_time_to_first_audio_seconds", "omni_requests_running"):
        assert text.count(f"# TYPE {family} ") == 1
    after = _samples(text)
    finished = lambda samples: sum(v for k, v in samples.items() if k.startswith("omni_requests_finished_total{"))  # noqa: E731
    assert finished(after) == finished(before) + 2
    assert after["omni_generated_tokens_total"] > before.get("omni_generated_tokens_total", 0)
    # one more spoken reply in the histogram, counted in +Inf and in no bucket below its own
    count = after["omni_time_to_first_audio_seconds_count"]
    assert count == before.get("omni_time_to_first_audio_seconds_count", 0) + 1
    assert after['omni_time_to_first_audio_seconds_bucket{le="+Inf"}'] == count
    buckets = sorted((float(re.search(r'le="([^"]+)"', k).group(1)), v) for k, v in after.items()
                     if k.startswith("omni_time_to_first_audio_seconds_bucket") and "+Inf" not in k)
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))  # cumulative
    assert after["omni_time_to_first_audio_seconds_sum"] > before.get("omni_time_to_first_audio_seconds_sum", 0)
    assert after["omni_engine_batch_size"] == 0 and "omni_prefix_cache_bytes" in after
