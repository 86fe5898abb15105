"""OmniSession with speech: streamed audio, barge-in, multi-turn Talker history, threads, errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from omni.engine.engine import TALKER_LEAD_CODES
from omni.errors import AudioOutputUnavailable, UnknownVoiceError
from omni.events import AudioChunk, ReplyDone
from omni.kv_cache import KVCache
from omni.pipeline import ReplyOptions, ReplyRecord, run_reply
from omni.sampling import SamplingParams
from omni.session import OmniSession
from omni.speech import SpeechOptions
from omni.thinker.generate import text_prompt
from omni.talker.generate import TalkerOptions
from tests.conftest import PAD_ID, run_in_threads

GREEDY = SamplingParams(do_sample=False)


def _speech(max_codes=60, voice=None, **options):
    talker = TalkerOptions(sampling=SamplingParams(do_sample=False, repetition_penalty=1.05), max_codes=max_codes)
    return SpeechOptions(voice=voice, talker=talker, seed=3, **options)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    from omni.loading import load_model

    return load_model(tiny_checkpoint, dtype="fp32", audio_output=True)


def _audio(events):
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    return np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32), chunks


@pytest.mark.parametrize("engine", [True, False], ids=["engine", "alone"])
def test_audio_starts_while_the_text_is_still_being_written(model, engine):
    session = OmniSession(model, sampling=GREEDY, engine=engine)
    events = list(session.stream("Tell me a long story.", return_audio=True, max_new_tokens=60,
                                 speech=_speech(max_codes=80)))
    kinds = [type(e).__name__ for e in events]
    first_audio = kinds.index("AudioChunk")
    last_text = len(kinds) - 1 - kinds[::-1].index("TextDelta")
    if not engine:
        assert first_audio < last_text  # the first chunk did not wait for the end of the text
    # (on the engine the first chunk is decoded by a codec worker while the loop goes on writing: with
    # the tiny model's instant Thinker the text may end first; the order is no longer fixed)
    done = events[-1]
    samples, chunks = _audio(events)
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    assert all(c.sample_rate_hz == 24000 and c.samples.dtype == np.float32 for c in chunks)
    assert len(samples) == done.usage.codec_tokens * 480 == 80 * 480
    assert done.timings.first_audio_s is not None and done.timings.first_audio_s < done.timings.total_s
    assert done.timings.audio_duration_s == pytest.approx(len(samples) / 24000)
    assert done.timings.real_time_factor == pytest.approx(done.timings.total_s / done.timings.audio_duration_s)
    assert done.timings.stage_s["talker"] > 0 and done.timings.stage_s["token2wav"] > 0
    assert len(done.codec_codes) == 80 and all(0 <= c <= 8193 for c in done.codec_codes)


def test_text_only_never_runs_the_talker_or_the_codec(model):
    calls = []
    hooks = [model.model.talker.register_forward_hook(lambda *a: calls.append("talker")),
             model.model.token2wav.code2wav_dit_model.register_forward_hook(lambda *a: calls.append("dit")),
             model.model.token2wav.code2wav_bigvgan_model.register_forward_hook(lambda *a: calls.append("vocoder"))]
    try:
        events = list(OmniSession(model).stream("Hello", return_audio=False, max_new_tokens=6))
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == []
    assert not any(isinstance(e, AudioChunk) for e in events)
    assert events[-1].usage.codec_tokens == 0 and events[-1].timings.first_audio_s is None


@pytest.mark.parametrize("engine", [True, False], ids=["engine", "alone"])
def test_barge_in_frees_the_talker_and_codec_and_keeps_the_spoken_text(model, monkeypatch, engine):
    talker_caches: list[KVCache] = []
    new_cache = model.model.talker.model.new_cache

    def recording_new_cache(*args, **kwargs):
        talker_caches.append(new_cache(*args, **kwargs))
        return talker_caches[-1]

    monkeypatch.setattr(model.model.talker.model, "new_cache", recording_new_cache)
    session = OmniSession(model, sampling=GREEDY, engine=engine)
    chunks = 0
    for event in session.stream("Count slowly to one hundred.", return_audio=True, max_new_tokens=100,
                                speech=_speech(max_codes=400)):
        if isinstance(event, AudioChunk):
            chunks += 1
            if chunks == 2:
                session.cancel()
        if isinstance(event, ReplyDone):
            done = event
    assert done.finish_reason == "cancelled"
    assert chunks == 2  # stopped within a step: no chunk after the cancel
    spoken_codes = (24 + 72) // 2  # two chunks: 24 + 72 mel frames
    # the Talker stopped long before its limit: alone, it runs one step ahead of the codec; on the engine,
    # which runs the codec beside the loop, at most TALKER_LEAD_CODES ahead of the codes the codec has taken
    assert done.usage.codec_tokens < (100 if not engine else spoken_codes + 3 * TALKER_LEAD_CODES) < 400
    assert 1 <= done.usage.text_tokens <= spoken_codes  # text kept only as far as it was spoken
    assert session.messages[-1] == {"role": "assistant", "content": done.text}
    assert session.state.cache.length == len(session.state.fed_token_ids)
    assert session.state.talker_context.length == len(session.state.fed_token_ids)
    assert talker_caches and talker_caches[0].keys == []  # the Talker's cache was freed
    follow = session.reply("Go on.", return_audio=True, max_new_tokens=5, speech=_speech(max_codes=30))
    assert follow.done.finish_reason in ("stop", "length") and follow.audio is not None
    assert talker_caches[-1].keys == []  # freed after a normal end as well


def test_multi_turn_speech_equals_replaying_the_whole_history(model):
    session = OmniSession(model, sampling=GREEDY)
    session.reply("Tell me about rivers.", return_audio=True, max_new_tokens=6, speech=_speech(max_codes=30))
    history = list(session.state.fed_token_ids)
    second = session.reply("And lakes?", return_audio=True, max_new_tokens=6, speech=_speech(max_codes=30))
    prompt_ids = session.state.fed_token_ids[len(history):][: second.done.usage.prompt_tokens]
    assert session.state.talker_context.length == len(session.state.fed_token_ids)

    # the same conversation as one prompt, Thinker and Talker starting from nothing
    full = history + prompt_ids
    cache = model.model.thinker.model.new_cache(1, len(full) + 8)
    events = list(run_reply(model, text_prompt([full], pad_id=PAD_ID), ReplyOptions(6, GREEDY, _speech(max_codes=30)),
                            cache, threading.Event(), ReplyRecord()))
    replay = events[-1]
    assert replay.text == second.text
    assert replay.codec_codes == second.done.codec_codes
    samples, _ = _audio(events)
    assert np.abs(samples - second.audio).max() < 1e-4


def test_voice_per_turn_and_unknown_voices(model):
    session = OmniSession(model, sampling=GREEDY)
    chelsie = session.reply("Hi", return_audio=True, voice="Chelsie", max_new_tokens=3, speech=_speech(max_codes=24))
    session.reset()
    ethan = session.reply("Hi", return_audio=True, voice="Ethan", max_new_tokens=3, speech=_speech(max_codes=24))
    assert chelsie.text == ethan.text
    assert not np.allclose(chelsie.audio, ethan.audio)
    with pytest.raises(UnknownVoiceError, match="Bob.*Chelsie, Ethan"):
        session.stream("Hi", return_audio=True, voice="Bob")
    with pytest.raises(UnknownVoiceError, match="available voices: Chelsie, Ethan"):
        OmniSession(model, voice="Nobody")
    assert session.reply("still usable?", return_audio=False, max_new_tokens=2).done.finish_reason in ("stop", "length")


def test_audio_from_a_text_only_model_is_a_clear_error(tiny_text_model):
    session = OmniSession(tiny_text_model)
    with pytest.raises(AudioOutputUnavailable, match="text only"):
        session.stream("Hi", return_audio=True)
    assert [type(e) for e in session.stream("Hi", max_new_tokens=2)][-1] is ReplyDone  # default: text


def test_eight_spoken_sessions_in_threads_match_running_alone(model):
    prompts = [f"Say the number {i}." for i in range(8)]

    def speak(prompt):
        reply = OmniSession(model, sampling=GREEDY).reply(prompt, return_audio=True, max_new_tokens=3,
                                                          speech=_speech(max_codes=24))
        return reply.text, reply.done.codec_codes, reply.audio

    alone = [speak(p) for p in prompts]
    together = run_in_threads(speak, prompts)
    for (text, codes, audio), (text2, codes2, audio2) in zip(alone, together):
        assert text == text2 and codes == codes2
        assert np.abs(audio - audio2).max() < 1e-5


def test_a_bf16_model_speaks_with_its_codec_in_fp32(tiny_checkpoint):
    from omni.loading import load_model

    loaded = load_model(tiny_checkpoint, dtype="bf16", audio_output=True)
    assert loaded.model.talker.dtype == torch.bfloat16
    assert loaded.model.token2wav.code2wav_dit_model.proj_out.weight.dtype == torch.float32
    reply = OmniSession(loaded, sampling=GREEDY).reply("Hi", return_audio=True, max_new_tokens=3,
                                                       speech=_speech(max_codes=30))
    assert reply.audio.dtype == np.float32 and 0 < len(reply.audio) <= 30 * 480
    assert np.isfinite(reply.audio).all() and np.abs(reply.audio).max() > 0.01


def test_a_spoken_turn_cut_short_keeps_no_spare_memory(model):
    session = OmniSession(model, sampling=GREEDY)  # max_new_tokens 512 per turn by default
    chunks = 0
    for event in session.stream("Count slowly to one hundred.", return_audio=True, max_new_tokens=3000,
                                speech=_speech(max_codes=400)):
        chunks += isinstance(event, AudioChunk)
        if chunks == 1:
            session.cancel()
    assert event.finish_reason == "cancelled"
    state = session.state
    # the Thinker's cache reserved 3000 new tokens for the turn; most of that went back
    assert state.cache.capacity <= 2 * (state.cache.length + session.max_new_tokens) < 3000
    # the Talker's view of the conversation is exactly as long as the conversation, in its own storage
    embeds = state.talker_context.embeds
    assert state.talker_context.length == len(state.fed_token_ids) == state.cache.length
    assert embeds.untyped_storage().nbytes() == embeds.numel() * embeds.element_size()
    follow = session.reply("Go on.", return_audio=True, max_new_tokens=5, speech=_speech(max_codes=30))
    assert follow.done.finish_reason in ("stop", "length") and follow.audio is not None
    session.reset()
    assert session.state.cache is None and session.state.talker_context is None
