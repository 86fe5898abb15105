"""Every request the server refuses: the status code, OpenAI's error JSON shape, and a message
naming the problem (never a stack trace, never FastAPI's default 422 body)."""

from __future__ import annotations

import base64
import io
import time
import wave

import httpx
import openai
import pytest

from tests.omni.server.conftest import data_uri

MIB = 1024 * 1024


def _post(server, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.v1}/chat/completions", timeout=60, **kwargs,
                      **({"json": body} if isinstance(body, (dict, list)) else {"content": body}))


def _error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    assert "Traceback" not in error["message"]
    return error


def _user(*parts) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def _image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def test_bad_json_is_400(server):
    error = _error(_post(server, b'{"messages": [', headers={"content-type": "application/json"}), 400, "invalid_json")
    assert "JSON" in error["message"]


@pytest.mark.parametrize("body, param", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "tool", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": [{"type": "hologram"}]}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": ""}]}, "messages.0.content"),
    ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
])
def test_missing_or_malformed_fields_are_400_not_422(server, body, param):
    error = _error(_post(server, body), 400)
    assert error["param"].startswith(param) and error["type"] == "invalid_request_error"


def test_unsupported_options_are_400(server):
    messages = [{"role": "user", "content": "hi"}]
    assert _error(_post(server, {"messages": messages, "n": 2}), 400)["param"] == "n"
    assert _error(_post(server, {"messages": messages, "max_tokens": 10**6}), 400)["param"] == "max_tokens"
    assert _error(_post(server, {"messages": messages, "modalities": ["text", "audio"],
                                 "audio": {"voice": None, "format": "mp3"}}), 400, "unsupported_audio_format")
    assert _error(_post(server, {"messages": messages, "tools": [{"type": "function"}]}), 400)["param"] == "tools"


def test_unknown_model_is_404_and_unknown_route_is_json(server):
    with pytest.raises(openai.NotFoundError):
        server.openai().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    _error(httpx.get(f"{server.v1}/nothing-here"), 404)


def test_oversized_body_is_413(server):
    big = {"messages": _user({"type": "text", "text": "x" * (3 * MIB)})}
    error = _error(_post(server, big), 413, "request_too_large")
    assert "2.0 MiB" in error["message"]


def test_oversized_chunked_body_is_413(server):
    def body():  # no Content-Length: the server counts as it reads
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(3 * 16):
            yield b"y" * (64 * 1024)
        yield b'"}]}'
    _error(_post(server, body()), 413, "request_too_large")


def test_image_over_the_pixel_limit_is_400(server, server_media):
    error = _error(_post(server, {"messages": _user(_image(data_uri(server_media.big_image_png, "image/png")))}),
                   400, "invalid_media")
    assert "1000000 pixel limit" in error["message"]


def test_audio_over_the_duration_limit_is_400(server):
    six_seconds = base64.b64encode(_wav_bytes(6.0)).decode()
    audio = {"type": "input_audio", "input_audio": {"data": six_seconds, "format": "wav"}}
    error = _error(_post(server, {"messages": _user(audio)}), 400, "invalid_media")
    assert "5 s limit" in error["message"]


def test_bad_input_audio_is_400(server):
    bad_base64 = {"type": "input_audio", "input_audio": {"data": "not base64!!", "format": "wav"}}
    _error(_post(server, {"messages": _user(bad_base64)}), 400, "invalid_media")
    bad_format = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "midi"}}
    _error(_post(server, {"messages": _user(bad_format)}), 400, "unsupported_audio_format")
    garbage = {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"\1" * 4000).decode(), "format": "wav"}}
    _error(_post(server, {"messages": _user(garbage)}), 400, "invalid_media")


def test_local_paths_are_refused_without_a_media_root(closed_server, server_media):
    for url in (str(server_media.image_png), server_media.image_png.as_uri()):
        error = _error(_post(closed_server, {"messages": _user(_image(url))}), 403, "local_media_disabled")
        assert "--media-root" in error["message"]


def test_local_paths_outside_the_media_root_are_refused(server, server_media):
    for url in (str(server_media.outside), f"../{server_media.outside.parent.name}/secret.png",
                server_media.outside.as_uri()):
        _error(_post(server, {"messages": _user(_image(url))}), 403, "media_outside_root")


def test_remote_media_is_refused_when_disabled(closed_server, media_http):
    error = _error(_post(closed_server, {"messages": _user(_image(f"{media_http}/drawing.png"))}), 400,
                   "remote_media_disabled")
    assert "--allow-remote-media" in error["message"]


def test_remote_media_to_loopback_is_blocked_unless_allowed(strict_server, media_http):
    _error(_post(strict_server, {"messages": _user(_image(f"{media_http}/drawing.png"))}), 403, "remote_media_blocked")


def test_remote_media_size_cap_and_timeout(server, media_http):
    error = _error(_post(server, {"messages": _user(_image(f"{media_http}/big.bin"))}), 400, "invalid_media")
    assert "limit" in error["message"]
    started = time.monotonic()
    error = _error(_post(server, {"messages": _user(_image(f"{media_http}/slow"))}), 400, "invalid_media")
    assert time.monotonic() - started < 3.5 and "1 s" in error["message"]


def test_unsupported_url_scheme_is_400(server):
    _error(_post(server, {"messages": _user(_image("ftp://example.com/a.png"))}), 400, "invalid_media_url")


def test_audio_from_a_text_only_model_is_400(strict_server):
    with pytest.raises(openai.BadRequestError) as caught:
        strict_server.openai().chat.completions.create(
            model="omni-text", messages=[{"role": "user", "content": "hi"}], modalities=["text", "audio"],
            audio={"voice": "Chelsie", "format": "wav"})
    assert caught.value.code == "audio_output_unavailable"


def test_unknown_audio_id_in_history_is_400(server):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "audio": {"id": "audio_nope"}},
                {"role": "user", "content": "again"}]
    _error(_post(server, {"messages": messages}), 400, "unknown_audio_id")


def test_full_queue_is_429(strict_server):
    """One slot and no queue: while a long reply runs, the next request is refused at once."""
    body = {"messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 3000, "stream": True,
            "temperature": 0}
    with httpx.stream("POST", f"{strict_server.v1}/chat/completions", json=body, timeout=60) as running:
        lines = running.iter_lines()
        next(lines)  # the first chunk: the generation holds the only slot
        with pytest.raises(openai.RateLimitError) as caught:
            strict_server.openai().chat.completions.create(
                model="omni-text", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert caught.value.status_code == 429 and caught.value.code == "server_busy"
    deadline = time.monotonic() + 30
    while strict_server.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert strict_server.openai().chat.completions.create(  # the slot came back when the client left
        model="omni-text", messages=[{"role": "user", "content": "hi"}], max_tokens=2).choices[0].message.content


def _wav_bytes(seconds: float) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1), wav.setsampwidth(2), wav.setframerate(16000)
        wav.writeframes(b"\0\1" * int(16000 * seconds))
    return buffer.getvalue()


def test_errors_do_not_break_the_server(server):
    _post(server, b"\xff\xfe garbage")
    completion = server.openai().chat.completions.create(
        model="omni-tiny", messages=[{"role": "user", "content": "still there?"}], max_tokens=2)
    assert completion.choices[0].message.content is not None


def test_streamed_request_errors_arrive_as_http_status_before_the_stream(server, server_media):
    with pytest.raises(openai.BadRequestError) as caught:
        server.openai().chat.completions.create(
            model="omni-tiny", stream=True, messages=_user(_image(data_uri(server_media.big_image_png, "image/png"))))
    assert caught.value.code == "invalid_media"
