"""The Qwen3-Omni family (config.json `model_type` "qwen3_omni_moe"): its config, Thinker, rope index and
root model tree. Its encoders live in `omni.encoders.qwen3`, its Talker and Code2Wav in `omni.talker.qwen3`;
what both families share stays in `omni.*` (layers, kv cache, sampling, loading, media loading)."""
