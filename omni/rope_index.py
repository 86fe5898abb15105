"""TMRoPE: the 3-D (time, height, width) position ids of a Qwen2.5-Omni prompt.

Text takes one position per token on all three axes. A vision item starts where the text left off
(`base`): its merged patch (t, row, col) sits at base + (time, row, col), where time counts 25
positions per second (an image's single frame is time 0; a video's temporal patch i is at
int(i * second_per_grid * 25)). Audio takes one position per token (a token is 40 ms, so audio also
runs at 25 positions per second). After an item, text resumes one past the largest position of the
item's last piece. With use_audio_in_video a video and its audio track share one `base` and are
interleaved in 2-second chunks (video chunk 0, audio chunk 0, video chunk 1, ...), both bracketed by
two start tokens at one position and two end tokens at one position.

This is a pure function of token ids and media geometry, equal to the transformers reference's
`get_rope_index`, including its float32 time arithmetic and the quirk that the end tokens of an
interleaved block follow the last *piece* (not the largest position) of the block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from omni.encoders.audio_encoder import audio_token_count
from omni.config import MultimodalTokenIds
from omni.errors import InputError


def vision_positions(grid_thw: Sequence[int], time_index: torch.Tensor, merge: int) -> torch.Tensor:
    """(3, tokens) offsets (time, row, col) of a vision item's merged patches, time-major."""
    _, grid_h, grid_w = (int(v) for v in grid_thw)
    rows, cols = grid_h // merge, grid_w // merge
    frames = time_index.shape[0]
    time = time_index.view(-1, 1).expand(-1, rows * cols).reshape(-1)
    row = torch.arange(rows).view(1, -1, 1).expand(frames, -1, cols).reshape(-1)
    col = torch.arange(cols).view(1, 1, -1).expand(frames, rows, -1).reshape(-1)
    return torch.stack([time, row, col])


def video_time_index(grid_t: int, second_per_grid: float | torch.Tensor, position_id_per_seconds: int) -> torch.Tensor:
    """Time position of each temporal patch; float32 arithmetic truncated, as the reference computes it."""
    seconds = torch.as_tensor(second_per_grid, dtype=torch.float32).reshape(())
    return (torch.arange(grid_t) * seconds * position_id_per_seconds).long()


def chunk_bounds(values: Sequence[float] | torch.Tensor, tokens_per_chunk: int) -> list[tuple[int, int]]:
    """Split a non-decreasing sequence of time values into (start, end) index ranges at multiples of
    `tokens_per_chunk`. A value that jumps several chunks ahead closes one chunk per following value
    (the reference's rule: the chunk counter moves by one per token), so chunks are never empty."""
    values = values.tolist() if isinstance(values, torch.Tensor) else list(values)
    bounds, start, chunk = [], 0, 1
    for index, value in enumerate(values):
        if value >= chunk * tokens_per_chunk:
            bounds.append((start, index))
            start, chunk = index, chunk + 1
    bounds.append((start, len(values)))
    return bounds


def rope_index(
    input_ids: torch.Tensor,
    token_ids: MultimodalTokenIds,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    video_second_per_grid: torch.Tensor | Sequence[float] | None = None,
    audio_feature_lens: torch.Tensor | Sequence[int] | None = None,
    token_mask: torch.Tensor | None = None,
    spatial_merge_size: int = 2,
    position_id_per_seconds: int = 25,
    seconds_per_chunk: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """position_ids (3, batch, seq) long and next_position (batch,) = largest position + 1 per row.

    Media are consumed in prompt order across the batch (row 0's first, as the processor concatenates
    them): `image_grid_thw` (images, 3), `video_grid_thw` (videos, 3) with `video_second_per_grid`
    (videos,), `audio_feature_lens` (audios,) in log-mel frames — standalone clips and videos' audio
    tracks in the order their blocks appear. A video whose block opens with <|audio_bos|> right after
    <|vision_bos|> is interleaved with the next audio; other videos are plain. Padding positions
    (token_mask False) are 1, as in the reference."""
    batch, seq = input_ids.shape
    walker = _Walker(
        token_ids,
        [tuple(int(v) for v in row) for row in (image_grid_thw.tolist() if image_grid_thw is not None else [])],
        [tuple(int(v) for v in row) for row in (video_grid_thw.tolist() if video_grid_thw is not None else [])],
        torch.as_tensor(video_second_per_grid if video_second_per_grid is not None else [], dtype=torch.float32),
        [int(v) for v in (audio_feature_lens.tolist() if isinstance(audio_feature_lens, torch.Tensor)
                          else (audio_feature_lens or []))],
        spatial_merge_size, position_id_per_seconds, position_id_per_seconds * seconds_per_chunk,
    )
    positions = torch.ones(3, batch, seq, dtype=torch.long)
    next_position = torch.zeros(batch, dtype=torch.long)
    for row in range(batch):
        real = token_mask[row].bool() if token_mask is not None else torch.ones(seq, dtype=torch.bool)
        row_positions = walker.row(input_ids[row][real].tolist())
        positions[:, row, real] = row_positions
        next_position[row] = int(row_positions.max()) + 1 if row_positions.numel() else 0
    walker.check_all_used()
    return positions, next_position


class _Walker:
    """Assigns positions row by row while consuming the media lists in order."""

    def __init__(self, ids: MultimodalTokenIds, images, videos, seconds_per_grid, audio_lens, merge, per_second,
                 tokens_per_chunk) -> None:
        self.ids, self.images, self.videos = ids, images, videos
        self.seconds_per_grid, self.audio_lens = seconds_per_grid, audio_lens
        self.merge, self.per_second, self.tokens_per_chunk = merge, per_second, tokens_per_chunk
        self.next_image = self.next_video = self.next_audio = 0

    def row(self, tokens: list[int]) -> torch.Tensor:
        ids = self.ids
        pieces: list[torch.Tensor] = []  # (3, n) position blocks, in token order
        cursor = 0  # the position the next text token takes
        text_start = 0
        index = 0

        def flush_text(end: int) -> None:
            nonlocal cursor
            if end > text_start:
                pieces.append(torch.arange(cursor, cursor + end - text_start).view(1, -1).expand(3, -1))
                cursor += end - text_start

        while index < len(tokens):
            token = tokens[index]
            if token == ids.image:
                flush_text(index)
                grid = self._take(self.images, "next_image", "image")
                block = vision_positions(grid, torch.zeros(grid[0], dtype=torch.long), self.merge) + cursor
                index = self._expect_run(tokens, index, ids.image, block.shape[1], "image")
            elif token == ids.video:
                flush_text(index)
                video = self.next_video
                grid = self._take(self.videos, "next_video", "video")
                time = video_time_index(grid[0], self._seconds(video), self.per_second)
                block = vision_positions(grid, time, self.merge) + cursor
                index = self._expect_run(tokens, index, ids.video, block.shape[1], "video")
            elif token == ids.audio:
                flush_text(index)
                count = audio_token_count(self._take(self.audio_lens, "next_audio", "audio"))
                block = torch.arange(cursor, cursor + count).view(1, -1).expand(3, -1)
                index = self._expect_run(tokens, index, ids.audio, count, "audio")
            elif (token == ids.audio_start and index > 0 and tokens[index - 1] == ids.vision_start
                  and index + 1 < len(tokens) and tokens[index + 1] == ids.video):
                # <|vision_bos|><|audio_bos|> open a video interleaved with its audio track: both start
                # tokens share one position
                flush_text(index - 1)
                pieces.append(torch.full((3, 2), cursor, dtype=torch.long))
                cursor += 1
                consumed, video_tokens, audio_tokens = self._interleaved(cursor)
                after = index + 1 + video_tokens + audio_tokens
                inside = tokens[index + 1 : after]
                if inside.count(ids.video) != video_tokens or inside.count(ids.audio) != audio_tokens:
                    raise InputError(f"an interleaved video/audio block must hold {video_tokens} video and "
                                     f"{audio_tokens} audio tokens")
                if tokens[after : after + 2] != [ids.audio_end, ids.vision_end]:
                    raise InputError("an interleaved video/audio block must end with <|audio_eos|><|vision_eos|>")
                pieces.extend(consumed)
                end_position = int(consumed[-1].max()) + 1
                pieces.append(torch.full((3, 2), end_position, dtype=torch.long))  # <|audio_eos|><|vision_eos|>
                cursor = end_position + 1
                index = after + 2
                text_start = index
                continue
            else:
                index += 1
                continue
            pieces.append(block)
            cursor = int(block.max()) + 1
            text_start = index
        flush_text(len(tokens))
        return torch.cat(pieces, dim=1) if pieces else torch.zeros(3, 0, dtype=torch.long)

    def _interleaved(self, base: int) -> tuple[list[torch.Tensor], int, int]:
        """The position pieces of a video and its audio track in the reference's order (video chunk 0,
        audio chunk 0, ...), and the two token counts."""
        video = self.next_video
        grid = self._take(self.videos, "next_video", "video")
        audio_tokens = audio_token_count(self._take(self.audio_lens, "next_audio", "audio"))
        time = video_time_index(grid[0], self._seconds(video), self.per_second)
        video_block = vision_positions(grid, time, self.merge) + base
        audio_block = torch.arange(base, base + audio_tokens).view(1, -1).expand(3, -1)
        video_chunks = chunk_bounds(video_block[0] - base, self.tokens_per_chunk)
        audio_chunks = chunk_bounds(audio_block[0] - base, self.tokens_per_chunk)
        pieces = []
        for chunk in range(max(len(video_chunks), len(audio_chunks))):
            if chunk < len(video_chunks):
                pieces.append(video_block[:, video_chunks[chunk][0] : video_chunks[chunk][1]])
            if chunk < len(audio_chunks):
                pieces.append(audio_block[:, audio_chunks[chunk][0] : audio_chunks[chunk][1]])
        return [piece for piece in pieces if piece.shape[1] > 0], video_block.shape[1], audio_tokens

    def _seconds(self, video: int) -> torch.Tensor:
        if video >= self.seconds_per_grid.numel():
            raise InputError(f"video {video + 1} has no second_per_grid value")
        return self.seconds_per_grid[video]

    def _take(self, items: list, counter: str, kind: str):
        position = getattr(self, counter)
        if position >= len(items):
            raise InputError(f"the prompt holds more {kind} placeholders than the {len(items)} {kind}s given")
        setattr(self, counter, position + 1)
        return items[position]

    @staticmethod
    def _expect_run(tokens: list[int], index: int, token: int, count: int, kind: str) -> int:
        end = index + count
        if tokens[index:end] != [token] * count:
            raise InputError(f"a {kind} placeholder run holds fewer tokens than its media needs ({count})")
        return end

    def check_all_used(self) -> None:
        for items, counter, kind in ((self.images, self.next_image, "image"), (self.videos, self.next_video, "video"),
                                     (self.audio_lens, self.next_audio, "audio")):
            if counter != len(items):
                raise InputError(f"{len(items)} {kind}s were given but the prompt has placeholders for {counter}")
