"""The server through the official openai client: text replies streamed and whole, media inputs,
multi-turn history, and replies equal to the same conversation run directly on an OmniSession."""

from __future__ import annotations

import httpx

from omni.session import OmniSession
from tests.omni.server.conftest import b64_file, data_uri, greedy


def _direct(loaded, messages, max_new_tokens, system_prompt=None) -> str:
    options = {"system_prompt": system_prompt} if system_prompt is not None else {}
    session = OmniSession(loaded, max_new_tokens=max_new_tokens, **options)
    return session.reply(messages, return_audio=False, do_sample=False).text


def test_health_and_models(server):
    assert httpx.get(f"{server.base_url}/health").json()["status"] == "ok"
    models = server.openai().models.list()
    assert [m.id for m in models.data] == ["omni-tiny"]


def test_non_streamed_text_reply_has_openai_shape_and_timings(server, served_model):
    client = server.openai()
    completion = client.chat.completions.create(
        model="omni-tiny", messages=[{"role": "user", "content": "Name a river."}], max_tokens=6, **greedy())
    choice = completion.choices[0]
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.audio is None
    assert choice.message.content == _direct(served_model, [{"role": "user", "content": "Name a river."}], 6)
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.completion_tokens >= 1 and usage.prompt_tokens > 10
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens_details.text_tokens == usage.completion_tokens
    extras = completion.model_extra["omni"]
    assert 0 < extras["time_to_first_text_s"] <= extras["total_s"]
    assert extras["time_to_first_audio_s"] is None and "prefill" in extras["stage_s"]


def test_streamed_text_equals_the_whole_reply_and_ends_with_usage(server):
    client = server.openai()
    messages = [{"role": "user", "content": "Count to five."}]
    whole = client.chat.completions.create(model="omni-tiny", messages=messages, max_tokens=8, **greedy())
    chunks = list(client.chat.completions.create(model="omni-tiny", messages=messages, max_tokens=8, stream=True,
                                                 stream_options={"include_usage": True}, **greedy()))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    timed = [c for c in chunks if c.model_extra.get("omni")]
    assert len(timed) == 1 and timed[0].model_extra["omni"]["time_to_first_text_s"] > 0


def test_stream_without_include_usage_sends_no_usage_chunk(server):
    chunks = list(server.openai().chat.completions.create(
        model="omni-tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=3, stream=True, **greedy()))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_raw_sse_framing_ends_with_done(server):
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": True, "temperature": 0}
    with httpx.stream("POST", f"{server.v1}/chat/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"


def test_system_and_assistant_history_equal_a_direct_session(server, served_model):
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": [{"type": "text", "text": "Tell me about "}, {"type": "text", "text": "lakes."}]},
    ]
    completion = server.openai().chat.completions.create(
        model="omni-tiny", messages=[{"role": "system", "content": "You are terse."}, *history], max_tokens=8,
        **greedy())
    direct_history = history[:2] + [{"role": "user", "content": "Tell me about lakes."}]
    assert completion.choices[0].message.content == _direct(served_model, direct_history, 8, "You are terse.")
    # the history reaches the model: without it the prompt is shorter
    alone = server.openai().chat.completions.create(
        model="omni-tiny", messages=[{"role": "system", "content": "You are terse."}, history[2]], max_tokens=8,
        **greedy())
    assert completion.usage.prompt_tokens > alone.usage.prompt_tokens


def test_image_as_data_uri_equals_a_direct_session(server, served_model, server_media):
    content = [{"type": "image_url", "image_url": {"url": data_uri(server_media.image_png, "image/png")}},
               {"type": "text", "text": "What is this?"}]
    completion = server.openai().chat.completions.create(
        model="omni-tiny", messages=[{"role": "user", "content": content}], max_tokens=6, **greedy())
    direct = [{"role": "user", "content": [{"type": "image", "image": str(server_media.image_png)},
                                           {"type": "text", "text": "What is this?"}]}]
    assert completion.choices[0].message.content == _direct(served_model, direct, 6)
    text_only = server.openai().chat.completions.create(
        model="omni-tiny", messages=[{"role": "user", "content": "What is this?"}], max_tokens=6, **greedy())
    assert completion.usage.prompt_tokens > text_only.usage.prompt_tokens + 10  # the image's vision tokens


def test_image_by_path_and_file_url_under_the_media_root(server, server_media):
    client = server.openai()
    tokens = set()
    for url in ("drawing.png", str(server_media.image_png), server_media.image_png.as_uri()):
        completion = client.chat.completions.create(
            model="omni-tiny", max_tokens=2, **greedy(),
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                   {"type": "text", "text": "?"}]}])
        tokens.add(completion.usage.prompt_tokens)
    assert len(tokens) == 1  # all three name the same file


def test_remote_image_is_fetched_when_enabled(server, media_http):
    completion = server.openai().chat.completions.create(
        model="omni-tiny", max_tokens=2, **greedy(),
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"{media_http}/drawing.png"}},
                                               {"type": "text", "text": "?"}]}])
    assert completion.usage.prompt_tokens > 30


def test_input_audio_equals_a_direct_session(server, served_model, server_media):
    content = [{"type": "input_audio", "input_audio": {"data": b64_file(server_media.speech_wav), "format": "wav"}},
               {"type": "text", "text": "What do you hear?"}]
    completion = server.openai().chat.completions.create(
        model="omni-tiny", messages=[{"role": "user", "content": content}], max_tokens=6, **greedy())
    direct = [{"role": "user", "content": [{"type": "audio", "audio": str(server_media.speech_wav)},
                                           {"type": "text", "text": "What do you hear?"}]}]
    assert completion.choices[0].message.content == _direct(served_model, direct, 6)


def test_video_url_part(server, server_media):
    content = [{"type": "video_url", "video_url": {"url": data_uri(server_media.video_mp4, "video/mp4")}},
               {"type": "text", "text": "What happens?"}]
    completion = server.openai().chat.completions.create(
        model="omni-tiny", messages=[{"role": "user", "content": content}], max_tokens=3, **greedy())
    assert completion.usage.prompt_tokens > 40 and completion.choices[0].message.content


def test_sampling_with_a_seed_is_reproducible(server):
    client = server.openai()
    replies = {client.chat.completions.create(
        model="omni-tiny", messages=[{"role": "user", "content": "Say something."}], max_tokens=8,
        temperature=1.0, top_p=0.9, seed=7, extra_body={"top_k": 50, "repetition_penalty": 1.1},
    ).choices[0].message.content for _ in range(2)}
    assert len(replies) == 1
