"""The Realtime API (WebSocket /v1/realtime) driven by the official `openai` package's realtime client
over loopback: spoken turns answered by server VAD, manual turns, text, barge-in with truncation, the
beta dialect, malformed events, concurrent connections, and the session limits."""

from __future__ import annotations

import asyncio
import base64
import json
import math

import numpy as np
import pytest

from omni.pipeline import CODEC_TOKENS_PER_TEXT_TOKEN
from omni.server.app import ServerConfig
from omni.server.realtime import RealtimeLimits
from omni.tools.media_factory import speech, trimmed_pcm16
from tests.omni.server.conftest import start_server

pytest.importorskip("websockets", reason="the realtime tests need openai[realtime] (websockets)")
pytestmark = pytest.mark.timeout(300)

RATE = 24000
SPEECH_TEXT = "Hello there. What is the weather like in Paris today?"
EVENT_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def rt_server(served_model):
    config = ServerConfig(model_name="omni-tiny", max_concurrent=4, max_queue=8, default_max_tokens=3)
    running = start_server(served_model, config)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def strict_rt_server(served_model):
    """One realtime session at a time, a 1 s input buffer, 1.5 s idle timeout, 6 s sessions; one
    generation slot and no queue for realtime responses and HTTP requests together."""
    limits = RealtimeLimits(max_connections=1, idle_timeout_s=1.5, max_input_audio_s=1.0, max_session_s=6.0)
    config = ServerConfig(model_name="omni-tiny", max_concurrent=1, max_queue=0, default_max_tokens=2,
                          realtime=limits)
    running = start_server(served_model, config)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def spoken_24k(tmp_path_factory) -> np.ndarray:
    """espeak-ng speech as int16 PCM at 24 kHz, its leading and trailing silence trimmed."""
    return trimmed_pcm16(speech(tmp_path_factory.mktemp("rt-speech") / "question.wav", SPEECH_TEXT), RATE)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.int16)


def client(server):
    from openai import AsyncOpenAI

    # the beta client always connects with wss:// unless websocket_base_url says otherwise
    return AsyncOpenAI(base_url=server.v1, websocket_base_url=server.v1.replace("http", "ws"), api_key="unused",
                       max_retries=0)


def run(coroutine, timeout_s: float = 240.0):
    return asyncio.run(asyncio.wait_for(coroutine, timeout_s))


async def append_in_pieces(connection, samples: np.ndarray, seed: int = 0) -> None:
    """As a microphone would: pieces of 20 to 100 ms."""
    rng = np.random.default_rng(seed)
    start = 0
    while start < samples.size:
        size = int(RATE * rng.integers(20, 101) / 1000)
        piece = samples[start:start + size]
        await connection.input_audio_buffer.append(audio=base64.b64encode(piece.tobytes()).decode())
        start += size


async def events_until(connection, last_type: str, timeout_s: float = EVENT_TIMEOUT_S) -> list:
    """Every event up to and including the first of type `last_type`."""
    events = []
    while True:
        event = await asyncio.wait_for(connection.recv(), timeout_s)
        events.append(event)
        if event.type == last_type:
            return events


def types(events) -> list[str]:
    return [event.type for event in events]


def pcm(events, delta_type: str = "response.output_audio.delta") -> np.ndarray:
    data = b"".join(base64.b64decode(e.delta) for e in events if e.type == delta_type)
    return np.frombuffer(data, dtype="<i2")


def live_sessions(server) -> list:
    return list(server.server.config.app.state.realtime.connections)


def connection_with(server, first_text: str | None):
    """The server's side of the connection whose conversation starts with this text (None: with
    an item whose first part is no text)."""
    return next(c for c in live_sessions(server)
                if c.conversation.items and c.conversation.items[0].parts[0].get("text") == first_text)


# -- spoken turns -----------------------------------------------------------------------------------------


def test_a_spoken_turn_is_answered_by_server_vad_with_audio_before_the_transcript_ends(rt_server, spoken_24k):
    async def scenario():
        async with client(rt_server).realtime.connect(model="omni-tiny") as connection:
            created = await connection.recv()
            assert created.type == "session.created"
            vad = created.session.audio.input.turn_detection
            assert (vad.type, vad.threshold, vad.prefix_padding_ms, vad.silence_duration_ms) == ("server_vad", 0.5,
                                                                                                 300, 500)
            assert created.session.audio.input.format.rate == RATE and created.session.output_modalities == ["audio"]
            await append_in_pieces(connection, np.concatenate([silence(0.5), spoken_24k, silence(1.5)]))
            return await events_until(connection, "response.done")

    events = run(scenario())
    names = types(events)
    started, stopped = events[names.index("input_audio_buffer.speech_started")], \
        events[names.index("input_audio_buffer.speech_stopped")]
    speech_ms = 1000 * spoken_24k.size / RATE
    assert abs(started.audio_start_ms - 500) <= 100
    assert abs(stopped.audio_end_ms - (500 + speech_ms)) <= 200
    committed = events[names.index("input_audio_buffer.committed")]
    assert started.item_id == stopped.item_id == committed.item_id
    user_item = next(e.item for e in events if e.type == "conversation.item.added" and e.item.role == "user")
    assert user_item.id == committed.item_id and user_item.content[0].type == "input_audio"
    order = ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
             "response.created", "response.output_item.added", "response.content_part.added",
             "response.output_audio.delta", "response.output_audio_transcript.done", "response.output_item.done",
             "response.done"]
    assert [names.index(name) for name in order] == sorted(names.index(name) for name in order)
    # the first audio delta comes before the transcript is done, and there is more than one delta
    assert names.count("response.output_audio.delta") >= 2
    audio = pcm(events)
    assert audio.size > RATE // 10 and np.abs(audio).max() > 100
    done = events[-1].response
    assert done.status in ("completed", "incomplete") and done.usage.output_token_details.audio_tokens > 0
    transcript = events[names.index("response.output_audio_transcript.done")].transcript
    deltas = "".join(e.delta for e in events if e.type == "response.output_audio_transcript.delta")
    assert transcript == deltas and done.output[0].content[0].transcript == transcript


def test_a_manual_turn_with_commit_and_response_create(rt_server, spoken_24k):
    async def scenario():
        async with client(rt_server).realtime.connect(model="omni-tiny") as connection:
            await connection.recv()
            await connection.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
            updated = await connection.recv()
            assert updated.type == "session.updated" and updated.session.audio.input.turn_detection is None
            await connection.input_audio_buffer.commit()  # nothing appended yet
            empty = await connection.recv()
            await append_in_pieces(connection, np.concatenate([spoken_24k, silence(1.0)]), seed=1)
            await connection.input_audio_buffer.commit()
            committed = await events_until(connection, "conversation.item.done")
            # no VAD: nothing was answered by itself
            await connection.response.create()
            return empty, committed, await events_until(connection, "response.done")

    empty, committed, answer = run(scenario())
    assert empty.type == "error" and empty.error.code == "input_audio_buffer_commit_empty"
    assert types(committed) == ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"]
    assert "input_audio_buffer.speech_started" not in types(committed)
    assert types(answer)[0] == "response.created" and answer[-1].response.status in ("completed", "incomplete")
    assert pcm(answer).size > 0


def test_text_in_text_out(rt_server):
    async def scenario():
        async with client(rt_server).realtime.connect(model="omni-tiny") as connection:
            await connection.recv()
            await connection.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                                     "max_output_tokens": 4})
            assert (await connection.recv()).session.output_modalities == ["text"]
            await connection.conversation.item.create(item={"type": "message", "role": "user",
                                                            "content": [{"type": "input_text", "text": "Hi!"}]})
            added = await events_until(connection, "conversation.item.done")
            await connection.response.create()
            first = await events_until(connection, "response.done")
            await connection.conversation.item.create(item={"type": "message", "role": "user",
                                                            "content": [{"type": "input_text", "text": "More."}]})
            await events_until(connection, "conversation.item.done")
            await connection.response.create()
            second = await events_until(connection, "response.done")
            session = connection_with(rt_server, "Hi!").session
            return added, first, second, session.messages

    added, first, second, messages = run(scenario())
    assert added[0].item.content[0].text == "Hi!"
    names = types(first)
    assert "response.output_audio.delta" not in names and "response.output_text.delta" in names
    text = "".join(e.delta for e in first if e.type == "response.output_text.delta")
    assert first[names.index("response.output_text.done")].text == text
    done = first[-1].response
    assert done.status == "incomplete" and done.status_details.reason == "max_output_tokens"
    assert done.usage.output_token_details.text_tokens == 4 and done.usage.output_token_details.audio_tokens == 0
    # the second turn continued the first's cache: the session holds both turns, as sent
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1]["content"] == text and messages[2]["content"][0]["text"] == "More."
    assert second[-1].response.usage.input_tokens < 2 * done.usage.input_tokens  # not the whole prompt again


def test_an_image_and_audio_in_a_user_item(rt_server, spoken_24k):
    import io

    from omni.tools.media_factory import drawing

    png = io.BytesIO()
    drawing(64, 48, seed=1).save(png, format="PNG")
    image_url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    audio = base64.b64encode(spoken_24k.tobytes()).decode()

    async def scenario():
        async with client(rt_server).realtime.connect(model="omni-tiny") as connection:
            await connection.recv()
            await connection.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await connection.recv()
            await connection.conversation.item.create(item={"type": "message", "role": "user", "content": [
                {"type": "input_image", "image_url": image_url}, {"type": "input_audio", "audio": audio},
                {"type": "input_text", "text": "What is this?"}]})
            added = await events_until(connection, "conversation.item.done")
            await connection.response.create()
            done = await events_until(connection, "response.done")
            return added[0].item, done[-1].response, connection_with(rt_server, None).session.messages

    item, done, messages = run(scenario())
    assert [part.type for part in item.content] == ["input_image", "input_audio", "input_text"]
    assert done.status in ("completed", "incomplete")
    content = messages[0]["content"]
    assert [part["type"] for part in content] == ["image", "audio", "text"]
    # the 24 kHz PCM16 reached the model at 16 kHz
    assert abs(content[1]["audio"].size - spoken_24k.size * 2 / 3) <= 160
    # the image and ~3 s of audio (25 tokens/s: ~75) are in the prompt, not only the system prompt and text (~45)
    assert done.usage.input_tokens > 45 + 60


def test_deleting_an_item_the_session_read_starts_it_over_from_the_items(rt_server):
    async def scenario():
        async with client(rt_server).realtime.connect(model="omni-tiny") as connection:
            await connection.recv()
            await connection.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await connection.recv()
            for text in ("First.", "Second."):
                await connection.conversation.item.create(item={"type": "message", "role": "user",
                                                                "content": [{"type": "input_text", "text": text}]})
                await events_until(connection, "conversation.item.done")
                await connection.response.create()
                await events_until(connection, "response.done")
            server_side = connection_with(rt_server, "First.")
            first_user = server_side.conversation.items[0].id
            await connection.conversation.item.delete(item_id=first_user)
            deleted = await events_until(connection, "conversation.item.deleted")
            await connection.conversation.item.create(item={"type": "message", "role": "user",
                                                            "content": [{"type": "input_text", "text": "Third."}]})
            await events_until(connection, "conversation.item.done")
            await connection.response.create()
            done = await events_until(connection, "response.done")
            items = [(item.role, item.message()["content"]) for item in server_side.conversation.items]
            return deleted[-1], done[-1].response, server_side, items

    deleted, done, server_side, items = run(scenario())
    assert done.status in ("completed", "incomplete") and len(items) == 5
    conversation, session = server_side.conversation, server_side.session
    # the session read the conversation anew, without the deleted item
    messages = [(m["role"], m["content"] if isinstance(m["content"], str) else m["content"][0]["text"])
                for m in session.messages]
    expected = [(role, content if isinstance(content, str) else content[0]["text"]) for role, content in items]
    assert messages == expected and messages[0][0] == "assistant"
    assert not conversation.stale and conversation.fed_ids == [item.id for item in conversation.items]
    assert session.state.cache.length == len(session.state.fed_token_ids)


# -- barge-in ---------------------------------------------------------------------------------------------


def test_barge_in_cancels_truncates_and_the_next_turn_follows_the_truncation(rt_server, spoken_24k):
    async def scenario():
        async with client(rt_server).realtime.connect(model="omni-tiny") as connection:
            await connection.recv()
            await connection.session.update(session={"type": "realtime", "max_output_tokens": 12})
            await connection.recv()
            first_part, rest = spoken_24k[:RATE], spoken_24k[RATE:]
            for text in ["Talk.", "Go on.", "And more."]:
                await connection.conversation.item.create(item={"type": "message", "role": "user",
                                                                "content": [{"type": "input_text", "text": text}]})
                await events_until(connection, "conversation.item.done")
                await connection.response.create()
                playing = await events_until(connection, "response.output_audio.delta")
                # the user speaks over the reply: the first second of speech (the rest after the truncation)
                await append_in_pieces(connection, np.concatenate([silence(0.3), first_part]), seed=2)
                interrupted = await events_until(connection, "response.done")
                if interrupted[-1].response.status == "cancelled":
                    break
                # the random Talker ended the reply before the speech was heard: not a barge-in, again
                await connection.input_audio_buffer.clear()
                await events_until(connection, "input_audio_buffer.cleared")
            item_id = interrupted[-1].response.output[0].id
            await connection.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=10**7)
            too_far = await events_until(connection, "error")
            heard_ms = 200  # the client had played 0.2 s when it stopped playback
            await connection.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=heard_ms)
            truncated = await events_until(connection, "conversation.item.truncated")
            spoken = connection_with(rt_server, "Talk.").session.state.last_spoken  # before the next turn
            cut = (spoken.kept_tokens, len(spoken.token_ids), spoken.codec_tokens, spoken.speech_complete)
            await connection.send({"type": "conversation.item.retrieve", "item_id": item_id})
            retrieved = await events_until(connection, "conversation.item.retrieved")
            await append_in_pieces(connection, np.concatenate([rest, silence(1.5)]), seed=3)
            answer = await events_until(connection, "response.done")
            server_side = connection_with(rt_server, "Talk.")
            return (playing + interrupted, truncated[-1], retrieved[-1].item, answer, server_side.session,
                    server_side.conversation, item_id, cut, too_far[-1])

    reply, truncated, item, answer, session, conversation, item_id, cut, too_far = run(scenario())
    assert too_far.error.code == "invalid_value" and too_far.error.param == "audio_end_ms"
    names = types(reply)
    assert "input_audio_buffer.speech_started" in names
    done = reply[-1].response
    assert done.status == "cancelled" and done.status_details.reason == "turn_detected"
    streamed = reply[names.index("response.output_audio_transcript.done")].transcript
    assert truncated.item_id == item_id and truncated.audio_end_ms == 200
    # 0.2 s heard = 10 codec tokens: in proportion when the Talker had said the whole text, else one
    # text token at ~15 codec tokens per text token (of the tokens the cancel kept: those of the audio sent)
    kept, generated, codec_tokens, speech_complete = cut
    heard_codes = 10
    expected = math.ceil(generated * heard_codes / codec_tokens) if speech_complete else \
        math.ceil(heard_codes / CODEC_TOKENS_PER_TEXT_TOKEN)
    assert kept == min(expected, generated)
    transcript = item.content[0].transcript
    assert len(transcript) < len(streamed)
    # the conversation the session continued: the truncated reply, then the spoken turn and its answer
    messages = session.messages
    assert [m["role"] for m in messages[-4:]] == ["user", "assistant", "user", "assistant"]
    assert messages[-3]["content"] == transcript and messages[-2]["content"][0]["type"] == "audio"
    assert answer[-1].response.status in ("completed", "incomplete")
    # the session followed the truncation in place (no start over): it has read every item
    assert not conversation.stale and conversation.fed_ids == [item.id for item in conversation.items]
    state = session.state
    assert state.cache.length == len(state.fed_token_ids) == state.talker_context.length


# -- dialects and bad input -------------------------------------------------------------------------------


def test_beta_clients_get_beta_names(rt_server):
    async def scenario():
        async with client(rt_server).beta.realtime.connect(model="omni-tiny") as connection:
            created = await connection.recv()
            await connection.session.update(session={"modalities": ["text", "audio"], "voice": "Ethan",
                                                     "input_audio_format": "pcm16", "turn_detection": None})
            updated = await connection.recv()
            await connection.conversation.item.create(item={"type": "message", "role": "user",
                                                            "content": [{"type": "input_text", "text": "Hi"}]})
            item = await connection.recv()
            await connection.response.create()
            return created, updated, item, await events_until(connection, "response.done")

    created, updated, item, events = run(scenario())
    assert created.type == "session.created" and created.session.modalities == ["text", "audio"]
    assert created.session.input_audio_format == "pcm16"
    assert updated.session.voice == "Ethan" and updated.session.turn_detection is None
    assert item.type == "conversation.item.created"
    names = set(types(events))
    assert {"response.audio.delta", "response.audio_transcript.delta", "response.audio_transcript.done",
            "response.audio.done", "conversation.item.created"} <= names
    assert not any(name.startswith(("response.output_", "conversation.item.added", "conversation.item.done"))
                   and name not in ("response.output_item.added", "response.output_item.done") for name in names)
    assert events[-1].response.output[0].content[0].type == "audio"


def test_browser_subprotocols_are_answered(rt_server):
    from websockets.asyncio.client import connect

    async def scenario(subprotocols):
        url = rt_server.base_url.replace("http", "ws") + "/v1/realtime?model=omni-tiny"
        async with connect(url, subprotocols=subprotocols) as ws:
            return ws.subprotocol, json.loads(await asyncio.wait_for(ws.recv(), EVENT_TIMEOUT_S))

    chosen, created = run(scenario(["realtime", "openai-insecure-api-key.sk-test"]))
    assert chosen == "realtime" and created["session"]["output_modalities"] == ["audio"]
    chosen, created = run(scenario(["realtime", "openai-insecure-api-key.sk-test", "openai-beta.realtime-v1"]))
    assert chosen == "realtime" and created["session"]["modalities"] == ["text", "audio"]


BAD_EVENTS = [
    ("not json", "invalid_json", None),
    ("[1, 2]", "invalid_event", None),
    ('{"type": "no.such.event", "event_id": "e1"}', "invalid_event_type", "type"),
    ('{"type": "session.update", "event_id": "e2", "session": {"type": "realtime", "audio": {"input": '
     '{"turn_detection": {"type": "server_vad", "threshold": "high"}}}}}', "invalid_value",
     "session.audio.input.turn_detection.threshold"),
    ('{"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"voice": "Bob"}}}}',
     "unknown_voice", "session.audio.output.voice"),
    ('{"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"format": '
     '{"type": "audio/pcmu"}}}}}', "invalid_value", "session.audio.input.format"),
    ('{"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": '
     '{"type": "server_vad", "silence_duration_ms": 5}}}}}', "invalid_value",
     "session.audio.input.turn_detection.silence_duration_ms"),
    ('{"type": "input_audio_buffer.append", "audio": "%%%"}', "invalid_value", "audio"),
    ('{"type": "input_audio_buffer.append", "audio": "AAAA"}', "invalid_value", "audio"),  # 3 bytes
    ('{"type": "input_audio_buffer.append"}', "missing_required_parameter", "audio"),
    ('{"type": "conversation.item.truncate", "item_id": "nope", "content_index": 0, "audio_end_ms": 5}',
     "item_not_found", "item_id"),
    ('{"type": "conversation.item.create", "item": {"type": "function_call", "name": "f", "arguments": "{}"}}',
     "invalid_value", "item.type"),
    ('{"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": '
     '[{"type": "input_image", "image_url": "http://example.com/a.png"}]}}', "invalid_value",
     "item.content.0.image_url"),
    ('{"type": "response.cancel"}', "response_cancel_not_active", "response_id"),
    ('{"type": "response.create"}', "no_new_input", None),
    ('{"type": "output_audio_buffer.clear"}', "invalid_event_type", "type"),
]


def test_malformed_events_get_an_error_naming_the_problem_and_the_session_goes_on(rt_server):
    async def scenario():
        async with client(rt_server).realtime.connect(model="omni-tiny") as connection:
            await connection.recv()
            errors = []
            for raw, _, _ in BAD_EVENTS:
                await connection.send_raw(raw)
                errors.append(await asyncio.wait_for(connection.recv(), EVENT_TIMEOUT_S))
            await connection.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await connection.recv()
            await connection.conversation.item.create(item={"type": "message", "role": "user",
                                                            "content": [{"type": "input_text", "text": "Hi"}]})
            await connection.response.create()
            return errors, await events_until(connection, "response.done")

    errors, events = run(scenario())
    for (raw, code, param), event in zip(BAD_EVENTS, errors, strict=True):
        assert event.type == "error", raw
        assert (event.error.code, event.error.param) == (code, param), (raw, event.error)
        assert event.error.message
    assert errors[2].error.event_id == "e1" and errors[3].error.event_id == "e2"
    assert "threshold" in errors[3].error.message and "Chelsie" in errors[4].error.message
    assert events[-1].response.status in ("completed", "incomplete")


def test_an_openai_voice_falls_back_to_the_default_with_a_note(rt_server):
    async def scenario():
        async with client(rt_server).realtime.connect(model="omni-tiny") as connection:
            await connection.recv()
            await connection.session.update(session={"type": "realtime", "audio": {"output": {"voice": "alloy"}}})
            return await connection.recv()

    updated = run(scenario())
    assert updated.session.audio.output.voice == "Chelsie"
    assert "alloy" in updated.session.model_extra["omni"]["notes"][0]


def test_two_connections_at_the_same_time_keep_their_own_conversations(rt_server):
    async def conversation(word: str):
        async with client(rt_server).realtime.connect(model="omni-tiny") as connection:
            await connection.recv()
            await connection.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await connection.recv()
            await connection.conversation.item.create(item={"type": "message", "role": "user",
                                                            "content": [{"type": "input_text", "text": word}]})
            await events_until(connection, "conversation.item.done")
            await asyncio.sleep(0.5)  # both are open now
            sessions = len(live_sessions(rt_server))
            await connection.response.create()
            done = await events_until(connection, "response.done")
            mine = connection_with(rt_server, word)
            return sessions, done[-1].response.status, mine.session.messages[0]["content"][0]["text"]

    async def both():
        return await asyncio.gather(conversation("apples"), conversation("pears"))

    (sessions_a, status_a, first_a), (sessions_b, status_b, first_b) = run(both())
    assert sessions_a == sessions_b == 2
    assert status_a in ("completed", "incomplete") and status_b in ("completed", "incomplete")
    assert (first_a, first_b) == ("apples", "pears")


# -- limits and close codes -------------------------------------------------------------------------------


def _ws_url(server, model="omni-tiny") -> str:
    return server.base_url.replace("http", "ws") + f"/v1/realtime?model={model}"


async def _until_closed(ws) -> list[dict]:
    from websockets.exceptions import ConnectionClosed

    events = []
    try:
        while True:
            events.append(json.loads(await asyncio.wait_for(ws.recv(), EVENT_TIMEOUT_S)))
    except ConnectionClosed:
        return events


def test_unknown_model_busy_server_full_buffer_and_idle_sessions_close_cleanly(strict_rt_server):
    from websockets.asyncio.client import connect

    async def scenario():
        async with connect(_ws_url(strict_rt_server, "gpt-realtime")) as ws:
            wrong_model = await _until_closed(ws), ws.close_code
        async with connect(_ws_url(strict_rt_server)) as first:
            assert json.loads(await first.recv())["type"] == "session.created"
            async with connect(_ws_url(strict_rt_server)) as second:
                busy = await _until_closed(second), second.close_code
            await first.send(json.dumps({"type": "session.update", "session": {
                "type": "realtime", "audio": {"input": {"turn_detection": None}}}}))
            await first.recv()
            piece = base64.b64encode(silence(0.4).tobytes()).decode()
            for _ in range(3):  # 1.2 s into a 1 s buffer: the third append is refused
                await first.send(json.dumps({"type": "input_audio_buffer.append", "audio": piece}))
            idle = await _until_closed(first), first.close_code  # then nothing: idle after 1.5 s
            return wrong_model, busy, idle

    (wrong, wrong_code), (busy, busy_code), (idle, idle_code) = run(scenario())
    assert [e["error"]["code"] for e in wrong] == ["model_not_found"] and wrong_code == 1008
    assert [e["error"]["code"] for e in busy] == ["session_limit_reached"] and busy_code == 1013
    assert [e["error"]["code"] for e in idle] == ["input_audio_buffer_full", "idle_timeout"] and idle_code == 1000
    assert "1 s" in idle[0]["error"]["message"]


def test_responses_take_the_servers_generation_slots(strict_rt_server):
    """The one slot is the realtime response's while it runs: an HTTP request meanwhile is refused (no
    queue), and gets it once the response was cancelled."""
    import httpx

    body = {"model": "omni-tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
            "modalities": ["text"]}

    async def scenario():
        async with client(strict_rt_server).realtime.connect(model="omni-tiny") as connection:
            await connection.recv()
            await connection.session.update(session={"type": "realtime", "max_output_tokens": 12})
            await connection.recv()
            async with httpx.AsyncClient(timeout=EVENT_TIMEOUT_S) as http:
                for text in ["Talk.", "Go on.", "And more."]:
                    await connection.conversation.item.create(item={"type": "message", "role": "user", "content": [
                        {"type": "input_text", "text": text}]})
                    await connection.response.create()
                    await events_until(connection, "response.output_audio.delta")
                    during = await http.post(f"{strict_rt_server.v1}/chat/completions", json=body)
                    if during.status_code == 429:
                        break
                    # the random Talker ended the reply before the request came: not a test of sharing, again
                    await events_until(connection, "response.done")
                await connection.response.cancel()
                done = await events_until(connection, "response.done")
                after = await http.post(f"{strict_rt_server.v1}/chat/completions", json=body)
            return during, done[-1].response, after

    during, done, after = run(scenario())
    assert during.status_code == 429 and during.json()["error"]["code"] == "server_busy"
    # (the reply may just have ended by itself before the cancel arrived)
    assert done.status in ("cancelled", "completed", "incomplete")
    assert done.status != "cancelled" or done.status_details.reason == "client_cancelled"
    assert after.status_code == 200


def test_a_session_ends_at_its_maximum_length(strict_rt_server):
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async def scenario():
        events = []
        async with connect(_ws_url(strict_rt_server)) as ws:
            loop = asyncio.get_running_loop()
            opened = loop.time()
            try:
                while True:  # never idle: an event every 0.5 s
                    await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
                    events.append(json.loads(await asyncio.wait_for(ws.recv(), EVENT_TIMEOUT_S)))
                    await asyncio.sleep(0.5)
            except ConnectionClosed:
                lasted_s = loop.time() - opened
                return events + await _until_closed(ws), ws.close_code, lasted_s

    events, close_code, lasted_s = run(scenario())
    assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "session_expired"
    assert close_code == 1000 and 5.5 < lasted_s < 9.0
