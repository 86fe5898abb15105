"""The memory each server limit implies, and the defaults derived from the machine's free memory."""

from __future__ import annotations

import pytest

from omni.cli import build_parser
from omni.encoders.limits import MediaLimits
from omni.server.cli import config_from_args, memory_report
from omni.server.memory import (
    GIB, MIB, MemoryPlan, derived_limits, engine_request_slots, fit_warnings, host_free_bytes, kv_bytes_per_token, plan_for,
    video_pixels_for_context,
)


def test_kv_bytes_per_token_is_what_the_cache_allocates(served_model):
    for decoder in (served_model.model.thinker.model, served_model.model.talker.model):
        cache = decoder.new_cache(1, 100)
        assert kv_bytes_per_token(decoder) * 100 == cache.nbytes()


def test_the_plan_of_the_served_model(served_model):
    limits = MediaLimits()
    plan = plan_for(served_model, 64 * MIB, limits, max_media_items=16)
    assert plan.context_tokens == 32768 and plan.talker_kv_bytes_per_token > 0 and not plan.on_device
    assert plan.body_bytes_per_request == 128 * MIB
    assert plan.video_bytes == limits.max_video_total_pixels * 15 + 3840 * 2160 * 3
    assert plan.worst_media_bytes == 16 * plan.largest_item_bytes
    device, host = plan.slot_bytes()
    assert device == 0 and host == plan.body_bytes_per_request + plan.video_bytes + plan.kv_bytes_per_request


def _plan(on_device: bool) -> MemoryPlan:
    # Qwen2.5-Omni-7B in bf16: 28 Thinker layers and 24 Talker layers, 4 KV heads of 128
    return MemoryPlan(thinker_kv_bytes_per_token=2 * 28 * 4 * 128 * 2, talker_kv_bytes_per_token=2 * 24 * 4 * 128 * 2,
                      context_tokens=32768, talker_max_codes=4096, on_device=on_device, max_body_bytes=64 * MIB,
                      video_bytes=700 * MIB, image_bytes=400 * MIB, audio_bytes=35 * MIB, max_media_items=16)


@pytest.mark.parametrize("on_device, host_gib, device_gib, expected", [
    (False, 8, None, (1, 16)),  # a small CPU box: one generation at a time
    (False, 64, None, (8, 32)),  # plenty: the caps
    (False, 0.1, None, (1, 0)),  # less than one slot: still serves one, nobody waits
    (True, 64, 10, (2, 32)),  # a GPU with 10 GiB free after the weights: 2 x 3.4 GiB of KV at full context
])
def test_derived_limits_fit_the_memory(on_device, host_gib, device_gib, expected):
    plan = _plan(on_device)
    concurrent, queue = derived_limits(plan, int(host_gib * GIB), int(device_gib * GIB) if device_gib else None)
    assert (concurrent, queue) == expected
    if expected[0] > 1:
        device, host = plan.slot_bytes()
        assert concurrent * host <= 0.8 * host_gib * GIB and (not on_device or concurrent * device <= 0.8 * device_gib * GIB)


def test_values_that_do_not_fit_are_warned_about():
    warnings = fit_warnings(_plan(True), max_concurrent=16, max_queue=32, host_free_bytes=4 * GIB,
                            device_free_bytes=8 * GIB)
    assert len(warnings) == 2 and "--max-concurrent" in warnings[0] and "GPU memory" in warnings[1]
    assert fit_warnings(_plan(True), 1, 0, 64 * GIB, 64 * GIB) == []


def test_serve_derives_its_defaults_from_the_model_and_machine(served_model):
    args = build_parser().parse_args(["serve", "ckpt/tiny"])
    assert args.max_video_seconds == 600.0  # not an hour
    config = config_from_args(args, loaded=served_model)
    plan = plan_for(served_model, config.max_body_bytes, config.media_limits, 16)
    expected = derived_limits(plan, host_free_bytes(), None)
    # the engine (the default) admits replies by cache memory itself: the server bounds only the requests in
    # flight, by their bodies and media in host memory, at most --max-batch
    assert config.max_queue == expected[1]
    assert config.max_concurrent == engine_request_slots(plan, host_free_bytes(), args.max_batch) <= args.max_batch
    assert config.engine.max_batch == args.max_batch and config.engine.kv_budget_bytes > 0
    threads = config_from_args(build_parser().parse_args(["serve", "ckpt/tiny", "--scheduler", "threads"]),
                               loaded=served_model)
    assert (threads.max_concurrent, threads.max_queue) == expected and threads.engine is None
    # a video bigger than the context could hold is never decoded
    assert config.media_limits.max_video_total_pixels == video_pixels_for_context(32768) < MediaLimits.max_video_total_pixels
    assert "per request: KV cache up to" in memory_report(served_model, config)[0]
    explicit = config_from_args(build_parser().parse_args(["serve", "x", "--max-concurrent", "2", "--max-queue", "0"]),
                                loaded=served_model)
    assert (explicit.max_concurrent, explicit.max_queue) == (2, 0)
    with pytest.raises(ValueError, match="--max-concurrent must be >= 1"):
        config_from_args(build_parser().parse_args(["serve", "x", "--max-concurrent", "0"]))
