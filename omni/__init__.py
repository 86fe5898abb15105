"""omni: streaming multimodal inference for Qwen2.5-Omni."""

from omni.errors import (
    AudioOutputUnavailable,
    CheckpointError,
    InputError,
    MediaError,
    OmniError,
    UnknownVoiceError,
)

# The session and loader pull in torch and the whole model tree: import them on first use, so that
# `omni.errors` (imported by the media loaders) stays light and free of import cycles.
_LAZY = {"OmniSession": "omni.session", "LoadedModel": "omni.loading", "load_model": "omni.loading"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'omni' has no attribute {name!r}")

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
