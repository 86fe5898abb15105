"""Media out of Qwen-style conversations: the message format of qwen-omni-utils' `process_mm_info`.

A conversation is a list of {"role", "content"} messages; content items are {"type": "text" | "image" |
"audio" | "video", ...} with the keys qwen-omni-utils reads:

    image: "image" / "image_url", min_pixels, max_pixels, resized_height, resized_width
    audio: "audio" / "audio_url", audio_start, audio_end (seconds)
    video: "video" / "video_url" (a file or a list of frame images), fps | nframes, min_frames,
           max_frames, video_start, video_end, min_pixels, max_pixels, total_pixels,
           resized_height, resized_width, sample_fps (for frame lists)

`process_mm_info` returns what qwen-omni-utils returns (audios, images, videos), so existing user
code works unchanged; `load_conversation_media` returns the same media as typed items in prompt order,
which is what omni's prompt builder uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from omni.encoders.audio_loader import check_waveform, decode_audio_track, has_audio_track, load_audio
from omni.encoders.deadline import DecodeDeadline
from omni.encoders.image_loader import load_image
from omni.encoders.image_processing import (
    PatchGeometry,
    frames_to_image,
    image_frames,
    image_size_for,
    resize_frames,
    video_size_for,
)
from omni.encoders.limits import MediaLimits
from omni.encoders.video_loader import FRAME_FACTOR, DecodedVideo, load_video
from omni.chat import media_kind
from omni.errors import InputError, MediaError


@dataclass
class MediaItem:
    """One media item of a conversation, decoded and resized, ready for preprocessing."""

    kind: str  # "image", "audio" or "video"
    name: str
    # (T, 3, H, W) uint8 at the target size (sides multiples of 28): T = 1 for an image, even for a video
    frames: torch.Tensor | None = None
    waveform: np.ndarray | None = None  # 16 kHz mono float32
    sample_fps: float | None = None  # sampled frames per second of video
    video_audio: np.ndarray | None = None  # the video's audio track (use_audio_in_video), 16 kHz mono

    @property
    def image(self) -> Image.Image | None:
        """An image item as an RGB PIL image at its target size (what qwen-omni-utils returns)."""
        return frames_to_image(self.frames) if self.kind == "image" else None


def as_conversations(conversations: Any) -> list[list[Mapping[str, Any]]]:
    """One conversation (a list of messages) or a batch (a list of such lists) -> a batch."""
    if isinstance(conversations, Mapping):
        return [[conversations]]
    if not isinstance(conversations, Sequence) or isinstance(conversations, str) or not conversations:
        raise InputError("conversations must be a list of messages or a list of such lists")
    if isinstance(conversations[0], Mapping):
        return [list(conversations)]
    return [list(conversation) for conversation in conversations]


def media_items(conversation: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The media content items of a conversation, in prompt order."""
    items = []
    for message in conversation:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, Sequence) and not isinstance(content, str):
            items.extend(item for item in content if isinstance(item, Mapping) and media_kind(item) in _LOADERS)
    return items


def load_conversation_media(
    conversation: Sequence[Mapping[str, Any]],
    use_audio_in_video: bool = False,
    limits: MediaLimits | None = None,
    geometry: PatchGeometry | None = None,
    deadline: DecodeDeadline | None = None,
) -> list[MediaItem]:
    """`deadline` bounds the decoding of every item (pass one to share it across the conversations of
    a request); a fresh one from `limits` when None."""
    limits = limits or MediaLimits()
    geometry = geometry or PatchGeometry()
    deadline = deadline or DecodeDeadline.start(limits)
    loaded = []
    for index, item in enumerate(media_items(conversation)):
        kind = media_kind(item)
        label = f"{kind} {index + 1}"
        deadline.check(label)
        loaded.append(_LOADERS[kind](item, limits, geometry, use_audio_in_video, label, deadline))
    return loaded


def process_mm_info(
    conversations: Any,
    use_audio_in_video: bool,
    return_video_kwargs: bool = False,
    limits: MediaLimits | None = None,
    image_patch_size: int = 14,
):
    """qwen-omni-utils' entry point: (audios, images, videos) — lists, or None where empty — and with
    `return_video_kwargs` a 4th value {"do_sample_frames": False, "fps": [sample fps per video]}.
    Audios hold the audio items and, with use_audio_in_video, the videos' audio tracks, in order."""
    geometry = PatchGeometry(patch_size=image_patch_size)
    audios: list[np.ndarray] = []
    images: list[Image.Image] = []
    videos: list[torch.Tensor] = []
    video_fps: list[float] = []
    deadline = DecodeDeadline.start(limits or MediaLimits())  # one budget for the whole call
    for conversation in as_conversations(conversations):
        for item in load_conversation_media(conversation, use_audio_in_video, limits, geometry, deadline):
            if item.kind == "audio":
                audios.append(item.waveform)
            elif item.kind == "image":
                images.append(item.image)
            else:
                videos.append(item.frames.float())
                video_fps.append(item.sample_fps)
                if item.video_audio is not None:
                    audios.append(item.video_audio)
    result = (audios or None, images or None, videos or None)
    if return_video_kwargs:
        return result + ({"do_sample_frames": False, "fps": video_fps},)
    return result


def _source(item: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in item and item[key] is not None:
            value = item[key]
            # OpenAI-style {"url": ...} wrappers
            return value["url"] if isinstance(value, Mapping) and "url" in value else value
    raise InputError(f"media item {dict(item)!r:.120} names no source (expected one of {', '.join(keys)})")


def _number(item: Mapping[str, Any], key: str, label: str, kind=float):
    value = item.get(key)
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise InputError(f"{label}: {key} must be a number, got {value!r}") from None


def _load_image_item(item, limits, geometry, use_audio_in_video, label, deadline) -> MediaItem:
    value = _source(item, "image", "image_url")
    name = value if isinstance(value, str) and not value.startswith("data:") else label
    image = load_image(value, limits, name=name[:200])
    height, width = image_size_for(
        image.width, image.height, limits, geometry, name[:200],
        min_pixels=_number(item, "min_pixels", label, int), max_pixels=_number(item, "max_pixels", label, int),
        resized_height=_number(item, "resized_height", label, int),
        resized_width=_number(item, "resized_width", label, int),
    )
    return MediaItem(kind="image", name=name[:200], frames=resize_frames(image_frames(image), height, width))


def _load_audio_item(item, limits, geometry, use_audio_in_video, label, deadline) -> MediaItem:
    value = _source(item, "audio", "audio_url")
    name = value if isinstance(value, str) and not value.startswith("data:") else label
    waveform = load_audio(
        value, limits, start_s=_number(item, "audio_start", label) or 0.0, end_s=_number(item, "audio_end", label),
        name=name[:200], deadline=deadline,
    )
    return MediaItem(kind="audio", name=name[:200], waveform=waveform)


def _load_video_item(item, limits, geometry, use_audio_in_video, label, deadline) -> MediaItem:
    value = _source(item, "video", "video_url")
    start_s, end_s = _number(item, "video_start", label), _number(item, "video_end", label)
    sizes = dict(
        min_pixels=_number(item, "min_pixels", label, int), max_pixels=_number(item, "max_pixels", label, int),
        total_pixels=_number(item, "total_pixels", label, int),
        resized_height=_number(item, "resized_height", label, int),
        resized_width=_number(item, "resized_width", label, int),
    )
    if isinstance(value, (list, tuple)):
        frames, sample_fps, name = _frame_list(value, item, limits, geometry, label, deadline)
        height, width = video_size_for(frames.shape[0], frames.shape[-1], frames.shape[-2], limits, geometry, name,
                                       **sizes)
        return MediaItem(kind="video", name=name, frames=resize_frames(frames, height, width), sample_fps=sample_fps)
    name = (value if isinstance(value, str) and not value.startswith("data:") else label)[:200]

    # Called by the decoder before it holds any frame: each sampled frame is resized as it decodes.
    def frame_size(frames: int, width: int, height: int) -> tuple[int, int]:
        return video_size_for(frames, width, height, limits, geometry, name, **sizes)

    decoded: DecodedVideo = load_video(
        value, limits, fps=_number(item, "fps", label), nframes=_number(item, "nframes", label, int),
        min_frames=_number(item, "min_frames", label, int), max_frames=_number(item, "max_frames", label, int),
        start_s=start_s, end_s=end_s, name=name, frame_size=frame_size, deadline=deadline,
    )
    video_audio = None
    # A video without an audio track keeps plain video tokens even with use_audio_in_video
    # (qwen-omni-utils would stop with an assertion).
    if use_audio_in_video and decoded.source is not None and has_audio_track(decoded.source):
        track = decode_audio_track(decoded.source, limits, start_s or 0.0, end_s, name, in_video=True,
                                   deadline=deadline)
        video_audio = check_waveform(track, limits, f"audio track of {name}")
    return MediaItem(kind="video", name=name, frames=decoded.frames, sample_fps=decoded.sample_fps,
                     video_audio=video_audio)


def _frame_list(values, item, limits, geometry, label, deadline):
    """A video given as a list of frame images: each is fitted like an image item, the count made even
    by repeating the last frame; its rate is the item's sample_fps (default 2)."""
    if not values:
        raise MediaError(f"{label}: the frame list is empty")
    if len(values) > limits.max_video_frames:
        raise MediaError(f"{label}: {len(values)} frames is over the {limits.max_video_frames} frame limit")
    frames = []
    for position, value in enumerate(values):
        deadline.check(f"{label} frame {position}")
        image = load_image(value, limits, name=f"{label} frame {position}")
        height, width = image_size_for(
            image.width, image.height, limits, geometry, f"{label} frame {position}",
            min_pixels=_number(item, "min_pixels", label, int), max_pixels=_number(item, "max_pixels", label, int),
            resized_height=_number(item, "resized_height", label, int),
            resized_width=_number(item, "resized_width", label, int),
        )
        frames.append(resize_frames(image_frames(image), height, width)[0])
    if len({tuple(frame.shape) for frame in frames}) > 1:
        raise MediaError(f"{label}: the frames of a frame-list video must share one size")
    while len(frames) % FRAME_FACTOR:
        frames.append(frames[-1])
    sample_fps = _number(item, "sample_fps", label) or 2.0
    return torch.stack(frames), sample_fps, label


_LOADERS = {"image": _load_image_item, "audio": _load_audio_item, "video": _load_video_item}
