"""Cutting a spoken reply to what its listener heard: the rule (omni.pipeline.text_tokens_heard), a
barge-in (OmniSession.cancel) and a later truncation (OmniSession.truncate_reply)."""

from __future__ import annotations

import math
import threading

import pytest

from omni.errors import InputError
from omni.events import AudioChunk, ReplyDone
from omni.pipeline import CODEC_TOKENS_PER_TEXT_TOKEN, ReplyOptions, ReplyRecord, run_reply, text_tokens_heard
from omni.sampling import SamplingParams
from omni.session import OmniSession
from omni.speech import SpeechOptions
from omni.talker.generate import TalkerOptions
from omni.thinker.generate import text_prompt
from tests.conftest import PAD_ID

GREEDY = SamplingParams(do_sample=False)
SAMPLES_PER_CODE = 480  # 24 kHz, 50 codec tokens per second


def _speech(max_codes=60):
    talker = TalkerOptions(sampling=SamplingParams(do_sample=False, repetition_penalty=1.05), max_codes=max_codes)
    return SpeechOptions(talker=talker, seed=3)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    from omni.loading import load_model

    return load_model(tiny_checkpoint, dtype="fp32", audio_output=True)


def test_the_rule_cuts_by_time_heard():
    # complete speech: in proportion (20 tokens said in 300 codes; 75 codes heard = a quarter)
    assert text_tokens_heard(75, 20, 300, speech_complete=True) == 5
    assert text_tokens_heard(76, 20, 300, speech_complete=True) == 6  # a token begun is kept
    assert text_tokens_heard(300, 20, 300, speech_complete=True) == 20
    assert text_tokens_heard(900, 20, 300, speech_complete=True) == 20
    # speech cut short: by the measured rate
    assert text_tokens_heard(150, 100, 160, speech_complete=False) == math.ceil(150 / CODEC_TOKENS_PER_TEXT_TOKEN)
    assert text_tokens_heard(10_000, 7, 160, speech_complete=False) == 7  # never more than the text
    # nothing heard, nothing kept; and never more than one token per codec token heard
    assert text_tokens_heard(0, 20, 300, speech_complete=True) == 0
    assert text_tokens_heard(3, 200, 6, speech_complete=True) == 3
    # the old rule (one text token per codec token) kept about 15 times too much
    assert text_tokens_heard(150, 1000, 0, speech_complete=False) <= 150 / 10


@pytest.mark.parametrize("engine", [True, False], ids=["engine", "alone"])
def test_a_barge_in_keeps_the_text_of_the_audio_handed_out(model, engine):
    session = OmniSession(model, sampling=GREEDY, engine=engine)
    chunks, samples = 0, 0
    for event in session.stream("Count slowly to one hundred.", return_audio=True, max_new_tokens=100,
                                speech=_speech(max_codes=400)):
        if isinstance(event, AudioChunk):
            chunks += 1
            samples += len(event.samples)
            if chunks == 2:
                session.cancel()
        if isinstance(event, ReplyDone):
            done = event
    assert done.finish_reason == "cancelled"
    heard_codes = samples // SAMPLES_PER_CODE
    expected = math.ceil(heard_codes / CODEC_TOKENS_PER_TEXT_TOKEN)
    assert done.usage.text_tokens == expected  # the random Thinker writes far more than that
    assert session.messages[-1] == {"role": "assistant", "content": done.text}
    assert session.state.cache.length == len(session.state.fed_token_ids)
    assert session.state.talker_context.length == len(session.state.fed_token_ids)


def test_truncate_cuts_text_cache_and_talker_and_the_next_turn_continues_from_there(model):
    session = OmniSession(model, sampling=GREEDY, engine=False)
    first = session.reply("Tell me about rivers.", return_audio=True, max_new_tokens=12, speech=_speech(max_codes=90))
    spoken = session.state.last_spoken
    assert spoken is not None and spoken.kept_tokens == len(spoken.token_ids) == first.done.usage.text_tokens
    audio_s = len(first.audio) / first.sample_rate_hz
    before = len(session.state.fed_token_ids)
    # the tiny random Talker stops at its code limit, so the cut goes by the measured rate
    heard_s = 0.5
    kept = min(len(spoken.token_ids), math.ceil(int(heard_s * 50) / CODEC_TOKENS_PER_TEXT_TOKEN))
    assert kept < len(spoken.token_ids) and heard_s < audio_s
    text = session.truncate_reply(heard_s)
    assert text == model.tokenizer.decode(spoken.token_ids[:kept])
    assert session.messages[-1] == {"role": "assistant", "content": text}
    state = session.state
    assert len(state.fed_token_ids) == before - (len(spoken.token_ids) - kept)
    assert state.cache.length == len(state.fed_token_ids) == state.talker_context.length
    assert state.pending_token_ids[:-1] == spoken.token_ids[kept - 1:kept]
    # a longer cut later never grows it back; a shorter one cuts further
    assert session.truncate_reply(audio_s) == text
    fed, pending = list(state.fed_token_ids), list(state.pending_token_ids)

    second = session.reply("And lakes?", return_audio=True, max_new_tokens=6, speech=_speech(max_codes=30))
    # the same conversation, truncated reply included, as one prompt from nothing: same text, same speech
    full = session.state.fed_token_ids[:len(fed) + second.done.usage.prompt_tokens]
    assert full[:len(fed)] == fed and full[len(fed):len(fed) + len(pending)] == pending
    cache = model.model.thinker.model.new_cache(1, len(full) + 8)
    events = list(run_reply(model, text_prompt([full], pad_id=PAD_ID), ReplyOptions(6, GREEDY, _speech(max_codes=30)),
                            cache, threading.Event(), ReplyRecord()))
    assert events[-1].text == second.text
    assert events[-1].codec_codes == second.done.codec_codes


def test_truncate_refuses_what_it_cannot_cut(model):
    session = OmniSession(model, sampling=GREEDY, engine=False)
    with pytest.raises(InputError, match="not a spoken reply"):
        session.truncate_reply(1.0)
    session.reply("Hi", return_audio=False, max_new_tokens=3)
    with pytest.raises(InputError, match="not a spoken reply"):
        session.truncate_reply(1.0)
    session.reply("Hi", return_audio=True, max_new_tokens=3, speech=_speech(max_codes=30))
    with pytest.raises(InputError, match="seconds"):
        session.truncate_reply(float("nan"))


def test_truncating_a_reply_the_talker_finished_cuts_in_proportion(model):
    session = OmniSession(model, sampling=GREEDY, engine=False)
    session.reply("Tell me about rivers.", return_audio=True, max_new_tokens=12, speech=_speech(max_codes=90))
    spoken = session.state.last_spoken
    # (the tiny random Talker stops at its code limit; a trained one ends the utterance itself)
    spoken.speech_complete = True
    heard_s = 0.9  # 45 of its codec tokens
    expected = math.ceil(len(spoken.token_ids) * 45 / spoken.codec_tokens)
    assert 0 < expected < len(spoken.token_ids)
    text = session.truncate_reply(heard_s)
    assert spoken.kept_tokens == expected and text == model.tokenizer.decode(spoken.token_ids[:expected])
    assert session.state.cache.length == len(session.state.fed_token_ids) == session.state.talker_context.length
