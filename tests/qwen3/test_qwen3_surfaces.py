"""The surfaces above OmniSession serve a Qwen3-Omni checkpoint unchanged: the OpenAI-compatible HTTP
server (streamed speech, its voices) and the Realtime WebSocket API (a text turn answered with audio,
then a truncation cut at 80 ms frames)."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import pytest

from omni.server.app import ServerConfig
from tests.omni.server.conftest import start_server

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def qwen3_server(qwen3_tiny_checkpoint):
    from omni.loading import load_model

    loaded = load_model(qwen3_tiny_checkpoint, dtype="fp32")
    running = start_server(loaded, ServerConfig(model_name="qwen3-tiny", max_concurrent=2, max_queue=4,
                                                default_max_tokens=4))
    yield running
    running.stop()


def test_models_and_streamed_speech_over_http(qwen3_server):
    stats = httpx.get(f"{qwen3_server.base_url}/health", timeout=10)
    assert stats.status_code == 200
    chunks = list(qwen3_server.openai().chat.completions.create(
        model="qwen3-tiny", messages=[{"role": "user", "content": "Say hello."}], max_tokens=3, temperature=0, seed=1,
        modalities=["text", "audio"], audio={"voice": "Chelsie", "format": "pcm16"}, stream=True,
        stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    audio = [d.audio for d in deltas if d.audio is not None]
    pcm = b"".join(base64.b64decode(a.data) for a in audio if a.data)
    transcript = "".join(a.transcript or "" for a in audio)
    assert transcript and len(pcm) >= 2 * 1365  # at least the first frame's samples (1920 - 555)
    samples = np.frombuffer(pcm, dtype="<i2")
    assert samples.std() > 10  # not silence
    usage = chunks[-1].usage
    # audio tokens are Qwen3 frames: one per 1920 samples of 24 kHz audio, give or take the codec's held-back tail
    frames = usage.completion_tokens_details.audio_tokens
    assert frames > 0 and abs(frames * 1920 - 555 - samples.size) <= 1920


def test_unknown_voice_is_a_400_naming_the_voices(qwen3_server):
    import openai

    with pytest.raises(openai.BadRequestError, match="Ethan"):
        qwen3_server.openai().chat.completions.create(
            model="qwen3-tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
            modalities=["text", "audio"], audio={"voice": "Nobody", "format": "wav"})


def test_realtime_text_turn_answered_with_audio(qwen3_server):
    pytest.importorskip("websockets", reason="the realtime tests need openai[realtime] (websockets)")
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=qwen3_server.v1, websocket_base_url=qwen3_server.v1.replace("http", "ws"),
                         api_key="unused", max_retries=0)

    async def events_until(connection, last_type):
        events = []
        while True:
            event = await asyncio.wait_for(connection.recv(), 60)
            events.append(event)
            if event.type == last_type:
                return events

    async def scenario():
        async with client.realtime.connect(model="qwen3-tiny") as connection:
            await connection.recv()
            await connection.session.update(session={"type": "realtime", "max_output_tokens": 3,
                                                     "audio": {"output": {"voice": "aiden"}}})
            await connection.recv()
            await connection.conversation.item.create(item={"type": "message", "role": "user",
                                                            "content": [{"type": "input_text", "text": "Hi!"}]})
            await events_until(connection, "conversation.item.done")
            await connection.response.create()
            return await events_until(connection, "response.done")

    events = asyncio.run(asyncio.wait_for(scenario(), 240))
    pcm = b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta")
    assert len(pcm) >= 2 * 1365
    done = events[-1].response
    assert done.usage.output_token_details.audio_tokens > 0


def test_batched_eval_equals_one_by_one(qwen3_tiny_checkpoint, tmp_path):
    """omni eval batches several left-padded prompts (images: deepstack features at each row's own
    positions; audio: several clips in one feature call): greedy answers equal those of batches of one."""
    import json

    from omni.eval.data import load_vqa
    from omni.eval.runner import run_eval
    from omni.loading import load_model
    from omni.tools.media_factory import drawing

    rows = []
    for index, (width, height) in enumerate([(84, 56), (64, 64), (120, 40)]):
        drawing(width, height, seed=index).save(tmp_path / f"{index}.png")
        rows.append({"id": f"q{index}", "image": f"{index}.png", "question": "What is shown?" + " Be brief." * index,
                     "answer": "shapes"})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    loaded = load_model(qwen3_tiny_checkpoint, dtype="fp32", audio_output=False)

    def predictions(batch_size: int) -> dict:
        out = tmp_path / f"batch{batch_size}"
        run_eval("vqa", loaded, load_vqa(manifest), out, batch_size=batch_size, max_new_tokens=5, progress=False)
        return {r["id"]: r["prediction"] for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}

    together, alone = predictions(3), predictions(1)
    assert together == alone
    assert all(text for text in together.values())


def test_omni_run_speaks_into_a_wav_file(qwen3_tiny_checkpoint, tmp_path, capsys):
    """`omni run ckpt/qwen3-tiny --prompt ...` speaks (the CLI, in process)."""
    import wave

    from omni import cli

    out = tmp_path / "reply.wav"
    code = cli.main(["run", str(qwen3_tiny_checkpoint), "--prompt", "Hello", "--max-new-tokens", "3", "--voice",
                     "Aiden", "--max-speech-seconds", "1", "--seed", "1", "--out", str(out), "--stats"])
    assert code == 0
    with wave.open(str(out)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)
        assert 0 < wav.getnframes() <= 24000 + 1920  # --max-speech-seconds 1, whole frames
    assert "[stats: weights" in capsys.readouterr().err


def test_demo_conversation_streams_speech(qwen3_tiny_checkpoint, tmp_path):
    from omni.demo.turn import Conversation, ReplySettings
    from omni.loading import load_model

    loaded = load_model(qwen3_tiny_checkpoint, dtype="fp32")
    conversation = Conversation(loaded, media_dir=tmp_path)
    updates = list(conversation.reply(conversation.user_turn("Say something"), ReplySettings(
        max_new_tokens=4, temperature=0.0, speak=True, voice="Chelsie")))
    assert updates[-1].error is None, updates[-1].error
    chunks = [u.audio_wav for u in updates if u.audio_wav]
    assert chunks and all(c[:4] == b"RIFF" and len(c) > 44 for c in chunks)
    assert updates[-1].first_audio_s is not None and updates[-1].done.text


@pytest.mark.parametrize(("grid", "seconds_per_grid", "audio_tokens"), [
    ((3, 4, 4), 2.0, 40), ((5, 2, 4), 0.5, 7), ((2, 4, 2), 1.0, 60), ((4, 2, 2), 0.3333, 13)])
def test_audio_in_video_interleaves_as_the_processor_does(qwen3_tiny_checkpoint, grid, seconds_per_grid,
                                                           audio_tokens):
    """A video with its sound track expands like Qwen3OmniMoeProcessor.replace_video_with_audio_token:
    video and audio tokens merged by time, between <|audio_start|> and <|audio_end|>."""
    from transformers import AutoProcessor

    from omni.encoders.image_processing import PatchGeometry
    from omni.qwen3.config import load_config
    from omni.qwen3.prompt_rules import interleave_by_time

    processor = AutoProcessor.from_pretrained(qwen3_tiny_checkpoint)
    config = load_config(qwen3_tiny_checkpoint).thinker
    expected = processor.replace_video_with_audio_token(
        {"video_grid_thw": [list(grid)], "video_second_per_grid": [seconds_per_grid]}, 0,
        {"num_audio_tokens": [audio_tokens]}, 0, position_id_per_seconds=config.position_id_per_seconds)
    got = interleave_by_time(grid, seconds_per_grid, audio_tokens, PatchGeometry(16, 2, 2), config)
    assert processor.tokenizer.convert_tokens_to_ids(processor.tokenizer.tokenize(expected)) == got


def test_truncate_reply_cuts_by_frames_and_the_next_turn_continues(qwen3_tiny_checkpoint):
    """A spoken Qwen3 reply cut to what was heard (the Realtime API's truncate): text, Thinker cache and
    Talker context keep the heard tokens (3.75 frames of 80 ms per text token), and the next turn speaks
    exactly as the same conversation read from nothing (a consistency check of omni's own turns, not a
    comparison with the reference)."""
    import math
    import threading

    from omni.pipeline import ReplyOptions, ReplyRecord, run_reply
    from omni.qwen3.speech import FRAMES_PER_TEXT_TOKEN
    from omni.loading import load_model
    from omni.sampling import SamplingParams
    from omni.session import OmniSession
    from omni.speech import SpeechOptions
    from omni.talker.generate import TalkerOptions
    from omni.thinker.generate import text_prompt

    loaded = load_model(qwen3_tiny_checkpoint, dtype="fp32")
    greedy = SamplingParams()
    speech = SpeechOptions(voice="Ethan", talker=TalkerOptions(sampling=SamplingParams(), max_codes=30,
                                                               codes_per_text_token=None))
    session = OmniSession(loaded, sampling=greedy, system_prompt=None, engine=False)
    first = session.reply("Tell me about rivers.", return_audio=True, max_new_tokens=12, speech=speech)
    spoken = session.state.last_spoken
    assert spoken is not None and len(spoken.token_ids) == first.done.usage.text_tokens
    heard_s = 0.4  # 5 frames: the Talker never said eos, so the cut goes by the rate
    kept = min(len(spoken.token_ids), math.ceil(int(heard_s * 12.5) / FRAMES_PER_TEXT_TOKEN))
    assert 1 <= kept < len(spoken.token_ids)
    text = session.truncate_reply(heard_s)
    state = session.state
    assert text == loaded.tokenizer.decode(spoken.token_ids[:kept])
    assert state.cache.length == len(state.fed_token_ids) == state.talker_context.length
    fed, pending = list(state.fed_token_ids), list(state.pending_token_ids)

    second = session.reply("And lakes?", return_audio=True, max_new_tokens=6, speech=speech)
    full = session.state.fed_token_ids[:len(fed) + second.done.usage.prompt_tokens]
    assert full[:len(fed)] == fed and full[len(fed):len(fed) + len(pending)] == pending
    cache = loaded.model.thinker.new_cache(1, len(full) + 8)
    events = list(run_reply(loaded, text_prompt([full], pad_id=loaded.generation.pad_token_id),
                            ReplyOptions(6, greedy, speech), cache, threading.Event(), ReplyRecord()))
    assert events[-1].text == second.text
    assert events[-1].codec_codes == second.done.codec_codes and len(second.done.codec_codes) >= 4
