"""Qwen3-Omni rope index against the reference's `get_rope_index`, bound to a small object that holds
only what the function reads (the published token ids, position_id_per_seconds 13)."""

from __future__ import annotations

import pytest
import torch

from omni.errors import InputError
from omni.qwen3.config import TokenIds
from omni.qwen3.rope_index import rope_index

pytestmark = pytest.mark.parity

IDS = TokenIds(audio=151675, image=151655, video=151656, audio_start=151669, audio_end=151670,
               vision_start=151652, vision_end=151653, im_start=151644, im_end=151645, system=8948, user=872,
               assistant=77091, tts_pad=151671, tts_bos=151672, tts_eos=151673)
MERGE = 2


def _reference(position_id_per_seconds: int):
    from transformers.models.qwen3_omni_moe import modeling_qwen3_omni_moe as ref
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeThinkerConfig

    config = Qwen3OmniMoeThinkerConfig(
        audio_token_id=IDS.audio, image_token_id=IDS.image, video_token_id=IDS.video,
        audio_start_token_id=IDS.audio_start, position_id_per_seconds=position_id_per_seconds,
    )
    config.vision_start_token_id = IDS.vision_start  # read by get_rope_index, not a config field

    class Bound:
        get_rope_index = ref.Qwen3OmniMoePreTrainedModelForConditionalGeneration.get_rope_index
        get_llm_pos_ids_for_vision = ref.Qwen3OmniMoePreTrainedModelForConditionalGeneration.get_llm_pos_ids_for_vision

    bound = Bound()
    bound.config = config
    bound.spatial_merge_size = MERGE
    return bound, ref._get_feat_extract_output_lengths


class Prompt:
    """Builds one row's token ids and the media lists in prompt order."""

    def __init__(self, position_id_per_seconds: int, audio_tokens) -> None:
        self.tokens: list[int] = []
        self.images, self.videos, self.seconds, self.audios = [], [], [], []
        self.per_second = position_id_per_seconds
        self.audio_tokens = audio_tokens
        self.generator = torch.Generator().manual_seed(len(self.tokens) + 11)

    def text(self, count: int) -> Prompt:
        self.tokens += torch.randint(1000, 5000, (count,), generator=self.generator).tolist()
        return self

    def image(self, grid) -> Prompt:
        self.images.append(grid)
        self.tokens += [IDS.vision_start] + [IDS.image] * (grid[0] * grid[1] * grid[2] // MERGE**2) + [IDS.vision_end]
        return self

    def video(self, grid, seconds_per_grid: float) -> Prompt:
        self.videos.append(grid)
        self.seconds.append(seconds_per_grid)
        self.tokens += [IDS.vision_start] + [IDS.video] * (grid[0] * grid[1] * grid[2] // MERGE**2) + [IDS.vision_end]
        return self

    def audio(self, mel_frames: int) -> Prompt:
        self.audios.append(mel_frames)
        count = int(self.audio_tokens(torch.tensor(mel_frames)))
        self.tokens += [IDS.audio_start] + [IDS.audio] * count + [IDS.audio_end]
        return self

    def video_with_audio(self, grid, seconds_per_grid: float, mel_frames: int) -> Prompt:
        """Video and audio tokens interleaved by time, video first on ties (what the processor emits)."""
        self.videos.append(grid)
        self.seconds.append(seconds_per_grid)
        self.audios.append(mel_frames)
        audio_count = int(self.audio_tokens(torch.tensor(mel_frames)))
        per_frame = grid[1] * grid[2] // MERGE**2
        frame_times = [float(t * torch.tensor(seconds_per_grid, dtype=torch.float32) * self.per_second)
                       for t in range(grid[0])]
        video_times = [time for time in frame_times for _ in range(per_frame)]
        body, v, a = [], 0, 0
        while v < len(video_times) and a < audio_count:
            if video_times[v] <= a:
                body.append(IDS.video)
                v += 1
            else:
                body.append(IDS.audio)
                a += 1
        body += [IDS.video] * (len(video_times) - v) + [IDS.audio] * (audio_count - a)
        self.tokens += [IDS.vision_start, IDS.audio_start] + body + [IDS.audio_end, IDS.vision_end]
        return self


def _compare(rows: list[Prompt], position_id_per_seconds: int = 13, use_audio_in_video: bool = False,
             left_pad: bool = True) -> torch.Tensor:
    reference, _ = _reference(position_id_per_seconds)
    width = max(len(row.tokens) for row in rows)
    input_ids = torch.full((len(rows), width), 151643, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for index, row in enumerate(rows):
        count = len(row.tokens)
        columns = slice(width - count, width) if left_pad else slice(0, count)
        input_ids[index, columns] = torch.tensor(row.tokens)
        mask[index, columns] = 1
    images = [grid for row in rows for grid in row.images]
    videos = [grid for row in rows for grid in row.videos]
    seconds = [s for row in rows for s in row.seconds]
    audios = [mel for row in rows for mel in row.audios]
    image_grid = torch.tensor(images) if images else None
    video_grid = torch.tensor(videos) if videos else None
    expected, deltas = reference.get_rope_index(
        input_ids, image_grid, video_grid, mask, use_audio_in_video,
        torch.tensor(audios) if audios else None, torch.tensor(seconds) if seconds else None)
    got, next_position = rope_index(
        input_ids, IDS, image_grid, video_grid, seconds or None, audios or None, mask,
        spatial_merge_size=MERGE, position_id_per_seconds=position_id_per_seconds)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(got, expected)
    real = mask.sum(-1)
    assert torch.equal(next_position - real, deltas.reshape(-1).to(next_position.dtype))
    return got


def _prompt(per_second: int = 13) -> Prompt:
    _, audio_tokens = _reference(per_second)
    return Prompt(per_second, audio_tokens)


def test_text_only_with_padding():
    _compare([_prompt().text(9), _prompt().text(4)])


def test_images():
    got = _compare([_prompt().text(3).image((1, 4, 6)).text(2).image((1, 6, 4)).text(5)])
    assert not torch.equal(got[1], got[0])  # height and width really vary


@pytest.mark.parametrize("seconds_per_grid", [2.0, 1.0, 0.3, 0.5333])
def test_video_times_as_published(seconds_per_grid):
    got = _compare([_prompt().text(2).video((3, 4, 4), seconds_per_grid).text(3)])
    assert got[0].unique().numel() > 3


@pytest.mark.parametrize("mel_frames", [1, 99, 100, 101, 250, 873])
def test_audio_with_an_image(mel_frames):
    # an image takes the reference's multimodal branch; audio alone takes its text branch (below)
    _compare([_prompt().text(2).audio(mel_frames).text(1).image((1, 2, 4)).text(2)])


def test_audio_only_prompt():
    _compare([_prompt().text(2).audio(230).text(3)])


@pytest.mark.parametrize("seconds_per_grid, mel_frames", [(2.0, 400), (2.0, 30), (0.5, 800), (1.0, 260), (0.3, 200)])
def test_video_with_its_audio(seconds_per_grid, mel_frames):
    got = _compare([_prompt().text(3).video_with_audio((4, 4, 6), seconds_per_grid, mel_frames).text(4)],
                   use_audio_in_video=True)
    assert got.shape[2] > 20


def test_everything_in_a_padded_batch():
    rows = [
        _prompt().text(2).image((1, 4, 4)).text(1).audio(120).text(2).video((2, 4, 4), 2.0).text(1),
        _prompt().text(4).audio(300).text(2).image((1, 2, 2)).text(2).video((1, 2, 4), 1.0),
    ]
    _compare(rows)
    # with use_audio_in_video every video carries its audio track (what the processor emits then)
    rows = [
        _prompt().text(2).image((1, 4, 4)).text(1).audio(120).text(2).video_with_audio((2, 4, 4), 2.0, 150),
        _prompt().text(4).video_with_audio((3, 4, 4), 2.0, 300).text(2).image((1, 2, 2)).text(2),
    ]
    _compare(rows, use_audio_in_video=True)


def test_reference_reads_a_silent_video_as_text_under_use_audio_in_video():
    """The reference counts its media items as images + audios when use_audio_in_video is set, so a
    video without an audio track in such a prompt is never visited and its tokens get text positions.
    omni reads the block structure (<|vision_bos|> then <|video_pad|>) and gives it video positions:
    the two differ only for a prompt the processor does not produce."""
    reference, _ = _reference(13)
    prompt = _prompt().text(2).audio(120).text(1).video((2, 4, 4), 2.0).text(1)
    ids = torch.tensor([prompt.tokens])
    mask = torch.ones_like(ids)
    expected, _ = reference.get_rope_index(ids, None, torch.tensor(prompt.videos), mask, True,
                                           torch.tensor(prompt.audios), torch.tensor(prompt.seconds))
    got, _ = rope_index(ids, IDS, None, torch.tensor(prompt.videos), prompt.seconds, prompt.audios, mask)
    video = ids[0] == IDS.video
    reference_video = expected[:, 0, video]
    assert torch.equal(reference_video[0], reference_video[1])  # text: all three components equal
    assert not torch.equal(got[1, 0, video], got[2, 0, video])  # omni: height and width vary
    # and without the flag the reference agrees with omni
    _compare([prompt])


def test_position_id_per_seconds_25():
    _compare([_prompt(25).text(2).video((3, 4, 4), 2.0).text(2)], position_id_per_seconds=25)


def test_wrong_media_count_is_an_input_error():
    prompt = _prompt().text(2).image((1, 4, 4)).text(2)
    ids = torch.tensor([prompt.tokens])
    with pytest.raises(InputError):
        rope_index(ids, IDS, torch.tensor([(1, 4, 4), (1, 2, 2)]))
    with pytest.raises(InputError):
        rope_index(ids, IDS, torch.tensor([(1, 6, 4)]))
