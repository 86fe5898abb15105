"""The Thinker: Qwen2.5 language model with the vision and audio encoders feeding it."""

from omni.thinker.model import Thinker

__all__ = ["Thinker"]
