"""Streaming Token2Wav against omni's own whole-utterance path, from the same initial noise.

Bounds: the joined stream must stay within STREAMING_SNR_DB of the whole-utterance waveform (40 dB:
the difference is below 1% of the signal's amplitude, far under what a listener hears on speech),
and no chunk border may jump by more than the largest sample-to-sample step of the whole-utterance
waveform itself (a click is a step the signal does not otherwise make). Measured on the test
checkpoints: about 88-94 dB, border jumps well under the signal's own largest step.
"""

import pytest
import torch

from omni.errors import InputError
from omni.talker.streaming import ChunkSchedule, StreamingToken2Wav

STREAMING_SNR_DB = 40.0


def _codes(count, seed=0):
    return torch.randint(0, 8192, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def _stream(t2w, voice, codes, seed, schedule=ChunkSchedule()):
    stream = StreamingToken2Wav(t2w, voice, t2w.noise(seed=seed), schedule)
    chunks, ready_after = [], []
    for index, code in enumerate(codes):
        new = stream.push(code)
        chunks += new
        ready_after += [index + 1] * len(new)
    chunks += stream.finish()
    return chunks, ready_after


def _quality(chunks, whole):
    joined = torch.cat(chunks)
    error = joined - whole
    snr_db = 10 * torch.log10(whole.pow(2).sum() / error.pow(2).sum()).item()
    borders = torch.tensor([len(c) for c in chunks[:-1]]).cumsum(0)
    jumps = (joined[borders] - joined[borders - 1]).abs()
    largest_step = (whole[1:] - whole[:-1]).abs().max()
    return joined, snr_db, jumps.max().item(), largest_step.item()


@pytest.mark.parametrize("schedule", [
    ChunkSchedule(),  # 24, 72, then 192-frame chunks; 24 frames of look-ahead; remembered past
    ChunkSchedule(later_chunk_frames=72, remember_past=False),  # Qwen's 72 / 48 / 24 windows, recomputed
    ChunkSchedule(first_chunk_frames=48, chunk_frames=48, later_chunk_frames=48, left_context_frames=24),
])
def test_stream_matches_whole_utterance(checkpoint, schedule):
    from omni.loading import load_model

    loaded = load_model(checkpoint, dtype="fp32", audio_output=True)
    t2w = loaded.model.token2wav
    voice = t2w.voice("Chelsie", loaded.speakers["Chelsie"])
    codes = _codes(150)
    whole = t2w.synthesize(torch.tensor(codes), voice, t2w.noise(seed=5))
    chunks, _ = _stream(t2w, voice, codes, seed=5, schedule=schedule)
    joined, snr_db, jump, largest_step = _quality(chunks, whole)
    assert joined.shape == whole.shape == (150 * 480,)
    assert len(chunks) >= 3
    assert snr_db >= STREAMING_SNR_DB, snr_db
    assert jump <= largest_step, (jump, largest_step)


def test_first_chunk_comes_as_soon_as_its_codes_and_look_ahead_exist(tiny_speech_model):
    t2w = tiny_speech_model.model.token2wav
    voice = t2w.voice("Ethan", tiny_speech_model.speakers["Ethan"])
    schedule = ChunkSchedule()
    chunks, ready_after = _stream(t2w, voice, _codes(100, seed=2), seed=1, schedule=schedule)
    # 24 frames of chunk + 24 of look-ahead = 48 mel frames = 24 codes
    assert ready_after[0] == schedule.codes_for_first_chunk(2) == 24
    assert [len(c) // 240 for c in chunks] == [24, 72, 104]  # 200 frames: the last chunk is the remainder
    # the second chunk ends at frame 96 and needs 24 frames beyond it: 60 codes
    assert ready_after[1] == 60
    assert sum(len(c) for c in chunks) == 100 * 480
    assert all(c.dtype == torch.float32 and c.abs().max() <= 1.0 for c in chunks)


def test_short_windows_run_on_one_thread_with_the_same_audio(tiny_speech_model, monkeypatch):
    t2w = tiny_speech_model.model.token2wav
    voice = t2w.voice("Chelsie", tiny_speech_model.speakers["Chelsie"])
    codes = _codes(100, seed=4)
    threads = torch.get_num_threads()
    seen = []
    mel_window = t2w.mel_window

    def recording(codes, *args, **kwargs):
        seen.append((codes.shape[1] * t2w.mel_frames_per_code, torch.get_num_threads()))
        return mel_window(codes, *args, **kwargs)

    monkeypatch.setattr(t2w, "mel_window", recording)
    schedule = ChunkSchedule()  # windows of 48, 96, then 104 frames (the remainder)
    chunks, _ = _stream(t2w, voice, codes, seed=2, schedule=schedule)
    assert torch.get_num_threads() == threads
    assert [frames for frames, _ in seen] == [48, 96, 104]
    assert all((used == 1) == (frames < schedule.one_thread_below_frames or threads == 1) for frames, used in seen)
    shared, _ = _stream(t2w, voice, codes, seed=2, schedule=ChunkSchedule(one_thread_below_frames=0))
    assert {used for _, used in seen[3:]} == {threads}
    # the same computation on fewer threads: at most float32 rounding apart
    assert (torch.cat(chunks) - torch.cat(shared)).abs().max().item() <= 1e-5


def test_stream_state_resets_and_refuses_use_after_finish(tiny_speech_model):
    t2w = tiny_speech_model.model.token2wav
    voice = t2w.voice("Chelsie", tiny_speech_model.speakers["Chelsie"])
    stream = StreamingToken2Wav(t2w, voice, t2w.noise(seed=3))
    first = torch.cat(stream.push(_codes(30)) + stream.finish())
    with pytest.raises(InputError, match="finished"):
        stream.push(1)
    stream.reset()
    stream.noise = t2w.noise(seed=3)
    again = torch.cat(stream.push(_codes(30)) + stream.finish())
    assert torch.equal(first, again)


@pytest.mark.parametrize("bad", [
    dict(chunk_frames=50), dict(first_chunk_frames=0), dict(left_context_frames=30),
    dict(vocoder_context_frames=48), dict(crossfade_samples=5000), dict(one_thread_below_frames=-1),
])
def test_bad_schedules_are_refused_with_the_limit(tiny_speech_model, bad):
    t2w = tiny_speech_model.model.token2wav
    voice = t2w.voice("Chelsie", tiny_speech_model.speakers["Chelsie"])
    with pytest.raises(InputError) as error:
        StreamingToken2Wav(t2w, voice, t2w.noise(seed=0), ChunkSchedule(**bad))
    assert next(iter(bad)) in str(error.value)


def test_codes_outside_the_codec_vocabulary_are_refused(tiny_speech_model):
    t2w = tiny_speech_model.model.token2wav
    voice = t2w.voice("Chelsie", tiny_speech_model.speakers["Chelsie"])
    with pytest.raises(InputError, match=r"\[0, 8193\]"):
        t2w.synthesize(torch.tensor([5, 9000]), voice, t2w.noise(seed=0))
