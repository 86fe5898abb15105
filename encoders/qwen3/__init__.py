"""Qwen3-Omni media towers: the AuT audio encoder and the Qwen3-VL vision encoder with deepstack mergers."""
