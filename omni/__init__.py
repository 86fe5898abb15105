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
from omni.session import OmniSession

__all__ = [
    "AudioOutputUnavailable",
    "CheckpointError",
    "InputError",
    "LoadedModel",
    "MediaError",
    "OmniError",
    "OmniSession",
    "UnknownVoiceError",
    "load_model",
]
