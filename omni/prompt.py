"""Conversations with images, audio and video -> a `ThinkerPrompt`.

Three stages, so that a pipeline can time and schedule them separately:

1. `prepare_prompt` (CPU): render the chat template, load the media (`load_media`: decode, resize),
   preprocess them (`preprocess_media`: normalise, patchify, log-mel), expand each placeholder to its
   token count, left-pad the batch and compute the TMRoPE positions. No model forward.
2. `encode_media` (the expensive part): the vision and audio towers.
3. `merge_prompt`: token embeddings with the towers' outputs written at the placeholder positions.

`build_prompt` runs all three. `prepare_prompt(..., continuation=True, history=earlier, start_position=p)`
gives only the text that follows the `earlier` messages in the whole conversation's rendering (no
second system block) with positions starting at `p`, for a turn appended to a KV cache.

The text is the checkpoint's chat template's (`tokenizer.chat_template`), or omni's built-in
Qwen2.5-Omni format for a checkpoint without one.

Placeholders expand as the transformers processor expands them: <|IMAGE|> / <|VIDEO|> to one token
per merged 2 x 2 patch block, <|AUDIO|> to one token per 40 ms; with use_audio_in_video a video that
has an audio track becomes <|audio_bos|> video chunk 0, audio chunk 0, video chunk 1, ... <|audio_eos|>
(2-second chunks) inside its <|vision_bos|> ... <|vision_eos|>.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from omni.encoders.audio_encoder import audio_token_count
from omni.encoders.audio_features import AudioFeatures, extract_features, feature_frames
from omni.encoders.deadline import DecodeDeadline
from omni.encoders.image_processing import PatchGeometry, VisionBatch, process_images, process_videos
from omni.encoders.limits import MediaLimits
from omni.encoders.messages import MediaItem, as_conversations, load_conversation_media
from omni.chat import render_chat
from omni.config import ThinkerConfig
from omni.errors import InputError, MediaError
from omni.rope_index import chunk_bounds, rope_index
from omni.thinker.generate import Deepstack, ThinkerPrompt, left_pad
from omni.thinker.model import Thinker
from omni.tokenizer import Tokenizer


@dataclass
class MediaInputs:
    """Preprocessed media of a whole batch, in prompt order (row 0's items first)."""

    images: VisionBatch | None = None
    videos: VisionBatch | None = None
    video_second_per_grid: torch.Tensor | None = None  # (videos,) float32: seconds per temporal patch
    audio: AudioFeatures | None = None  # standalone clips and videos' audio tracks, in prompt order


@dataclass
class PreparedPrompt:
    input_ids: torch.Tensor  # (batch, seq) long, left-padded
    token_mask: torch.Tensor | None  # (batch, seq) bool; None when no row is padded
    position_ids: torch.Tensor  # (3, batch, seq)
    next_position: torch.Tensor  # (batch,)
    multimodal_mask: torch.Tensor  # (batch, seq) bool: placeholder tokens the towers fill
    media: MediaInputs
    items: list[list[MediaItem]]  # the decoded media of each conversation


@dataclass
class MediaEmbeddings:
    image: torch.Tensor | None = None  # (image tokens, hidden)
    video: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    # Qwen3-Omni: per deepstack layer, the vision tower's extra features of the same tokens
    image_deepstack: list[torch.Tensor] | None = None
    video_deepstack: list[torch.Tensor] | None = None


@dataclass(frozen=True)
class MediaRules:
    """What differs between model families on the way from media to prompt tokens: the patch geometry,
    the audio front end and its token count, the pixel layout, how a video's audio track interleaves with
    its frames, and the 3-D positions. Everything else in this module is shared."""

    geometry: PatchGeometry
    audio_tokens: Callable[[int], int]  # log-mel frames -> Thinker tokens
    extract_audio: Callable[[list], AudioFeatures]  # the waveforms of one prompt batch -> features
    process_images: Callable[[list, PatchGeometry], VisionBatch]
    process_videos: Callable[[list, PatchGeometry], VisionBatch]
    # (grid, seconds per temporal patch, audio tokens, geometry, config) -> the block's token ids
    interleave: Callable[..., list[int]]
    # (input_ids, config, media, token_mask, geometry) -> (position_ids (3, B, S), next_position (B,))
    positions: Callable[..., tuple[torch.Tensor, torch.Tensor]]


def media_rules(config) -> MediaRules:
    """The rules of the family a Thinker config belongs to."""
    if getattr(config, "family", None) == "qwen3_omni_moe":
        from omni.qwen3.prompt_rules import qwen3_media_rules

        return qwen3_media_rules(config)
    return MediaRules(
        geometry=PatchGeometry.from_config(config.vision),
        audio_tokens=audio_token_count,
        extract_audio=extract_features,
        process_images=process_images,
        process_videos=process_videos,
        interleave=_interleave,
        positions=_qwen2_5_positions,
    )


def _qwen2_5_positions(input_ids, config: ThinkerConfig, media: MediaInputs, token_mask, geometry: PatchGeometry):
    return rope_index(
        input_ids, config.token_ids,
        image_grid_thw=media.images.grid_thw if media.images is not None else None,
        video_grid_thw=media.videos.grid_thw if media.videos is not None else None,
        video_second_per_grid=media.video_second_per_grid,
        audio_feature_lens=media.audio.feature_lens if media.audio is not None else None,
        token_mask=token_mask, spatial_merge_size=geometry.merge_size,
        position_id_per_seconds=config.position_id_per_seconds, seconds_per_chunk=config.seconds_per_chunk,
    )


def build_prompt(loaded, conversations: Any, **options: Any) -> ThinkerPrompt:
    """Everything at once for a `LoadedModel`; `options` are `prepare_prompt`'s keyword arguments."""
    thinker = loaded.model.thinker
    prepared = prepare_prompt(loaded.tokenizer, thinker.config, conversations,
                              pad_token_id=loaded.generation.pad_token_id, **options)
    return merge_prompt(thinker, prepared, encode_media(thinker, prepared.media))


def prepare_prompt(
    tokenizer: Tokenizer,
    config: ThinkerConfig,
    conversations: Any,
    *,
    pad_token_id: int,
    system_prompt: str | None = None,
    use_audio_in_video: bool = False,
    limits: MediaLimits | None = None,
    add_generation_prompt: bool = True,
    continuation: bool = False,
    history: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]]] | None = None,
    prefix: str = "",
    prefix_ids: Sequence[int] = (),
    start_position: int | Sequence[int] | torch.Tensor = 0,
    media_items: list[list[MediaItem]] | None = None,
) -> PreparedPrompt:
    """One conversation or a batch of them -> ids, positions and preprocessed media.

    continuation: these messages are a turn appended to a conversation whose KV cache the caller keeps;
    `history` holds that conversation's messages (replies included; one list, or one per conversation
    of a batch), and only the text that follows them in the whole conversation's rendering is produced,
    after `prefix_ids` (e.g. the last sampled token, which the cache has not consumed) and `prefix` text
    (e.g. the "<|im_end|>\\n" that closes the previous reply); positions start at `start_position` (per
    row). `media_items` (per conversation, from `load_media`) skips the loading when the caller has done
    it (to time or overlap it)."""
    rules = media_rules(config)
    batch = as_conversations(conversations)
    # rendering validates the messages: a malformed one fails before any media is read
    histories = _histories(history, len(batch)) if continuation else [None] * len(batch)
    rows = [list(prefix_ids) + tokenizer.encode(prefix + render_chat(
        conversation, add_generation_prompt=add_generation_prompt, system_prompt=system_prompt, history=earlier,
        template=tokenizer.chat_template)) for conversation, earlier in zip(batch, histories)]
    items = media_items if media_items is not None else load_media(batch, config, use_audio_in_video, limits)
    if len(items) != len(batch):
        raise InputError(f"media_items holds {len(items)} conversations' media for {len(batch)} conversations")
    media = preprocess_media(items, rules)
    audio_lens = media.audio.feature_lens.tolist() if media.audio is not None else []
    expanded = _expand_rows(rows, items, media, audio_lens, config, rules)
    input_ids, mask = left_pad(expanded, pad_token_id)
    ids = config.token_ids
    positions, next_position = rules.positions(input_ids, config, media, mask, rules.geometry)
    start = torch.as_tensor(start_position, dtype=torch.long).expand(len(batch))
    positions = torch.where(mask.unsqueeze(0), positions + start.view(1, -1, 1), positions)
    multimodal = torch.isin(input_ids, torch.tensor([ids.image, ids.video, ids.audio])) & mask
    return PreparedPrompt(
        input_ids=input_ids, token_mask=None if bool(mask.all()) else mask, position_ids=positions,
        next_position=next_position + start, multimodal_mask=multimodal, media=media, items=items,
    )


def load_media(conversations: Any, config: ThinkerConfig, use_audio_in_video: bool = False,
               limits: MediaLimits | None = None) -> list[list[MediaItem]]:
    """Decode and fit every media item of each conversation (I/O and resizing; no model), within one
    decoding deadline (MediaLimits.max_decode_seconds) for them all."""
    geometry = media_rules(config).geometry
    limits = limits or MediaLimits()
    deadline = DecodeDeadline.start(limits)
    return [load_conversation_media(conversation, use_audio_in_video, limits, geometry, deadline)
            for conversation in as_conversations(conversations)]


def preprocess_media(items: list[list[MediaItem]], rules: MediaRules) -> MediaInputs:
    geometry = rules.geometry
    flat = [item for row in items for item in row]
    images = [item.frames for item in flat if item.kind == "image"]
    videos = [item for item in flat if item.kind == "video"]
    waveforms = []
    for item in flat:
        waveform = item.waveform if item.kind == "audio" else item.video_audio
        if waveform is None:
            continue
        if rules.audio_tokens(feature_frames(waveform.shape[0])) < 1:
            raise MediaError(f"audio {item.name!r} is {waveform.shape[0]} samples long; at least 321 samples "
                             "(20 ms at 16 kHz) are needed for one audio token")
        waveforms.append(waveform)
    return MediaInputs(
        images=rules.process_images(images, geometry) if images else None,
        videos=rules.process_videos([item.frames for item in videos], geometry) if videos else None,
        # the processor's value: a temporal patch spans temporal_patch_size sampled frames
        video_second_per_grid=torch.tensor(
            [geometry.temporal_patch_size / item.sample_fps for item in videos], dtype=torch.float32
        ) if videos else None,
        audio=rules.extract_audio(waveforms) if waveforms else None,
    )


@torch.inference_mode()
def encode_media(thinker: Thinker, media: MediaInputs) -> MediaEmbeddings:
    """Run the vision tower over images and videos and the audio tower over all clips."""
    device, dtype = thinker.device, thinker.visual.patch_embed.proj.weight.dtype
    out = MediaEmbeddings()
    if media.images is not None:
        out.image, out.image_deepstack = _vision(thinker.visual(media.images.pixel_values.to(device, dtype),
                                                                media.images.grid_thw))
    if media.videos is not None:
        out.video, out.video_deepstack = _vision(thinker.visual(media.videos.pixel_values.to(device, dtype),
                                                                media.videos.grid_thw))
    if media.audio is not None:
        audio_dtype = next(thinker.audio_tower.parameters()).dtype
        out.audio = thinker.audio_tower(media.audio.input_features.to(device, audio_dtype),
                                        media.audio.feature_lens.to(device))
    return out


def _vision(output) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """(merged features, deepstack features or None): Qwen3-Omni's tower returns both."""
    if isinstance(output, tuple):
        return output[0], list(output[1]) or None
    return output, None


@torch.inference_mode()
def merge_prompt(thinker: Thinker, prepared: PreparedPrompt, embeddings: MediaEmbeddings) -> ThinkerPrompt:
    device = thinker.device
    input_ids = prepared.input_ids.to(device)
    embeds = thinker.embed(input_ids)
    ids = thinker.config.token_ids
    for token, features in ((ids.image, embeddings.image), (ids.video, embeddings.video),
                            (ids.audio, embeddings.audio)):
        slots = input_ids == token
        if prepared.token_mask is not None:
            slots &= prepared.token_mask.to(device)
        count = int(slots.sum())
        if features is None and count == 0:
            continue
        if features is None or features.shape[0] != count:
            raise InputError(f"the prompt has {count} placeholder tokens for token id {token} but the encoders "
                             f"produced {0 if features is None else features.shape[0]} embeddings")
        embeds[slots] = features.to(embeds.dtype)
    has_media = bool(prepared.multimodal_mask.any())
    return ThinkerPrompt(
        input_ids=prepared.input_ids, position_ids=prepared.position_ids, next_position=prepared.next_position,
        inputs_embeds=embeds, token_mask=prepared.token_mask,
        multimodal_mask=prepared.multimodal_mask if has_media else None,
        deepstack=_deepstack(input_ids, prepared.token_mask, ids, embeddings),
        image_grid_thw=prepared.media.images.grid_thw if prepared.media.images is not None else None,
        video_grid_thw=prepared.media.videos.grid_thw if prepared.media.videos is not None else None,
        video_second_per_grid=prepared.media.video_second_per_grid,
    )


def _deepstack(input_ids: torch.Tensor, token_mask: torch.Tensor | None, ids, embeddings: MediaEmbeddings
               ) -> Deepstack | None:
    """Qwen3-Omni's deepstack features in the prompt's row-major order of image and video positions
    (the reference scatters image and video features into one joint tensor the same way)."""
    if embeddings.image_deepstack is None and embeddings.video_deepstack is None:
        return None
    image_slots, video_slots = input_ids == ids.image, input_ids == ids.video
    if token_mask is not None:
        mask = token_mask.to(input_ids.device)
        image_slots, video_slots = image_slots & mask, video_slots & mask
    visual = image_slots | video_slots
    layers = len(embeddings.image_deepstack or embeddings.video_deepstack)
    features = []
    for layer in range(layers):
        reference = (embeddings.image_deepstack or embeddings.video_deepstack)[layer]
        joint = reference.new_zeros(int(visual.sum()), reference.shape[-1])
        if embeddings.image_deepstack is not None:
            joint[image_slots[visual]] = embeddings.image_deepstack[layer]
        if embeddings.video_deepstack is not None:
            joint[video_slots[visual]] = embeddings.video_deepstack[layer]
        features.append(joint)
    return Deepstack(visual_mask=visual.cpu(), features=features)


@dataclass(frozen=True)
class MediaSpan:
    """Where one media item's tokens lie in a one-conversation prompt, and what it holds."""

    item: int  # index into the conversation's items
    start: int  # first token
    end: int  # one past the last token
    content_key: int  # a negative int derived from the decoded content (never a token id)


def media_spans(prepared: PreparedPrompt, config: ThinkerConfig) -> list[MediaSpan]:
    """The token span of every media item of a one-conversation prompt, in prompt order."""
    if prepared.input_ids.shape[0] != 1:
        raise InputError("media_spans takes a one-conversation prompt")
    ids = config.token_ids
    rules = media_rules(config)
    geometry = rules.geometry
    items = prepared.items[0]
    media = prepared.media
    image_counts = iter(media.images.token_counts(geometry.merge_size) if media.images is not None else [])
    video_counts = iter([t * h * w // geometry.merge_size**2 for t, h, w in media.videos.grid_thw.tolist()]
                        if media.videos is not None else [])
    audio_counts = iter([rules.audio_tokens(n) for n in media.audio.feature_lens.tolist()]
                        if media.audio is not None else [])
    queues: dict[int, deque] = {ids.image: deque(), ids.video: deque(), ids.audio: deque()}
    for index, item in enumerate(items):
        if item.kind == "image":
            queues[ids.image].append([index, next(image_counts)])
        elif item.kind == "video":
            queues[ids.video].append([index, next(video_counts)])
        if item.kind == "audio" or (item.kind == "video" and item.video_audio is not None):
            queues[ids.audio].append([index, next(audio_counts)])
    bounds: dict[int, list[int]] = {}
    for position, token in enumerate(prepared.input_ids[0].tolist()):
        waiting = queues.get(token)
        if not waiting:
            continue
        owner = waiting[0]
        span = bounds.setdefault(owner[0], [position, position + 1])
        span[1] = position + 1
        owner[1] -= 1
        if owner[1] == 0:
            waiting.popleft()
    return [MediaSpan(index, start, end, _content_key(items[index]))
            for index, (start, end) in sorted(bounds.items(), key=lambda kv: kv[1][0])]


def prompt_key(prepared: PreparedPrompt, spans: list[MediaSpan], config: ThinkerConfig) -> list[int]:
    """The prompt's token ids with every media placeholder replaced by its item's content key: the
    key of the prefix cache (omni.engine.prefix_cache)."""
    key = prepared.input_ids[0].tolist()
    ids = config.token_ids
    placeholders = {ids.image, ids.video, ids.audio}
    for span in spans:
        for position in range(span.start, span.end):
            if key[position] in placeholders:
                key[position] = span.content_key
    return key


def media_safe_length(length: int, spans: list[MediaSpan]) -> int:
    """`length` moved back to the start of a media item it would cut in two."""
    for span in spans:
        if span.start < length < span.end:
            return span.start
    return length


@torch.inference_mode()
def suffix_prompt(thinker: Thinker, prepared: PreparedPrompt, start: int, spans: list[MediaSpan]) -> ThinkerPrompt:
    """The prompt from token `start` on (a cached prefix holds the rest), at its positions in the
    whole prompt; only the media items that lie in it are encoded. `start` must not cut an item."""
    if any(span.start < start < span.end for span in spans):
        raise InputError(f"token {start} lies inside a media item")
    items = prepared.items[0]
    kept = [items[span.item] for span in spans if span.start >= start]
    media = preprocess_media([kept], media_rules(thinker.config)) if kept else MediaInputs()
    part = PreparedPrompt(
        input_ids=prepared.input_ids[:, start:], token_mask=None, position_ids=prepared.position_ids[:, :, start:],
        next_position=prepared.next_position, multimodal_mask=prepared.multimodal_mask[:, start:], media=media,
        items=[kept],
    )
    return merge_prompt(thinker, part, encode_media(thinker, media))


def _content_key(item: MediaItem) -> int:
    digest = hashlib.blake2b(f"{item.kind}{item.sample_fps!r}".encode(), digest_size=8)
    for part in (item.frames, item.waveform, item.video_audio):
        if part is None:
            digest.update(b"-")
            continue
        array = part.contiguous().numpy() if isinstance(part, torch.Tensor) else np.ascontiguousarray(part)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return -1 - (int.from_bytes(digest.digest(), "little") >> 2)


def _histories(history, rows: int) -> list[list[Mapping[str, Any]]]:
    """`history` as one list of earlier messages per conversation."""
    if history is None:
        raise InputError("continuation=True needs history: the messages already in the KV cache (earlier turns and "
                         "replies), so that the new turn is rendered as the whole conversation would be")
    if isinstance(history, Sequence) and not isinstance(history, str) and all(
            isinstance(message, Mapping) for message in history):
        histories = [list(history)]
    elif isinstance(history, Sequence) and not isinstance(history, str):
        histories = [list(earlier) for earlier in history]
    else:
        raise InputError("history must be a list of messages, or one such list per conversation")
    if len(histories) != rows:
        raise InputError(f"history holds {len(histories)} conversations' messages for {rows} conversations")
    return histories


def _expand_rows(rows, items, media: MediaInputs, audio_lens, config: ThinkerConfig, rules: MediaRules):
    """Replace each placeholder token by its run of tokens (the items' order within a row is the
    placeholders' order, as both follow the content items)."""
    ids = config.token_ids
    geometry = rules.geometry
    merge_unit = geometry.merge_size**2
    image_tokens = media.images.token_counts(geometry.merge_size) if media.images is not None else []
    video_grids = media.videos.grid_thw.tolist() if media.videos is not None else []
    image_at = video_at = audio_at = 0
    expanded = []
    for row, row_items in zip(rows, items):
        wanted = {kind: sum(item.kind == kind for item in row_items) for kind in ("image", "audio", "video")}
        found = {"image": row.count(ids.image), "audio": row.count(ids.audio), "video": row.count(ids.video)}
        if wanted != found:
            raise InputError(
                f"the rendered prompt holds {found} media placeholders but the messages carry {wanted} media items; "
                "text must not contain <|IMAGE|>, <|AUDIO|> or <|VIDEO|> itself"
            )
        out: list[int] = []
        videos = iter(item for item in row_items if item.kind == "video")
        for token in row:
            if token == ids.image:
                out.extend([ids.image] * image_tokens[image_at])
                image_at += 1
            elif token == ids.audio:
                out.extend([ids.audio] * rules.audio_tokens(audio_lens[audio_at]))
                audio_at += 1
            elif token == ids.video:
                grid = video_grids[video_at]
                video_tokens = grid[0] * grid[1] * grid[2] // merge_unit
                video = next(videos)
                if video.video_audio is None:
                    out.extend([ids.video] * video_tokens)
                else:
                    # float64 seconds, as the processor holds them (the rope index uses float32)
                    seconds = geometry.temporal_patch_size / video.sample_fps
                    audio_tokens = rules.audio_tokens(audio_lens[audio_at])
                    out.extend(rules.interleave(grid, seconds, audio_tokens, geometry, config))
                    audio_at += 1
                video_at += 1
            else:
                out.append(token)
        expanded.append(out)
    return expanded


def _interleave(grid, second_per_grid: float, audio_tokens: int, geometry: PatchGeometry, config: ThinkerConfig):
    """<|audio_bos|> video chunk 0, audio chunk 0, video chunk 1, ... <|audio_eos|>. Chunk bounds use the
    processor's float64 time values (not the rope's truncated float32 ones)."""
    ids = config.token_ids
    per_chunk = int(config.position_id_per_seconds * config.seconds_per_chunk)
    rows, cols = grid[1] // geometry.merge_size, grid[2] // geometry.merge_size
    video_time = np.repeat(np.arange(grid[0]), rows * cols) * second_per_grid * config.position_id_per_seconds
    video_chunks = chunk_bounds(video_time.tolist(), per_chunk)
    audio_chunks = chunk_bounds(list(range(audio_tokens)), per_chunk)
    out = [ids.audio_start]
    for chunk in range(max(len(video_chunks), len(audio_chunks))):
        if chunk < len(video_chunks):
            out.extend([ids.video] * (video_chunks[chunk][1] - video_chunks[chunk][0]))
        if chunk < len(audio_chunks):
            out.extend([ids.audio] * (audio_chunks[chunk][1] - audio_chunks[chunk][0]))
    out.append(ids.audio_end)
    return out
