import pytest
import torch


@pytest.fixture(scope="module")
def speech_pair(checkpoint):
    """omni (fp32, with audio) and the transformers reference on the same checkpoint."""
    from transformers import Qwen2_5OmniForConditionalGeneration

    from omni.loading import load_model

    ours = load_model(checkpoint, dtype="fp32", audio_output=True)
    reference = Qwen2_5OmniForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return ours, reference


@pytest.fixture(scope="module")
def tiny_speech_model(tiny_checkpoint):
    from omni.loading import load_model

    return load_model(tiny_checkpoint, dtype="fp32", audio_output=True)
