"""Concurrent clients each get their own answer, and a client that leaves stops its generation."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.omni.server.conftest import greedy

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
