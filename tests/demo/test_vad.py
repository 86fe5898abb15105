"""End-of-turn detection on real (espeak-ng) speech, silence and noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omni.vad import FRAME_SAMPLES, EndOfTurnDetector, SileroVAD, VADOptions, silero_model_path, to_mono_float
from omni.errors import InputError


def silence(seconds: float, rate: int) -> np.ndarray:
    return np.zeros(int(seconds * rate), np.int16)


def feed_in_chunks(detector: EndOfTurnDetector, samples: np.ndarray, rate: int, chunk_s: float = 0.25):
    """Feed like the browser does: fixed-duration chunks."""
    step = max(1, int(rate * chunk_s))
    events = []
    for start in range(0, samples.shape[0], step):
        events += detector.feed(samples[start:start + step], rate)
    return events


@pytest.fixture(scope="module")
def detector() -> EndOfTurnDetector:
    return EndOfTurnDetector()


def test_model_ships_in_the_wheel_and_leaves_torch_threads_alone():
    threads = torch.get_num_threads()
    vad = SileroVAD()
    assert silero_model_path().name == "silero_vad.jit"
    assert torch.get_num_threads() == threads
    assert vad.probability(np.zeros(FRAME_SAMPLES, np.float32)) < 0.1
    with pytest.raises(InputError, match="512 samples"):
        vad.probability(np.zeros(100, np.float32))


def test_speech_then_silence_is_one_turn(detector, spoken):
    samples, rate = spoken
    detector.reset()
    speech_s = samples.shape[0] / rate
    events = feed_in_chunks(detector, np.concatenate([silence(1.0, rate), samples, silence(1.5, rate)]), rate)
    assert [e.kind for e in events] == ["speech_start", "turn_end"]
    start, end = events
    # speech starts at 1.0 s; it is confirmed after min_speech_ms (plus a frame or two of model lag)
    assert 1.0 < start.stream_s < 1.0 + 0.25 + 0.3
    # the turn ends min_silence_ms after the speech (plus lag), well before the stream does
    assert 1.0 + speech_s + 0.5 < end.stream_s < 1.0 + speech_s + 1.3
    # the utterance is the speech, with at most pad_ms more on each side
    utterance_s = end.audio.shape[0] / 16000
    assert speech_s - 0.3 < utterance_s < speech_s + 0.5
    assert end.audio.dtype == np.float32 and np.abs(end.audio).max() > 0.1


def test_silence_and_quiet_noise_are_no_turn(detector):
    detector.reset()
    rate = 16000
    assert feed_in_chunks(detector, silence(3.0, rate), rate) == []
    noise = (np.random.default_rng(0).normal(0, 0.003, 3 * rate) * 32767).astype(np.int16)
    assert feed_in_chunks(detector, noise, rate) == []
    assert not detector.speaking
    assert detector.flush() == []


def test_a_short_pause_does_not_end_the_turn_a_long_one_does(detector, spoken):
    samples, rate = spoken
    detector.reset()
    short_pause = np.concatenate([samples, silence(0.3, rate), samples, silence(1.5, rate)])
    assert [e.kind for e in feed_in_chunks(detector, short_pause, rate)] == ["speech_start", "turn_end"]
    detector.reset()
    long_pause = np.concatenate([samples, silence(1.5, rate), samples, silence(1.5, rate)])
    assert [e.kind for e in feed_in_chunks(detector, long_pause, rate)] == ["speech_start", "turn_end"] * 2


def test_browser_rates_channels_and_chunk_sizes_give_the_same_turns(detector, spoken):
    """A 48 kHz stereo microphone in odd-sized chunks finds the same turn as 22.05 kHz mono."""
    samples, rate = spoken
    signal = np.concatenate([silence(0.5, rate), samples, silence(1.5, rate)])
    detector.reset()
    reference = feed_in_chunks(detector, signal, rate)
    t_source = np.arange(signal.shape[0]) / rate
    t_48k = np.arange(int(signal.shape[0] * 48000 / rate)) / 48000
    mono_48k = np.interp(t_48k, t_source, signal.astype(np.float32)).astype(np.int16)
    stereo_48k = np.stack([mono_48k, mono_48k], axis=1)  # (samples, channels), as Gradio hands it
    detector.reset()
    events = feed_in_chunks(detector, stereo_48k, 48000, chunk_s=0.137)
    assert [e.kind for e in events] == [e.kind for e in reference] == ["speech_start", "turn_end"]
    for ours, theirs in zip(events, reference):
        assert abs(ours.stream_s - theirs.stream_s) <= 0.1
    assert abs(events[1].audio.shape[0] - reference[1].audio.shape[0]) <= 0.1 * 16000


def test_stream_end_closes_an_utterance_in_progress(detector, spoken):
    samples, rate = spoken
    detector.reset()
    events = feed_in_chunks(detector, np.concatenate([silence(0.5, rate), samples]), rate)
    assert [e.kind for e in events] == ["speech_start"]
    assert detector.speaking
    (end,) = detector.flush()
    assert end.kind == "turn_end" and end.audio.shape[0] / 16000 > samples.shape[0] / rate - 0.3
    assert not detector.speaking


def test_long_monologue_is_cut_at_max_turn(spoken):
    samples, rate = spoken
    detector = EndOfTurnDetector(VADOptions(max_turn_s=1.0))
    events = feed_in_chunks(detector, np.concatenate([samples, silence(1.5, rate)]), rate)
    assert events[0].kind == "speech_start" and events[1].kind == "turn_end"
    assert events[1].audio.shape[0] / 16000 <= 1.0 + 0.25


def test_bad_microphone_input_is_a_clear_error():
    with pytest.raises(InputError, match="shape"):
        to_mono_float(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(InputError, match="dtype"):
        to_mono_float(np.array(["a", "b"]))
    with pytest.raises(InputError, match="sample rate"):
        EndOfTurnDetector().feed(np.zeros(100, np.int16), 0)


def test_turn_events_say_where_the_speech_began_and_ended(detector, spoken):
    """The Realtime API reports these as audio_start_ms / audio_end_ms: the speech, not the padding."""
    samples, rate = spoken
    detector.reset()
    speech_s = samples.shape[0] / rate
    events = feed_in_chunks(detector, np.concatenate([silence(1.0, rate), samples, silence(1.5, rate)]), rate)
    start, end = events
    assert abs(start.speech_start_s - 1.0) <= 0.1 and start.speech_start_s == end.speech_start_s
    assert 1.0 + speech_s - 0.15 <= end.speech_end_s <= 1.0 + speech_s + 0.2
    assert end.speech_end_s < end.stream_s
