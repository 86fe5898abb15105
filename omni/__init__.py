"""omni: streaming multimodal inference for Qwen2.5-Omni."""

from omni.errors import (
    AudioOutputUnavailable,
    CheckpointError,
    InputError,
    MediaError,
    OmniError,
    UnknownVoiceError,
)
from omni.loading import LoadedModel, load_model

__all__ = [
    "AudioOutputUnavailable",
    "CheckpointError",
    "InputError",
    "LoadedModel",
    "MediaError",
    "OmniError",
    "UnknownVoiceError",
    "load_model",
]
