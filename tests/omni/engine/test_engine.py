"""The serving engine: a reply's result does not depend on the batch it ran in; admission, stats."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from omni.engine import CacheMemoryError, Engine, EngineOptions
from omni.events import AudioChunk, ReplyDone, TextDelta
from omni.sampling import SamplingParams
from omni.session import OmniSession
from omni.speech import SpeechOptions
from omni.talker.generate import DEFAULT_TALKER_SAMPLING, TalkerOptions
from tests.conftest import run_in_threads

GREEDY = SamplingParams(do_sample=False)
PROMPTS = ["Say the number one.", "Tell me about rivers and the sea, please, at length.", "Hi",
           "Describe a busy market in the morning.", "How do birds fly?", "Explain rainbows to a child.",
           "What is music?", "Count to three."]


def _speech(seed: int, max_codes: int = 40) -> SpeechOptions:
    # sampled Talker codes (the reference's settings), seeded: a seeded reply is reproducible alone or batched
    sampling = replace(DEFAULT_TALKER_SAMPLING, seed=seed)
    return SpeechOptions(talker=TalkerOptions(sampling=sampling, max_codes=max_codes), seed=seed)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    from omni.loading import load_model

    return load_model(tiny_checkpoint, dtype="fp32", audio_output=True)


@pytest.fixture(scope="module")
def engine(model):
    engine = Engine(model, EngineOptions(max_batch=16))
    yield engine
    engine.close()


def _run(engine, index: int, started: threading.Event | None = None, wait_for: threading.Event | None = None,
         cancel_after: int | None = None):
    """One reply of the mixed load: even rows speak (seeded Talker sampling), odd rows are text only,
    row 5 samples its text with a seed; lengths differ. Returns (text, codes, audio, finish_reason)."""
    if wait_for is not None:
        assert wait_for.wait(60)
    session = OmniSession(engine.loaded, sampling=GREEDY, engine=engine)
    spoken = index % 2 == 0
    options = dict(return_audio=spoken, max_new_tokens=3 + index % 4)
    if spoken:
        options["speech"] = _speech(seed=index)
    if index == 5:
        options.update(do_sample=True, temperature=0.8, seed=11)
    text, chunks, done = "", [], None
    with session.stream(PROMPTS[index], **options) as events:
        for count, event in enumerate(events):
            if started is not None and isinstance(event, AudioChunk):
                started.set()
            if isinstance(event, TextDelta):
                text += event.text
            elif isinstance(event, AudioChunk):
                chunks.append(event.samples)
            elif isinstance(event, ReplyDone):
                done = event
            if cancel_after is not None and count + 1 == cancel_after:
                events.close()
                return text, None, None, "cancelled", session.messages
    audio = np.concatenate(chunks) if chunks else None
    return text, done.codec_codes, audio, done.finish_reason, session.messages


def test_batched_replies_equal_each_reply_run_alone(engine):
    """8 replies of different lengths, text-only and spoken mixed, some joining while others already
    speak, one cancelled midway: each of the others gives exactly the text and codes (and the audio,
    to float rounding) it gives alone."""
    alone = [_run(engine, i) for i in range(8)]
    assert any(a[2] is not None for a in alone) and any(a[2] is None for a in alone)
    speaking = threading.Event()

    def together(index):
        if index in (6, 7):  # admitted once another reply is already playing audio
            return _run(engine, index, wait_for=speaking)
        if index == 3:
            return _run(engine, index, cancel_after=2)
        return _run(engine, index, started=speaking if index == 0 else None)

    batched = run_in_threads(together, list(range(8)))
    assert engine.stats()["replies_finished"] >= 16
    for index, (mine, theirs) in enumerate(zip(batched, alone)):
        if index == 3:
            assert mine[3] == "cancelled"
            continue
        assert mine[0] == theirs[0], index
        assert mine[1] == theirs[1], index
        assert mine[3] == theirs[3]
        if theirs[2] is None:
            assert mine[2] is None
        else:
            assert mine[2].shape == theirs[2].shape
            assert np.abs(mine[2] - theirs[2]).max() < 1e-4
    # the engine really batched: several replies were live at once
    assert engine.peak_batch >= 4


def test_eight_sessions_in_threads_on_one_engine_equal_running_alone(engine):
    """Multi-turn sessions (their caches carried from turn to turn) sharing the engine."""

    def conversation(index):
        session = OmniSession(engine.loaded, sampling=GREEDY, engine=engine)
        first = session.reply(PROMPTS[index], return_audio=False, max_new_tokens=4)
        second = session.reply("And then?", return_audio=index % 3 == 0, max_new_tokens=3,
                               speech=_speech(seed=index, max_codes=24) if index % 3 == 0 else None)
        return first.text, second.text, second.done.codec_codes

    alone = [conversation(i) for i in range(8)]
    together = run_in_threads(conversation, list(range(8)))
    assert together == alone


def test_a_cancelled_reply_keeps_what_its_reader_received(engine):
    session = OmniSession(engine.loaded, sampling=GREEDY, engine=engine)
    with session.stream("Tell me a long story.", return_audio=False, max_new_tokens=40) as events:
        first = next(events)
        time.sleep(0.2)  # the engine runs ahead of this reader meanwhile
    assert isinstance(first, TextDelta)
    assert session.messages[-1] == {"role": "assistant", "content": first.text}
    again = session.reply("Go on.", return_audio=False, max_new_tokens=3)
    assert again.done.finish_reason in ("stop", "length")


def test_admission_waits_for_cache_memory_and_refuses_what_never_fits(model):
    probe = Engine(model, EngineOptions())
    session = OmniSession(model, sampling=GREEDY, engine=probe)
    session.reply("Hi", return_audio=False, max_new_tokens=4)
    probe.close()
    per_token = probe.thinker_bytes_per_token
    # room for about one reply of ~60 tokens at a time
    engine = Engine(model, EngineOptions(kv_budget_bytes=per_token * 90))
    try:
        peak_queue = []

        def reply(index):
            s = OmniSession(model, sampling=GREEDY, engine=engine)
            return s.reply(PROMPTS[index], return_audio=False, max_new_tokens=20).text

        def watch():
            for _ in range(200):
                peak_queue.append(engine.stats()["queue_length"])
                time.sleep(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()
        texts = run_in_threads(reply, [0, 2, 4])
        watcher.join()
        alone = [OmniSession(model, sampling=GREEDY, engine=False).reply(PROMPTS[i], return_audio=False,
                                                                          max_new_tokens=20).text for i in (0, 2, 4)]
        assert texts == alone
        assert max(peak_queue) >= 1  # replies waited for memory instead of running all at once
        assert engine.peak_batch == 1
        with pytest.raises(CacheMemoryError, match="GiB"):
            OmniSession(model, engine=engine).reply("Hi", return_audio=False, max_new_tokens=500)
    finally:
        engine.close()


def test_stats_show_the_batch_the_queue_and_the_cache(engine):
    stats = engine.stats()
    for key in ("batch_size", "queue_length", "kv_reserved_bytes", "max_batch", "prefix_cache"):
        assert key in stats
    assert stats["batch_size"] == 0 and stats["kv_reserved_bytes"] == 0  # nothing live between tests


def test_a_long_prompt_is_read_in_chunks_while_others_keep_decoding(model, monkeypatch):
    """A reply already running gets a decode step in every iteration while a long prompt is read next
    to it, one chunk per iteration: a newcomer never stalls it by more than one chunk."""
    import omni.engine.engine as engine_module

    log = []  # ("chunk", prompt length) / ("decode", rows) in the order the engine ran them
    real_chunk, real_step = engine_module.prefill_chunk, engine_module.thinker_step
    monkeypatch.setattr(engine_module, "prefill_chunk", lambda thinker, reply, chunk: (
        log.append(("chunk", int(reply.prompt.input_ids.shape[1]))) or real_chunk(thinker, reply, chunk)))
    monkeypatch.setattr(engine_module, "thinker_step", lambda thinker, rows: (
        log.append(("decode", len(rows))) or real_step(thinker, rows)))
    engine = Engine(model, EngineOptions(prefill_chunk=16))
    no_stop = dict(logit_bias={151645: -100, 151643: -100})
    try:
        runner = OmniSession(model, sampling=GREEDY, engine=engine)
        with runner.stream("Talk.", return_audio=False, max_new_tokens=400, **no_stop) as events:
            next(events)
            newcomer = OmniSession(model, sampling=GREEDY, engine=engine)
            long_prompt = " ".join(f"word{i}" for i in range(150))
            late = newcomer.reply(long_prompt, return_audio=False, max_new_tokens=2)
        assert late.done.usage.prompt_tokens > 16 * 10
        long_chunks = [i for i, (kind, size) in enumerate(log) if kind == "chunk" and size > 100]
        assert len(long_chunks) == -(-late.done.usage.prompt_tokens // 16)  # read 16 tokens at a time
        between = log[long_chunks[0]:long_chunks[-1]]
        # between two chunks of the newcomer, the runner decoded once (alone: 1 row)
        assert sum(kind == "decode" for kind, _ in between) == len(long_chunks) - 1
    finally:
        engine.close()
