"""The 3-D (time, height, width) position ids of a Qwen3-Omni prompt.

Like Qwen2.5-Omni's TMRoPE (omni.rope_index) with these differences, all taken from the reference's
`Qwen3OmniMoePreTrainedModelForConditionalGeneration.get_rope_index`:
- time runs at `position_id_per_seconds` (13 in the published model, the AuT's 12.5 tokens/s rounded);
  a video's temporal patch i sits at i * second_per_grid * position_id_per_seconds, kept as a float
  (not truncated), so positions are float32 and can be fractional;
- an audio block takes `output_lengths(mel_frames)` positions (AuT: 13 per 100-frame chunk);
- a video with its audio track (<|vision_bos|><|audio_bos|> ... <|audio_eos|><|vision_eos|>) is
  merged token by token by time — a video token goes first on equal times — instead of in 2-second
  chunks; its two start tokens take two consecutive positions, and so do its two end tokens, which
  follow the largest position of the merge's last run (the reference's `llm_pos_ids_list[-1].max()`);
- every block's start token continues the text before it, and the text after an item resumes one past
  the largest position of the item's last piece.

Items are recognised by the block structure (a <|vision_bos|> followed by <|image_pad|>,
<|video_pad|> or <|audio_bos|>; an <|audio_bos|> followed by <|audio_pad|>), so omni needs no
use_audio_in_video flag. The reference, with that flag set, counts only images + audios and gives a
video without an audio track text positions; the processor never mixes the two in one prompt
(tests/qwen3/test_qwen3_rope_index.py shows the difference).

The arithmetic is done in float32 in the reference's order, so that fractional times round the same.
Padding positions are 0 when the call has images or videos and 1 otherwise (the reference's two
branches differ there; padding is masked, the value only matters for bit-equality).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from omni.encoders.qwen3.audio_encoder import output_lengths
from omni.errors import InputError
from omni.qwen3.config import TokenIds
from omni.rope_index import vision_positions


def rope_index(
    input_ids: torch.Tensor,
    token_ids: TokenIds,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    video_second_per_grid: torch.Tensor | Sequence[float] | None = None,
    audio_feature_lens: torch.Tensor | Sequence[int] | None = None,
    token_mask: torch.Tensor | None = None,
    spatial_merge_size: int = 2,
    position_id_per_seconds: int = 13,
    n_window: int = 50,
) -> tuple[torch.Tensor, torch.Tensor]:
    """position_ids (3, batch, seq) float32 and next_position (batch,) float32 = largest position + 1.

    Media are consumed in prompt order across the batch (row 0's first, as the processor concatenates
    them): `image_grid_thw` (images, 3), `video_grid_thw` (videos, 3) with `video_second_per_grid`
    (videos,), `audio_feature_lens` (audios,) in log-mel frames — standalone clips and videos' audio
    tracks in the order their blocks appear. The reference's position deltas are
    next_position - real tokens per row."""
    batch, seq = input_ids.shape
    mask = token_mask.bool() if token_mask is not None else torch.ones(batch, seq, dtype=torch.bool)
    has_vision = image_grid_thw is not None or video_grid_thw is not None
    positions = torch.full((3, batch, seq), 0.0 if has_vision else 1.0, dtype=torch.float32)
    next_position = torch.zeros(batch, dtype=torch.float32)
    walker = _Walker(
        token_ids,
        [tuple(int(v) for v in row) for row in (image_grid_thw.tolist() if image_grid_thw is not None else [])],
        [tuple(int(v) for v in row) for row in (video_grid_thw.tolist() if video_grid_thw is not None else [])],
        torch.as_tensor(video_second_per_grid if video_second_per_grid is not None else [], dtype=torch.float32),
        [int(v) for v in (audio_feature_lens.tolist() if isinstance(audio_feature_lens, torch.Tensor)
                          else (audio_feature_lens or []))],
        spatial_merge_size, position_id_per_seconds, n_window,
    )
    for row in range(batch):
        row_positions = walker.row(input_ids[row][mask[row]].tolist())
        positions[:, row, mask[row]] = row_positions
        next_position[row] = row_positions.max() + 1 if row_positions.numel() else 0.0
    walker.check_all_used()
    return positions, next_position


class _Walker:
    """Assigns positions row by row while consuming the media lists in order."""

    def __init__(self, ids: TokenIds, images, videos, seconds_per_grid, audio_lens, merge, per_second,
                 n_window) -> None:
        self.ids, self.images, self.videos = ids, images, videos
        self.seconds_per_grid, self.audio_lens = seconds_per_grid, audio_lens
        self.merge, self.per_second, self.n_window = merge, per_second, n_window
        self.next_image = self.next_video = self.next_audio = 0

    def row(self, tokens: list[int]) -> torch.Tensor:
        ids = self.ids
        pieces: list[torch.Tensor] = []  # (3, n) float32 position blocks, in token order
        text_start = 0  # first token not yet given a position

        def resume() -> torch.Tensor | int:
            # where the next piece starts: one past the largest position of the last piece
            return pieces[-1].max() + 1 if pieces else 0

        def line(count: int, start) -> torch.Tensor:
            return (torch.arange(count).view(1, -1).expand(3, -1) + start).float()

        index = 0
        while index < len(tokens):
            kind = self._item_at(tokens, index)
            if kind is None:
                index += 1
                continue
            start = resume()
            if index > text_start:
                pieces.append(line(index - text_start, start))
                start = start + (index - text_start)
            opening = 2 if kind == "audio_in_video" else 1
            pieces.append(line(opening, start))
            start = start + opening
            body_start = index + opening
            if kind == "audio":
                count = int(output_lengths(self._take(self.audio_lens, "next_audio", "audio"), self.n_window))
                self._expect_run(tokens, body_start, [ids.audio] * count, "audio")
                pieces.append(line(count, start))
                body = count
            elif kind == "image":
                grid = self._take(self.images, "next_image", "image")
                time = (torch.arange(grid[0]) * 1 * self.per_second).float()
                block = vision_positions(grid, time, self.merge).float() + start
                self._expect_run(tokens, body_start, [ids.image] * block.shape[1], "image")
                pieces.append(block)
                body = block.shape[1]
            elif kind == "video":
                video = self.next_video
                grid = self._take(self.videos, "next_video", "video")
                block = vision_positions(grid, self._video_time(video, grid[0]), self.merge).float() + start
                self._expect_run(tokens, body_start, [ids.video] * block.shape[1], "video")
                pieces.append(block)
                body = block.shape[1]
            else:
                merged, last_run, body = self._audio_in_video(start)
                inside = tokens[body_start : body_start + body]
                video_tokens = int((merged[1] == 0).sum())
                if len(inside) != body or inside.count(ids.video) != video_tokens \
                        or inside.count(ids.audio) != body - video_tokens:
                    raise InputError(f"a video/audio block must hold {video_tokens} video and "
                                     f"{body - video_tokens} audio tokens")
                pieces.append(merged[0])
                pieces.append(last_run)
            closing = 2 if kind == "audio_in_video" else 1
            pieces.append(line(closing, resume()))
            index = body_start + body + closing
            text_start = index
        if text_start < len(tokens):
            pieces.append(line(len(tokens) - text_start, resume()))
        return torch.cat(pieces, dim=1) if pieces else torch.zeros(3, 0)

    def _item_at(self, tokens: list[int], index: int) -> str | None:
        ids = self.ids
        token = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if token == ids.vision_start:
            if following == ids.image:
                return "image"
            if following == ids.video:
                return "video"
            if following == ids.audio_start:
                return "audio_in_video"
        elif token == ids.audio_start and following == ids.audio:
            return "audio"
        return None

    def _video_time(self, video: int, grid_t: int) -> torch.Tensor:
        if video >= self.seconds_per_grid.numel():
            raise InputError(f"video {video + 1} has no second_per_grid value")
        return (torch.arange(grid_t) * self.seconds_per_grid[video] * self.per_second).float()

    def _audio_in_video(self, start) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor, int]:
        """((merged positions before the last run, is_audio flags of all tokens), the last run, tokens).

        The merge takes a video token first while its time is <= the next audio token's; the last
        run (the tail of whichever stream outlasts the other) is its own piece, because the end tokens
        resume from its largest position."""
        video = self.next_video
        grid = self._take(self.videos, "next_video", "video")
        audio_count = int(output_lengths(self._take(self.audio_lens, "next_audio", "audio"), self.n_window))
        audio_block = (torch.arange(audio_count).view(1, -1).expand(3, -1) + start).float()
        video_block = vision_positions(grid, self._video_time(video, grid[0]), self.merge).float() + start
        video_count = video_block.shape[1]
        # output slot of each token: a video token follows the audio tokens strictly earlier than it,
        # an audio token follows the video tokens at or before its time
        video_slot = torch.arange(video_count) + torch.searchsorted(audio_block[0].contiguous(),
                                                                    video_block[0].contiguous(), right=False)
        audio_slot = torch.arange(audio_count) + torch.searchsorted(video_block[0].contiguous(),
                                                                    audio_block[0].contiguous(), right=True)
        total = video_count + audio_count
        merged = torch.empty(3, total)
        is_audio = torch.empty(total, dtype=torch.long)
        merged[:, video_slot], merged[:, audio_slot] = video_block, audio_block
        is_audio[video_slot], is_audio[audio_slot] = 0, 1
        run_start = total
        while run_start > 0 and is_audio[run_start - 1] == is_audio[total - 1]:
            run_start -= 1
        if video_count == 0 or audio_count == 0:
            run_start = 0 if audio_count == 0 else video_count  # the reference appends video, then audio
        return (merged[:, :run_start], is_audio), merged[:, run_start:], total

    def _take(self, items: list, counter: str, kind: str):
        position = getattr(self, counter)
        if position >= len(items):
            raise InputError(f"the prompt holds more {kind} placeholders than the {len(items)} {kind}s given")
        setattr(self, counter, position + 1)
        return items[position]

    @staticmethod
    def _expect_run(tokens: list[int], start: int, expected: list[int], kind: str) -> None:
        if tokens[start : start + len(expected)] != expected:
            raise InputError(f"a {kind} placeholder run holds fewer tokens than its media needs ({len(expected)})")

    def check_all_used(self) -> None:
        for items, counter, kind in ((self.images, self.next_image, "image"), (self.videos, self.next_video, "video"),
                                     (self.audio_lens, self.next_audio, "audio")):
            if counter != len(items):
                raise InputError(f"{len(items)} {kind}s were given but the prompt has placeholders for {counter}")
