"""Spoken replies over HTTP, in OpenAI's audio-output shapes (these need the Talker and Token2Wav
stages: a build without them answers audio requests with 400 and these tests fail)."""

from __future__ import annotations

import base64
import io
import wave

import openai
import pytest

from tests.omni.server.conftest import greedy, pcm16_samples

SAMPLE_RATE_HZ = 24000


def _voice(served_model) -> str:
    return served_model.voices[0] if served_model.voices else "Chelsie"


def _speak(server, served_model, audio_format="wav", **options):
    """A short spoken reply; the seed makes the Talker's sampling and the codec's noise reproducible."""
    return server.openai().chat.completions.create(
        model="omni-tiny", messages=[{"role": "user", "content": "Say hello."}], max_tokens=4, seed=3,
        modalities=["text", "audio"], audio={"voice": _voice(served_model), "format": audio_format}, **greedy(),
        **options)


def test_streamed_audio_and_transcript_deltas(server, served_model):
    chunks = list(_speak(server, served_model, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert all(d.content is None for d in deltas)  # with audio, text is the audio's transcript (as OpenAI does)
    audio_deltas = [d.audio for d in deltas if d.audio is not None]
    ids = {a.id for a in audio_deltas}
    assert len(ids) == 1 and ids.pop().startswith("audio_")
    transcript = "".join(a.transcript or "" for a in audio_deltas)
    pcm = b"".join(base64.b64decode(a.data) for a in audio_deltas if a.data)
    assert transcript and len(pcm) > 0 and len(pcm) % 2 == 0
    assert audio_deltas[-1].expires_at is not None and audio_deltas[-1].data is None
    assert chunks[-1].usage.completion_tokens_details.audio_tokens > 0
    extras = next(c.model_extra["omni"] for c in chunks if c.model_extra.get("omni"))
    assert extras["time_to_first_audio_s"] > 0 and extras["audio_sample_rate_hz"] == SAMPLE_RATE_HZ
    # the streamed reply is the whole reply, cut in pieces
    whole = _speak(server, served_model, audio_format="pcm16")
    assert whole.choices[0].message.audio.transcript == transcript
    assert base64.b64decode(whole.choices[0].message.audio.data) == pcm


def test_whole_reply_as_wav(server, served_model):
    message = _speak(server, served_model).choices[0].message
    assert message.content is None and message.audio.transcript and message.audio.id.startswith("audio_")
    with wave.open(io.BytesIO(base64.b64decode(message.audio.data))) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, SAMPLE_RATE_HZ)
        frames = wav.readframes(wav.getnframes())
    assert len(frames) > 0
    pcm = base64.b64decode(_speak(server, served_model, audio_format="pcm16").choices[0].message.audio.data)
    assert pcm == frames
    assert 0 < abs(pcm16_samples(pcm).astype(float)).max() <= 32767


def test_audio_id_continues_the_conversation(server, served_model):
    first = _speak(server, served_model)
    follow_up = server.openai().chat.completions.create(
        model="omni-tiny", max_tokens=4, **greedy(),
        messages=[{"role": "user", "content": "Say hello."},
                  {"role": "assistant", "audio": {"id": first.choices[0].message.audio.id}},
                  {"role": "user", "content": "Again."}])
    alone = server.openai().chat.completions.create(
        model="omni-tiny", max_tokens=4, messages=[{"role": "user", "content": "Again."}], **greedy())
    assert follow_up.usage.prompt_tokens > alone.usage.prompt_tokens


def test_unknown_voice_is_400(server):
    with pytest.raises(openai.BadRequestError) as caught:
        server.openai().chat.completions.create(
            model="omni-tiny", messages=[{"role": "user", "content": "hi"}], modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "wav"})
    assert caught.value.code == "unknown_voice" and "alloy" in caught.value.message
