"""omni's TMRoPE index against the reference `get_rope_index` on synthetic prompts: text, images,
videos at awkward frame rates, audio, videos interleaved with their audio, left-padded batches."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from omni.config import MultimodalTokenIds
from omni.rope_index import chunk_bounds, rope_index, video_time_index

IDS = MultimodalTokenIds()
TEXT = list(range(1000, 1100))


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    from transformers import Qwen2_5OmniProcessor, Qwen2_5OmniThinkerForConditionalGeneration

    model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    return model.model, Qwen2_5OmniProcessor.from_pretrained(tiny_checkpoint)


def _audio_tokens(frames: int) -> int:
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1


class _Prompt:
    """Builds ids and the media lists side by side; interleaved blocks come from the reference
    processor's own placeholder expansion."""

    def __init__(self, processor) -> None:
        self.processor = processor
        self.rows: list[list[int]] = []
        self.images, self.videos, self.seconds, self.audio = [], [], [], []

    def row(self, *segments) -> None:
        ids: list[int] = []
        for kind, *args in segments:
            if kind == "text":
                ids.extend(random.choice(TEXT) for _ in range(args[0]))
            elif kind == "image":
                self.images.append(args[0])
                ids += [IDS.vision_start] + [IDS.image] * (np.prod(args[0]) // 4) + [IDS.vision_end]
            elif kind == "video":
                self.videos.append(args[0])
                self.seconds.append(args[1])
                ids += [IDS.vision_start] + [IDS.video] * (np.prod(args[0]) // 4) + [IDS.vision_end]
            elif kind == "audio":
                self.audio.append(args[0])
                ids += [IDS.audio_start] + [IDS.audio] * _audio_tokens(args[0]) + [IDS.audio_end]
            elif kind == "video_audio":
                grid, seconds, frames = args
                self.videos.append(grid)
                self.seconds.append(seconds)
                self.audio.append(frames)
                text = self.processor.replace_video_with_audio_token(
                    {"video_grid_thw": torch.tensor([grid]), "video_second_per_grid": [seconds]}, 0,
                    {"num_audio_tokens": [_audio_tokens(frames)]}, 0, position_id_per_seconds=25, seconds_per_chunk=2.0)
                block = [{"<|audio_bos|>": IDS.audio_start, "<|audio_eos|>": IDS.audio_end, "<|VIDEO|>": IDS.video,
                          "<|AUDIO|>": IDS.audio}[piece] for piece in _split_special(text)]
                ids += [IDS.vision_start] + block + [IDS.vision_end]
        self.rows.append(ids)

    def tensors(self):
        longest = max(len(row) for row in self.rows)
        input_ids = torch.full((len(self.rows), longest), 151643)
        mask = torch.zeros((len(self.rows), longest), dtype=torch.long)
        for index, row in enumerate(self.rows):
            input_ids[index, longest - len(row):] = torch.tensor(row)
            mask[index, longest - len(row):] = 1
        grid = lambda rows: torch.tensor(rows, dtype=torch.long) if rows else None  # noqa: E731
        return (input_ids, mask, grid(self.images), grid(self.videos),
                torch.tensor(self.seconds, dtype=torch.float32) if self.seconds else None,
                torch.tensor(self.audio, dtype=torch.long) if self.audio else None)


def _split_special(text: str) -> list[str]:
    pieces, rest = [], text
    while rest:
        end = rest.index("|>") + 2
        pieces.append(rest[:end])
        rest = rest[end:]
    return pieces


def _compare(reference, prompt: _Prompt, use_audio_in_video: bool) -> None:
    model, _ = reference
    input_ids, mask, images, videos, seconds, audio = prompt.tensors()
    expected, deltas = model.get_rope_index(input_ids, images, videos, mask, use_audio_in_video, audio, seconds)
    actual, next_position = rope_index(input_ids, IDS, images, videos, seconds, audio, token_mask=mask.bool())
    real = mask.bool()
    assert torch.equal(actual[:, real], expected[:, real])
    assert next_position.tolist() == (deltas.view(-1) + mask.sum(-1)).tolist()


def test_text_only_batch(reference):
    prompt = _Prompt(reference[1])
    prompt.row(("text", 7))
    prompt.row(("text", 3))
    input_ids, mask, *_ = prompt.tensors()
    positions, next_position = rope_index(input_ids, IDS, token_mask=mask.bool())
    assert positions[0, 1, -3:].tolist() == [0, 1, 2] and next_position.tolist() == [7, 3]
    assert (positions[:, 1, :4] == 1).all()  # padding positions are 1, as in the reference


@pytest.mark.parity
@pytest.mark.parametrize("seed", range(6))
def test_images_videos_audio_match_reference(reference, seed):
    random.seed(seed)
    prompt = _Prompt(reference[1])
    for _ in range(3):
        segments = [("text", random.randint(1, 6))]
        for _ in range(random.randint(1, 4)):
            kind = random.choice(["image", "video", "audio"])
            if kind == "image":
                segments.append(("image", [1, 2 * random.randint(1, 5), 2 * random.randint(1, 7)]))
            elif kind == "video":
                fps = random.choice([2.0, 1.9, 0.3, 3.7, 25 / 13])
                segments.append(("video", [random.randint(1, 4), 2 * random.randint(1, 3), 2 * random.randint(1, 3)],
                                 2 / fps))
            else:
                segments.append(("audio", random.randint(3, 900)))
            segments.append(("text", random.randint(0, 4)))
        prompt.row(*segments)
    _compare(reference, prompt, use_audio_in_video=False)


@pytest.mark.parity
@pytest.mark.parametrize("case", [
    # (grid, seconds per temporal patch, audio frames)
    ([5, 4, 6], 1.0, 500),  # 5 s video, 5 s audio: three 2-second chunks each
    ([3, 2, 2], 1.0, 1000),  # audio runs past the video
    ([6, 2, 4], 1.0, 150),  # video runs past the audio
    ([4, 2, 20], 1.0, 210),  # the last piece is a short audio chunk, the video chunk before it is wide
    ([4, 2, 2], 2 / 0.3, 700),  # one temporal patch per 6.7 s: time jumps over whole chunks
    ([7, 4, 4], 2 / 1.9, 333),  # a rate whose time values are not whole numbers
])
def test_interleaved_video_and_audio_match_reference(reference, case):
    random.seed(7)
    prompt = _Prompt(reference[1])
    prompt.row(("text", 4), ("video_audio", *case), ("text", 5))
    prompt.row(("text", 2), ("image", [1, 4, 4]), ("audio", 77), ("video_audio", *case), ("text", 1))
    _compare(reference, prompt, use_audio_in_video=True)


def test_end_tokens_follow_the_last_piece_not_the_largest_position(reference):
    """The quirk omni keeps for parity: after an interleaved block ending in a short audio chunk, the
    end tokens sit one past that chunk, below the block's largest (video width) position."""
    prompt = _Prompt(reference[1])
    prompt.row(("video_audio", [4, 2, 40], 1.0, 210))
    input_ids, mask, _, videos, seconds, audio = prompt.tensors()
    positions, next_position = rope_index(input_ids, IDS, None, videos, seconds, audio, token_mask=mask.bool())
    ends = (input_ids[0] == IDS.audio_end).nonzero().item()
    assert positions[0, 0, ends].item() < positions[:, 0, :ends].max().item()
    assert next_position.item() == positions[:, 0].max().item() + 1


def test_helpers():
    assert chunk_bounds([0, 0, 25, 50, 50, 75, 100], 50) == [(0, 3), (3, 6), (6, 7)]
    assert chunk_bounds([0, 150, 150, 150], 50) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert video_time_index(4, 2 / 1.9, 25).tolist() == [0, 26, 52, 78]


def test_mismatched_media_are_input_errors():
    from omni.errors import InputError

    ids = torch.tensor([[1, IDS.vision_start, IDS.image, IDS.image, IDS.vision_end]])
    with pytest.raises(InputError, match="more image placeholders"):
        rope_index(ids, IDS)
    with pytest.raises(InputError, match="fewer tokens"):
        rope_index(ids, IDS, image_grid_thw=torch.tensor([[1, 4, 4]]))
    with pytest.raises(InputError, match="2 images were given"):
        rope_index(ids, IDS, image_grid_thw=torch.tensor([[1, 2, 4], [1, 2, 2]]))
