"""The per-user conversation logic behind the app, on the tiny checkpoint, without a browser."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from omni.demo.turn import KEPT_SPOKEN_TURNS, SPOKEN_TURN_GONE, Conversation, ReplySettings, describe_latency, media_kind
from omni.errors import InputError
from omni.pipeline import CODEC_TOKENS_PER_TEXT_TOKEN

GREEDY = dict(temperature=0.0, speak=False)


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    """The tiny model as the demo loads it (audio output when the checkpoint and build have it)."""
    from omni.loading import load_model

    return load_model(tiny_checkpoint, dtype="fp32")


@pytest.fixture
def conversation(loaded, tmp_path) -> Conversation:
    return Conversation(loaded, media_dir=tmp_path)


def run_reply(conversation: Conversation, message, **settings):
    return list(conversation.reply(message, ReplySettings(**settings)))


def test_uploads_are_sorted_by_kind_and_bad_turns_refused(conversation, tmp_path):
    assert [media_kind(n) for n in ("a.PNG", "b.mp3", "c.webm", "d.jpeg", "e.opus")] == [
        "image", "audio", "video", "image", "audio"]
    with pytest.raises(InputError, match="not an image, audio or video"):
        media_kind("notes.txt")
    with pytest.raises(InputError, match="empty"):
        conversation.user_turn("   ", [])
    with pytest.raises(InputError, match="at most 8"):
        conversation.user_turn("hi", [f"{i}.png" for i in range(9)])
    assert conversation.history == []  # refused turns leave no trace
    message = conversation.user_turn("What is this?", ["cat.png", "talk.wav"])
    assert message == {"role": "user", "content": [
        {"type": "image", "image": "cat.png"}, {"type": "audio", "audio": "talk.wav"},
        {"type": "text", "text": "What is this?"}]}
    assert conversation.history == [{"role": "user", "content": [{"path": "cat.png"}, {"path": "talk.wav"},
                                                                  "What is this?"]}]


def test_reply_streams_into_the_history_with_latency(conversation):
    updates = run_reply(conversation, conversation.user_turn("Hello!"), max_new_tokens=8, **GREEDY)
    done = updates[-1].done
    assert done is not None and done.finish_reason in ("stop", "length")
    texts = [u.text for u in updates]
    assert all(a == b[:len(a)] for a, b in zip(texts, texts[1:]))  # each update extends the last
    assert updates[-1].text == done.text and done.text
    assert len(updates) >= 3  # streamed, not delivered at once
    assert conversation.history[-1] == {"role": "assistant", "content": done.text}
    assert "first text" in updates[-1].latency_text and "total" in updates[-1].latency_text
    # the second turn continues the same session
    run_reply(conversation, conversation.user_turn("And then?"), max_new_tokens=4, **GREEDY)
    assert [m["role"] for m in conversation.history] == ["user", "assistant"] * 2
    assert len(conversation.session.messages) == 4


def test_bad_media_is_an_error_in_the_chat_not_a_crash(conversation, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    updates = run_reply(conversation, conversation.user_turn("look", [str(broken)]), max_new_tokens=4, **GREEDY)
    assert updates[-1].error and "broken.png" in updates[-1].error
    assert conversation.history[-1]["content"].startswith("⚠")
    # the conversation still works afterwards
    assert run_reply(conversation, conversation.user_turn("hi"), max_new_tokens=4, **GREEDY)[-1].done


def test_stop_cancels_within_a_few_steps_and_keeps_the_partial_reply(conversation):
    updates = conversation.reply(conversation.user_turn("Tell me a long story"),
                                 ReplySettings(max_new_tokens=4000, **GREEDY))
    seen = [next(updates) for _ in range(5)]
    assert conversation.replying
    conversation.stop()
    rest = list(updates)
    done = rest[-1].done
    assert done.finish_reason == "cancelled"
    assert len(rest) <= 4  # stopped within a step or two
    assert done.usage.text_tokens < 20
    assert done.text.startswith(seen[-1].text)
    assert not conversation.replying
    assert conversation.history[-1]["content"] == done.text
    assert conversation.session.messages[-1] == {"role": "assistant", "content": done.text}


def test_reset_and_new_system_prompt_forget_the_conversation(conversation):
    run_reply(conversation, conversation.user_turn("hi"), max_new_tokens=2, **GREEDY)
    conversation.reset()
    assert conversation.history == [] and conversation.session.messages == []
    run_reply(conversation, conversation.user_turn("hi"), max_new_tokens=2, **GREEDY)
    assert not conversation.set_system_prompt(conversation.system_prompt)
    assert conversation.set_system_prompt("You are a pirate.")
    assert conversation.history == [] and conversation.session.system_prompt == "You are a pirate."


def test_spoken_turn_is_answered_and_speech_during_a_reply_barges_in(conversation, spoken):
    samples, rate = spoken
    pause = np.zeros(int(1.5 * rate), np.int16)
    step = rate // 4
    # a spoken question: heard in 250 ms chunks, queued once the pause ends it
    for start in range(0, samples.size + pause.size, step):
        conversation.hear(np.concatenate([samples, pause])[start:start + step], rate)
    message = conversation.next_spoken_turn()
    assert message is not None and conversation.next_spoken_turn() is None
    (item,) = message["content"]
    assert item["type"] == "audio" and item["audio"].endswith(".wav")
    assert conversation.history[-1] == {"role": "user", "content": [{"path": item["audio"]}]}

    # answered with a long reply, running in its own thread as Gradio runs it
    finished = []
    worker = threading.Thread(target=lambda: finished.extend(conversation.reply(
        message, ReplySettings(max_new_tokens=4000, **GREEDY))))
    worker.start()
    deadline = time.monotonic() + 30
    while not conversation.replying and time.monotonic() < deadline:
        time.sleep(0.01)
    assert conversation.replying
    # the user starts talking over it: the reply stops as soon as speech is confirmed
    events = []
    for start in range(0, samples.size, step):
        events += conversation.hear(samples[start:start + step], rate)
        if events:
            break
    assert [e.kind for e in events] == ["speech_start"]
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert finished[-1].done.finish_reason == "cancelled"
    assert finished[-1].done.usage.text_tokens < 4000


def test_a_stopped_spoken_reply_keeps_what_the_user_can_have_heard(conversation):
    """The browser plays speech as it arrives: from the first chunk to the stop is the most the user
    heard. The chat and the session keep the reply as far as that (omni.pipeline.text_tokens_heard),
    not as far as the text was written."""
    message = conversation.user_turn("Talk to me.")
    updates, first_seen, stopped_at = [], None, None
    for update in conversation.reply(message, ReplySettings(max_new_tokens=60, temperature=0.0, speak=True)):
        updates.append(update)
        if update.audio_wav is not None:
            if first_seen is None:
                first_seen = time.perf_counter()
            elif stopped_at is None:
                stopped_at = time.perf_counter()
                conversation.stop()
    assert stopped_at is not None and updates[-1].done is not None
    done = next(u.done for u in updates if u.done is not None)
    assert done.finish_reason == "cancelled"
    written = max(len(u.text) for u in updates)
    kept = conversation.session.messages[-1]["content"]
    assert conversation.history[-1]["content"] == updates[-1].text == kept
    # the test saw the first chunk a little after the conversation handed it out: one token of slack
    heard_codes = (stopped_at - first_seen) * 50
    spoken = conversation.session.state.last_spoken
    assert kept == conversation.loaded.tokenizer.decode(spoken.token_ids[:spoken.kept_tokens])
    if spoken.speech_complete:  # the Talker had said the whole text: in proportion to the time heard
        most = math.ceil(len(spoken.token_ids) * heard_codes / spoken.codec_tokens)
    else:
        most = math.ceil(heard_codes / CODEC_TOKENS_PER_TEXT_TOKEN)
    assert spoken.kept_tokens <= most + 1
    assert len(kept) < written


def test_describe_latency_prefers_the_pipeline_first_audio():
    from omni.events import ReplyDone, Timings, Usage

    done = ReplyDone("hi", "stop", Usage(3, 2, 10), Timings(first_text_s=0.1, first_audio_s=0.42, total_s=1.0,
                                                             audio_duration_s=2.0))
    assert describe_latency(done, 0.9).startswith("first audio 0.42 s")
    measured = ReplyDone("hi", "stop", Usage(3, 2), Timings(first_text_s=0.1, total_s=1.0))
    assert describe_latency(measured, 0.9).startswith("first audio 0.90 s")
    assert describe_latency(None) == ""


def test_spoken_reply_streams_audio_chunks_with_first_audio_latency(conversation, loaded):
    """Needs the Talker/Token2Wav stages in the reply pipeline. Stopped once audio flows (the random
    tiny Talker would otherwise speak for a long time)."""
    updates = []
    stream = conversation.reply(conversation.user_turn("Say something"), ReplySettings(
        max_new_tokens=16, temperature=0.0, speak=True, voice=(loaded.voices or [None])[0]))
    for update in stream:
        updates.append(update)
        if sum(1 for u in updates if u.audio_wav) == 2:
            conversation.stop()
    assert updates[-1].error is None, updates[-1].error
    chunks = [u.audio_wav for u in updates if u.audio_wav]
    assert len(chunks) >= 2, "the reply streamed no audio chunk"
    assert all(c[:4] == b"RIFF" and len(c) > 44 for c in chunks)
    assert updates[-1].first_audio_s is not None
    assert updates[-1].done.finish_reason in ("cancelled", "stop", "length")
    assert "first audio —" not in updates[-1].latency_text


def _history_paths(conversation: Conversation) -> list[str]:
    return [item["path"] for entry in conversation.history if isinstance(entry["content"], list)
            for item in entry["content"] if isinstance(item, dict)]


def test_spoken_turn_recordings_are_bounded_and_deleted_with_the_conversation(loaded, tmp_path):
    shared = tmp_path / "media"  # the app gives every conversation the same dir
    other = Conversation(loaded, media_dir=shared)
    other.voice_turn(np.zeros(8000, np.float32))
    conversation = Conversation(loaded, media_dir=shared)
    noise = np.random.default_rng(0).uniform(-0.1, 0.1, 8000).astype(np.float32)
    turns = KEPT_SPOKEN_TURNS + 4
    for turn in range(turns):
        message = conversation.voice_turn(noise * (turn + 1) / turns)
        updates = run_reply(conversation, message, max_new_tokens=1, **GREEDY)
        assert updates[-1].error is None, updates[-1].error  # the session could still read this turn's file
        assert len(list(shared.iterdir())) <= KEPT_SPOKEN_TURNS + 1
    assert len(list(shared.iterdir())) == KEPT_SPOKEN_TURNS + 1  # its last recordings and the other's one
    # the chat names only files that exist (Gradio reads each one on every update); older turns say so
    paths = _history_paths(conversation)
    assert len(paths) == KEPT_SPOKEN_TURNS and all(Path(path).exists() for path in paths)
    gone = [entry for entry in conversation.history if entry["content"] == [SPOKEN_TURN_GONE]]
    assert len(gone) == turns - KEPT_SPOKEN_TURNS
    assert len(conversation.session.messages) == 2 * turns  # the conversation itself still holds every turn
    conversation.reset()
    assert [p.name for p in shared.iterdir()] == [Path(_history_paths(other)[0]).name]  # only the other's
    conversation.close()
    assert shared.is_dir()  # a dir it was given is not its own to remove


def test_a_conversation_without_a_media_dir_makes_a_private_one_and_removes_it(loaded):
    conversation = Conversation(loaded)
    conversation.voice_turn(np.zeros(8000, np.float32))
    media_dir = conversation.media_dir
    assert media_dir.is_dir() and len(list(media_dir.iterdir())) == 1
    assert media_dir.stat().st_mode & 0o077 == 0  # nobody else can read the user's recordings
    conversation.close()
    assert not media_dir.exists()
    conversation.voice_turn(np.zeros(8000, np.float32))  # still usable: a new private dir
    assert conversation.media_dir.is_dir() and conversation.media_dir != media_dir
    conversation.close()
