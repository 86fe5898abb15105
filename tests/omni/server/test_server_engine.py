"""The server on the engine: /stats shows the batch, the queue and the caches; a client resending its
conversation is served from the prefix cache, with the same answer as without it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from omni.engine import EngineOptions
from omni.server.app import ServerConfig
from tests.omni.server.conftest import greedy, start_server

GIB = 1024**3


@pytest.fixture(scope="module")
def engine_servers(served_model):
    """Two servers over one model would share its engine: the cached one on its own loaded copy."""
    from omni.loading import load_model

    cached = start_server(load_model(served_model.path, dtype="fp32"), ServerConfig(
        model_name="omni-tiny", max_concurrent=8, default_max_tokens=8,
        engine=EngineOptions(max_batch=8, prefix_cache_bytes=GIB)))
    plain = start_server(load_model(served_model.path, dtype="fp32"), ServerConfig(
        model_name="omni-tiny", max_concurrent=8, default_max_tokens=8, engine=EngineOptions(max_batch=8)))
    yield cached, plain
    cached.stop()
    plain.stop()


def test_stats_show_the_engine(engine_servers):
    cached, _ = engine_servers
    client = cached.openai()
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: client.chat.completions.create(
            model="omni-tiny", messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=6, **greedy()),
            range(6)))
    engine = cached.stats()["engine"]
    assert engine["batch_size"] == 0 and engine["queue_length"] == 0  # all done
    assert engine["peak_batch_size"] >= 2  # the concurrent requests were decoded together
    assert engine["replies_finished"] >= 6
    assert {"kv_reserved_bytes", "kv_budget_bytes", "max_batch", "prefix_cache"} <= set(engine)
    assert engine["prefix_cache"]["entries"] >= 1 and engine["prefix_cache"]["bytes"] > 0


def test_a_resent_conversation_is_served_from_the_prefix_cache(engine_servers):
    cached, plain = engine_servers
    messages = [{"role": "user", "content": "Tell me about the moon."}]
    for turn in range(2):
        answer = cached.openai().chat.completions.create(model="omni-tiny", messages=messages, max_tokens=6,
                                                         **greedy())
        messages = messages + [{"role": "assistant", "content": answer.choices[0].message.content},
                               {"role": "user", "content": f"More, part {turn}."}]
    before = cached.stats()["engine"]["prefix_cache"]["hits"]
    hit = cached.openai().chat.completions.create(model="omni-tiny", messages=messages, max_tokens=6, **greedy())
    miss = plain.openai().chat.completions.create(model="omni-tiny", messages=messages, max_tokens=6, **greedy())
    assert cached.stats()["engine"]["prefix_cache"]["hits"] == before + 1
    assert hit.choices[0].message.content == miss.choices[0].message.content
    assert hit.usage.prompt_tokens == miss.usage.prompt_tokens
    assert hit.usage.prompt_tokens_details.cached_tokens > 20
    assert miss.usage.prompt_tokens_details.cached_tokens == 0
