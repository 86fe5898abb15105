"""Qwen3-Omni speech stages: the MoE Talker, its code predictor, and the causal Code2Wav codec."""
