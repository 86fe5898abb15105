"""Every request field at its extremes: a valid value is served, an invalid one is a 400 whose
`param` names the field (never a 500 from deep inside sampling or decoding); OpenAI fields omni
does not implement are refused unless "off"; `stop` ends the reply before the stop string."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.omni.server.conftest import greedy

HI = [{"role": "user", "content": "hi"}]
OK = None  # the request is served
RAW = object()  # the value is JSON text sent as is (1e309, NaN: json.dumps cannot write them)

CASES = [
    # (field, value, expected param on a 400, or OK)
    ("temperature", 0, OK), ("temperature", 2, OK), ("temperature", 1e-30, OK), ("temperature", 1e-300, OK),
    ("temperature", 2.0001, "temperature"), ("temperature", -0.1, "temperature"),
    ("temperature", (RAW, "1e309"), "temperature"), ("temperature", (RAW, "NaN"), "temperature"),
    ("temperature", (RAW, "-Infinity"), "temperature"), ("temperature", "0.5", "temperature"),
    ("temperature", True, "temperature"), ("temperature", None, OK),
    ("top_p", 1, OK), ("top_p", 1e-30, OK), ("top_p", 0, "top_p"), ("top_p", 1.5, "top_p"),
    ("top_p", (RAW, "NaN"), "top_p"),
    ("top_k", 0, OK), ("top_k", 1, OK), ("top_k", 10**12, OK), ("top_k", 10**30, OK), ("top_k", -1, "top_k"),
    ("top_k", 1.5, "top_k"), ("top_k", True, "top_k"), ("top_k", "40", "top_k"),
    ("repetition_penalty", 1e-30, OK), ("repetition_penalty", 1e30, OK), ("repetition_penalty", 1.3, OK),
    ("repetition_penalty", 0, "repetition_penalty"), ("repetition_penalty", -1, "repetition_penalty"),
    ("repetition_penalty", (RAW, "1e309"), "repetition_penalty"),
    ("seed", -1, OK), ("seed", -(2**63), OK), ("seed", 2**64 - 1, OK), ("seed", 0, OK),
    ("seed", 2**64, "seed"), ("seed", -(2**63) - 1, "seed"), ("seed", 10**30, "seed"), ("seed", "7", "seed"),
    ("seed", True, "seed"), ("seed", 1.5, "seed"),
    ("max_tokens", 1, OK), ("max_tokens", 0, "max_tokens"), ("max_tokens", -5, "max_tokens"),
    ("max_tokens", 10**6, "max_tokens"), ("max_tokens", 10**30, "max_tokens"), ("max_tokens", True, "max_tokens"),
    ("max_tokens", "2", "max_tokens"), ("max_tokens", 2.0, "max_tokens"),
    ("max_completion_tokens", 1, OK), ("max_completion_tokens", 0, "max_completion_tokens"),
    ("max_completion_tokens", 10**6, "max_completion_tokens"),
    ("n", 1, OK), ("n", 2, "n"), ("n", 0, "n"), ("n", True, "n"),
    ("stream", "yes", "stream"), ("stream", 1, "stream"),
    ("stream_options", {"include_usage": True}, "stream_options"),  # only with stream: true
    ("modalities", ["text"], OK), ("modalities", [], OK), ("modalities", ["video"], "modalities.0"),
    ("modalities", "text", "modalities"), ("modalities", ["text", "audio", "text"], "modalities"),
    ("audio", {"voice": "x" * 100}, "audio.voice"), ("audio", {"voice": 5}, "audio.voice"),
    ("audio", {"format": "x" * 100}, "audio.format"), ("audio", "wav", "audio"),
    ("stop", "zzz-never", OK), ("stop", ["a\x00", "b\x00"], OK), ("stop", "", "stop"), ("stop", [], "stop"),
    ("stop", ["a", "b", "c", "d", "e"], "stop"), ("stop", [1], "stop.0"), ("stop", "x" * 1001, "stop"),
    ("stop", 5, "stop"),
    ("presence_penalty", 0, OK), ("presence_penalty", 0.0, OK), ("presence_penalty", 0.5, "presence_penalty"),
    ("presence_penalty", 3, "presence_penalty"), ("presence_penalty", "0", "presence_penalty"),
    ("frequency_penalty", 0, OK), ("frequency_penalty", -1, "frequency_penalty"),
    ("response_format", {"type": "text"}, OK), ("response_format", {"type": "json_object"}, "response_format"),
    ("response_format", "text", "response_format"),
    ("logit_bias", {}, OK), ("logit_bias", {"5": 10}, OK), ("logit_bias", {"5": -100}, OK),
    ("logit_bias", {"5": 101}, "logit_bias.5"), ("logit_bias", {"999999999": 1}, "logit_bias.999999999"),
    ("logit_bias", {"abc": 1}, "logit_bias.abc"), ("logit_bias", {"5": (RAW, "NaN")}, "logit_bias.5"),
    ("logprobs", False, OK), ("logprobs", True, "logprobs"), ("top_logprobs", 5, "top_logprobs"),
    ("tools", [], OK), ("tools", [{"type": "function"}], "tools"), ("tool_choice", "none", OK),
    ("tool_choice", "required", "tool_choice"), ("functions", [{"name": "f"}], "functions"),
    ("temprature", 0.5, "temprature"), ("user", "someone", OK), ("metadata", {"k": "v"}, OK),
    ("model", "x" * 300, "model"), ("model", 5, "model"),
    ("messages", [], "messages"), ("messages", "hello", "messages"),
    ("messages", [{"role": "user", "content": "hi"}] * 5000, "messages"),
    ("messages", [{"role": "user", "content": [{"type": "text", "text": "a"}] * 5000}], "messages"),
    ("messages", [{"role": "user", "content": 5}], "messages.0.content"),
    ("messages", [{"role": "user", "content": "hi", "audio": {"id": "x" * 200}}], "messages.0.audio.id"),
]


def _body(field: str, value) -> bytes:
    raw: list[str] = []

    def marked(item):  # (RAW, text) anywhere becomes a marker string, replaced by text after dumping
        if isinstance(item, tuple) and item and item[0] is RAW:
            raw.append(item[1])
            return f"__RAW{len(raw) - 1}__"
        if isinstance(item, dict):
            return {key: marked(inner) for key, inner in item.items()}
        return item

    text = json.dumps({"messages": HI, "max_tokens": 2, **greedy(), field: marked(value)})
    for index, literal in enumerate(raw):
        text = text.replace(f'"__RAW{index}__"', literal)
    return text.encode()


@pytest.mark.parametrize("field, value, param", CASES, ids=lambda v: repr(v)[:40] if not isinstance(v, list) else
                         f"list{len(v)}")
def test_every_field_at_its_extremes(server, field, value, param):
    response = httpx.post(f"{server.v1}/chat/completions", content=_body(field, value),
                          headers={"content-type": "application/json"}, timeout=60)
    if param is OK:
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
        return
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error" and "Traceback" not in error["message"]
    assert len(error["message"]) < 600  # a long value is not echoed back whole


def test_a_prompt_longer_than_the_context_is_400_naming_the_limit(server):
    long_prompt = "hello " * 33000  # over the tiny model's 32768 positions
    response = httpx.post(f"{server.v1}/chat/completions", timeout=120,
                          json={"messages": [{"role": "user", "content": long_prompt}], "max_tokens": 2})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert "32768" in error["message"]
    # fits alone, but not with the tokens asked for
    response = httpx.post(f"{server.v1}/chat/completions", timeout=120,
                          json={"messages": [{"role": "user", "content": "hello " * 30000}], "max_tokens": 8000})
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"


def test_logit_bias_is_honoured(server, served_model):
    def reply(**extra) -> str:
        return httpx.post(f"{server.v1}/chat/completions", timeout=60, json={
            "messages": HI, "max_tokens": 3, **greedy(), **extra}).json()["choices"][0]["message"]["content"]

    tokenizer = served_model.tokenizer
    plain = reply()
    first = tokenizer.encode(plain)[0]
    assert not reply(logit_bias={str(first): -100}).startswith(tokenizer.decode([first]))
    hello = tokenizer.encode("Hello")[0]
    assert reply(logit_bias={str(hello): 100}).startswith("Hello")


@pytest.mark.parametrize("stream", [False, True])
def test_stop_ends_the_reply_before_the_stop_string(server, stream):
    client = server.openai()
    messages = [{"role": "user", "content": "Tell me about rivers."}]
    full = client.chat.completions.create(model="omni-tiny", messages=messages, max_tokens=12,
                                          **greedy()).choices[0].message.content
    stop = full[len(full) // 2: len(full) // 2 + 3]
    expected = full[: full.index(stop)]
    if stream:
        chunks = list(client.chat.completions.create(model="omni-tiny", messages=messages, max_tokens=12, stop=[stop],
                                                     stream=True, **greedy()))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reason = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason][0]
    else:
        choice = client.chat.completions.create(model="omni-tiny", messages=messages, max_tokens=12, stop=stop,
                                                **greedy()).choices[0]
        text, reason = choice.message.content, choice.finish_reason
    assert (text, reason) == (expected, "stop")
