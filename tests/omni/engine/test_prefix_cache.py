"""The prefix cache: a stateless client resending its conversation gets the same reply from a hit as
from a miss, without re-running the encoders over earlier media; eviction under a tiny budget."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from omni.engine import Engine, EngineOptions, PrefixCache
from omni.kv_cache import KVCache
from omni.sampling import SamplingParams
from omni.session import OmniSession
from omni.speech import SpeechOptions
from omni.talker.generate import DEFAULT_TALKER_SAMPLING, TalkerOptions
from omni.tools.media_factory import build_media

GREEDY = SamplingParams(do_sample=False)
GIB = 1024**3


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    from omni.loading import load_model

    return load_model(tiny_checkpoint, dtype="fp32", audio_output=True)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return build_media(tmp_path_factory.mktemp("prefix-media"))


def _speech(seed: int) -> SpeechOptions:
    return SpeechOptions(talker=TalkerOptions(sampling=replace(DEFAULT_TALKER_SAMPLING, seed=seed), max_codes=30),
                         seed=seed)


def _request(engine, messages, spoken=True, **sampling):
    """One stateless request, as the server makes it: a fresh session fed the whole conversation."""
    session = OmniSession(engine.loaded, sampling=GREEDY, engine=engine, reuse_prefix=True)
    options = dict(return_audio=spoken, max_new_tokens=5, **sampling)
    if spoken:
        options["speech"] = _speech(7)
    return session.reply(messages, **options)


def _count_encoder_calls(model, monkeypatch) -> dict:
    calls = {"visual": 0, "audio": 0}
    thinker = model.model.thinker
    for name, module in (("visual", thinker.visual), ("audio", thinker.audio_tower)):
        original = module.forward

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, "forward", counted)
    return calls


def test_a_prefix_hit_gives_the_reply_a_miss_gives_and_skips_earlier_media(model, media, monkeypatch):
    cached = Engine(model, EngineOptions(prefix_cache_bytes=GIB))
    uncached = Engine(model, EngineOptions())
    try:
        turn = [{"role": "user", "content": [{"type": "image", "image": str(media.image_png)},
                                             {"type": "audio", "audio": str(media.speech)},
                                             {"type": "text", "text": "What do you see and hear?"}]}]
        history = list(turn)
        for number in range(3):
            first = _request(cached, history)
            history = history + [{"role": "assistant", "content": first.text},
                                 {"role": "user", "content": f"And then? ({number})"}]
        calls = _count_encoder_calls(model, monkeypatch)
        hit = _request(cached, history, repetition_penalty=1.3)
        assert calls == {"visual": 0, "audio": 0}  # the image and audio lie in the reused prefix
        stats = cached.prefix_cache.stats()
        assert stats["hits"] >= 3 and stats["misses"] == 1
        assert stats["hit_tokens"] > 0
        miss = _request(uncached, history, repetition_penalty=1.3)
        assert calls["visual"] == 1 and calls["audio"] == 1
        assert hit.text == miss.text
        assert hit.done.codec_codes == miss.done.codec_codes
        assert hit.done.usage == replace(miss.done.usage, cached_prompt_tokens=hit.done.usage.cached_prompt_tokens)
        assert hit.done.usage.cached_prompt_tokens > 200  # the image, the audio and most earlier turns
        assert hit.audio.shape == miss.audio.shape and np.abs(hit.audio - miss.audio).max() < 1e-4
    finally:
        cached.close()
        uncached.close()


def test_different_media_of_the_same_size_never_share_a_cache(model, media):
    engine = Engine(model, EngineOptions(prefix_cache_bytes=GIB))
    try:
        def ask(path):
            return [{"role": "user", "content": [{"type": "image", "image": str(path)},
                                                 {"type": "text", "text": "Describe it."}]}]

        from omni.tools.media_factory import drawing

        other = media.directory / "other.png"
        drawing(200, 150, seed=9).save(other)  # the same size as image_png: the same placeholder tokens
        _request(engine, ask(media.image_png), spoken=False)
        before = engine.prefix_cache.stats()["hit_tokens"]
        answer = _request(engine, ask(other), spoken=False)
        reused = engine.prefix_cache.stats()["hit_tokens"] - before
        fresh = _request(Engine(model, EngineOptions()), ask(other), spoken=False)
        assert answer.text == fresh.text
        # only the text before the image was shared: not the image's 35 tokens nor the text after it
        assert 0 < reused < answer.done.usage.prompt_tokens - 35
    finally:
        engine.close()


def _cache(tokens: int) -> KVCache:
    cache = KVCache.allocate(2, 1, 2, 8, tokens, torch.float32, "cpu")
    cache.length = tokens
    return cache


def test_eviction_keeps_the_cache_within_its_budget_least_recently_used_first():
    one_entry = _cache(100).nbytes()
    store = PrefixCache(budget_bytes=int(2.5 * one_entry))
    store.insert(list(range(100)), _cache(100))
    store.insert(list(range(1000, 1100)), _cache(100))
    assert store.lookup(list(range(50)) + [7]).length == 50  # touches the first entry
    store.insert(list(range(2000, 2100)), _cache(100))
    assert len(store) == 2 and store.bytes <= store.budget_bytes
    assert store.stats()["evictions"] == 1
    assert store.lookup(list(range(1000, 1100))) is None  # the least recently used one went
    assert store.lookup(list(range(100))).length == 100
    # a longer conversation replaces the entry it extends; an entry larger than the budget is not kept
    store.insert(list(range(100)) + [5, 6], _cache(102))
    assert len(store) == 2
    store.insert(list(range(5000, 5400)), _cache(400))
    assert store.lookup(list(range(5000, 5010))) is None


def test_a_zero_budget_disables_the_cache(model):
    engine = Engine(model, EngineOptions(prefix_cache_bytes=0))
    try:
        _request(engine, [{"role": "user", "content": "Hi"}], spoken=False)
        assert engine.prefix_cache.stats()["entries"] == 0
    finally:
        engine.close()
