"""The serving engine: one scheduler per loaded model batches every live reply's steps (see engine.py)."""

from omni.engine.engine import CacheMemoryError, Engine, EngineOptions, engine_for
from omni.engine.prefix_cache import PrefixCache

__all__ = ["CacheMemoryError", "Engine", "EngineOptions", "PrefixCache", "engine_for"]
