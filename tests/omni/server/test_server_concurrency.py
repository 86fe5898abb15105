"""Concurrent clients each get their own answer, and a client that leaves stops its generation."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from omni.server.admission import TranscriptStore
from omni.server.app import ServerConfig
from tests.omni.server.conftest import MIB, greedy, start_server

PROMPTS = ["Name a colour.", "What is two plus two?", "Describe the sea in one line.", "Hello!", "List three birds."]


def _cancelled_since(server, before: int, timeout_s: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = server.stats()
        if stats["finished"].get("cancelled", 0) > before and stats["running"] == 0:
            return [r for r in stats["recent"] if r["finish_reason"] == "cancelled"]
        time.sleep(0.05)
    raise AssertionError(f"no cancelled generation recorded: {server.stats()}")


def test_concurrent_streams_each_equal_their_prompt_run_alone(server):
    client = server.openai()

    def streamed(prompt: str) -> str:
        chunks = client.chat.completions.create(model="omni-tiny", messages=[{"role": "user", "content": prompt}],
                                                max_tokens=12, stream=True, **greedy())
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    alone = [client.chat.completions.create(model="omni-tiny", messages=[{"role": "user", "content": p}],
                                            max_tokens=12, **greedy()).choices[0].message.content for p in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS) * 2) as pool:
        together = list(pool.map(streamed, PROMPTS * 2))  # 10 clients on 4 slots: some wait in the queue
    assert together == alone * 2
    assert len(set(alone)) > 1  # the prompts really differ in their answers


def test_streaming_client_disconnect_cancels_its_generation(server):
    before = server.stats()["finished"].get("cancelled", 0)
    body = {"messages": [{"role": "user", "content": "Write a very long story."}], "max_tokens": 4000,
            "stream": True, "temperature": 0}
    with httpx.stream("POST", f"{server.v1}/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]  # a few chunks, then the client goes away
    assert any('"content"' in line for line in received)
    cancelled = _cancelled_since(server, before)
    assert cancelled[-1]["completion_tokens"] < 2000  # stopped early, far from max_tokens


def test_non_streamed_client_disconnect_cancels_its_generation(server):
    before = server.stats()["finished"].get("cancelled", 0)
    body = {"messages": [{"role": "user", "content": "Write a very long story."}], "max_tokens": 4000,
            "temperature": 0}
    try:
        httpx.post(f"{server.v1}/chat/completions", json=body, timeout=0.5)
    except httpx.TimeoutException:
        pass  # the client gave up and closed its connection
    cancelled = _cancelled_since(server, before)
    assert cancelled[-1]["completion_tokens"] < 2000


def test_disconnect_during_speech_cancels_the_talker_too(server, served_model):
    """The random tiny Talker would speak for a long time: leaving after the first audio stops it."""
    before = server.stats()["finished"].get("cancelled", 0)
    body = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 64, "stream": True,
            "temperature": 0, "modalities": ["text", "audio"],
            "audio": {"voice": (served_model.voices or ["Chelsie"])[0], "format": "pcm16"}}
    started = time.monotonic()
    with httpx.stream("POST", f"{server.v1}/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if '"data"' in line:
                break  # the first audio chunk arrived
    _cancelled_since(server, before)
    assert time.monotonic() - started < 30


@pytest.fixture(scope="module")
def roomy_server(tiny_text_model):
    """Bodies up to 96 MiB."""
    running = start_server(tiny_text_model, ServerConfig(model_name="omni-roomy", max_body_bytes=96 * MIB,
                                                         default_max_tokens=4))
    yield running
    running.stop()


def test_a_large_body_being_parsed_does_not_stall_other_requests(roomy_server):
    """A ~32 MB body of tiny content parts takes a second or more of GIL-holding JSON parsing (and, without
    the part-count limit, tens of seconds of validation): meanwhile /health still answers at once."""
    body = json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 1_100_000}]}).encode()
    started = time.perf_counter()
    json.loads(body)
    parse_s = time.perf_counter() - started  # what the parse costs on this machine, now
    outcome: dict = {}

    def send_large() -> None:
        response = httpx.post(f"{roomy_server.v1}/chat/completions", content=body, timeout=300,
                              headers={"content-type": "application/json"})
        outcome["response"] = response

    sender = threading.Thread(target=send_large)
    latencies_s = []
    with httpx.Client(timeout=60) as client:
        client.get(f"{roomy_server.base_url}/health")  # connected before the large request starts
        sender.start()
        while sender.is_alive():
            asked = time.perf_counter()
            assert client.get(f"{roomy_server.base_url}/health").status_code == 200
            latencies_s.append(time.perf_counter() - asked)
            time.sleep(0.02)
    sender.join()
    response = outcome["response"]
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"  # too many parts
    assert "4096" in response.json()["error"]["message"]
    assert len(latencies_s) >= 5, latencies_s
    assert max(latencies_s) < max(0.5, parse_s / 2), (max(latencies_s), parse_s)


def test_transcript_store_belongs_to_its_event_loop():
    store = TranscriptStore(ttl_s=60, max_entries=3, max_chars=12)

    async def scenario() -> None:
        store.put("a", "hello", expires_at_s=100, now_s=0)
        assert store.get("a", now_s=50) == "hello" and store.get("a", now_s=101) is None
        with pytest.raises(RuntimeError, match="outside its event loop"):
            await asyncio.to_thread(store.get, "a", 50)  # a worker thread would race the loop's writes
        store.put("b", "world", expires_at_s=100, now_s=0)
        store.put("c", "!!!!", expires_at_s=100, now_s=0)  # 14 characters held: the oldest goes
        assert store.get("a", now_s=50) is None and store.chars == 9 and len(store) == 2
        store.put("d", "x", expires_at_s=300, now_s=150)  # b and c expired meanwhile: dropped
        assert len(store) == 1 and store.chars == 1

    asyncio.run(scenario())
    with pytest.raises(RuntimeError, match="outside its event loop"):
        store.get("d", now_s=0)  # no loop at all
