from omni.warmup import warm_up


def test_warm_up_runs_every_stage_once(tiny_checkpoint):
    from omni.loading import load_model

    loaded = load_model(tiny_checkpoint, dtype="fp32", audio_output=True)
    calls = []
    hooks = [module.register_forward_hook(lambda *a, name=name: calls.append(name)) for name, module in (
        ("thinker", loaded.model.thinker), ("talker", loaded.model.talker),
        ("vocoder", loaded.model.token2wav.code2wav_bigvgan_model))]
    try:
        assert warm_up(loaded) > 0
    finally:
        for hook in hooks:
            hook.remove()
    assert {"thinker", "talker", "vocoder"} <= set(calls)
