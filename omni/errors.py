"""The one family of errors omni raises at its boundaries.

Every message says what was wrong, the limit or expectation it broke, and how to fix it. Code inside
omni trusts its types; checks happen where user input or files enter.
"""

from __future__ import annotations


class OmniError(Exception):
    """Base class of every error omni raises on purpose."""


class CheckpointError(OmniError):
    """A checkpoint directory, file, config or weight set is missing, malformed or does not match."""


class InputError(OmniError, ValueError):
    """A request is malformed or exceeds a configured limit (prompt length, media size, options)."""


class ContextLengthError(InputError):
    """A prompt plus the tokens asked for would not fit the model's context."""

    def __init__(self, message: str, needed_tokens: int, limit_tokens: int) -> None:
        super().__init__(message)
        self.needed_tokens = needed_tokens
        self.limit_tokens = limit_tokens


class MediaError(InputError):
    """A media file (image, audio, video) cannot be read, decoded or accepted."""


class UnknownVoiceError(InputError):
    """A voice was requested that the checkpoint's speaker file does not hold."""


class AudioOutputUnavailable(OmniError):
    """Audio output was requested from a model loaded without the talker / token2wav / speakers."""
