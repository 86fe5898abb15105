"""Audio from every container to 16 kHz mono float32, sections, audio tracks of videos, and the typed
errors of broken, empty, silent or too long audio."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from omni.encoders.audio_loader import load_audio
from omni.encoders.limits import MediaLimits
from omni.errors import MediaError
from omni.tools.media_factory import AUDIO_FORMATS, tone, truncated_copy, write_audio

RATE = 16000


def _peak_hz(waveform: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(waveform * np.hanning(len(waveform))))
    return float(np.argmax(spectrum) * RATE / len(waveform))


@pytest.mark.parametrize("kind", sorted(AUDIO_FORMATS))
def test_every_container_decodes_to_16khz_mono(media, kind):
    waveform = load_audio(str(media.tone[kind]), MediaLimits())
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    # 1.5 s; lossy codecs add a few ms of encoder delay / padding
    assert abs(waveform.size / RATE - 1.5) < 0.05
    middle = waveform[RATE // 4 : RATE]
    # the two channels (440 Hz and 880 Hz, amplitude 0.5 each) are averaged, not summed or scaled
    assert 0.38 < np.abs(middle).max() < 0.5
    assert min(abs(_peak_hz(middle) - 440), abs(_peak_hz(middle) - 880)) < 10


def test_speech_from_espeak_decodes(media):
    waveform = load_audio(str(media.speech), MediaLimits())
    assert 1.5 < waveform.size / RATE < 10
    assert np.abs(waveform).max() > 0.1


def test_section_cuts_by_seconds(media):
    full = load_audio(str(media.tone["wav"]), MediaLimits())
    cut = load_audio(str(media.tone["wav"]), MediaLimits(), start_s=0.5, end_s=1.0)
    assert cut.size == 8000
    assert np.allclose(cut, full[8000:16000], atol=1e-6)


def test_long_offset_seeks_to_the_same_samples(tmp_path):
    path = write_audio(tmp_path / "long.flac", tone(14.0, 300.0, channels=1), 44100, "flac")
    full = load_audio(str(path), MediaLimits())
    seeked = load_audio(str(path), MediaLimits(), start_s=12.0, end_s=13.0)
    assert seeked.size == RATE
    # the seek lands on a codec frame boundary whose time is not on the 16 kHz grid: the result may
    # be offset by a fraction of a sample (at most one sample's change of a 300 Hz tone: 0.06), not more
    assert np.abs(seeked - full[12 * RATE : 13 * RATE]).max() < 0.06


def test_waveform_arrays_are_taken_as_16khz_mono():
    samples = np.sin(np.arange(RATE) / 10).astype(np.float64)
    waveform = load_audio(samples, MediaLimits(), start_s=0.25)
    assert waveform.dtype == np.float32 and waveform.size == 12000
    pcm = (samples * 32767).astype(np.int16)
    assert np.abs(load_audio(pcm, MediaLimits()) - samples).max() < 1e-3
    assert load_audio(torch.from_numpy(samples), MediaLimits()).size == RATE
    with pytest.raises(MediaError, match="mono"):
        load_audio(np.zeros((2, 100), np.float32), MediaLimits())
    with pytest.raises(MediaError, match="NaN"):
        load_audio(np.full(100, np.nan, np.float32), MediaLimits())


def test_audio_track_of_a_video(media):
    waveform = load_audio(str(media.video_audio["mkv"]), MediaLimits())
    assert abs(waveform.size / RATE - 3.0) < 0.05
    assert abs(_peak_hz(waveform[RATE:2 * RATE]) - 330) < 10


def test_video_without_audio_track(media):
    with pytest.raises(MediaError, match="has no audio track"):
        load_audio(str(media.video["mp4"]), MediaLimits())


def test_too_long_audio_names_the_limit(media):
    with pytest.raises(MediaError, match="longer than the 1 s limit"):
        load_audio(str(media.tone["mp3"]), MediaLimits(max_audio_seconds=1.0))
    with pytest.raises(MediaError, match="longer than the 1 s limit"):
        load_audio(np.zeros(2 * RATE, np.float32), MediaLimits(max_audio_seconds=1.0))


def test_zero_length_and_silent_audio(tmp_path):
    empty = write_audio(tmp_path / "empty.wav", np.zeros((1, 0), np.float32), 44100, "wav")
    with pytest.raises(MediaError, match="no decodable audio|empty"):
        load_audio(str(empty), MediaLimits())
    with pytest.raises(MediaError, match="empty"):
        load_audio(np.zeros(0, np.float32), MediaLimits())
    silent = write_audio(tmp_path / "silent.flac", np.zeros((1, 44100), np.float32), 44100, "flac")
    assert not load_audio(str(silent), MediaLimits()).any()  # accepted by default
    with pytest.raises(MediaError, match="digital silence"):
        load_audio(str(silent), MediaLimits(reject_silent_audio=True))


def test_section_past_the_end_is_empty(media):
    with pytest.raises(MediaError, match="empty"):
        load_audio(str(media.tone["wav"]), MediaLimits(), start_s=5.0)
    with pytest.raises(MediaError, match="empty or negative"):
        load_audio(str(media.tone["wav"]), MediaLimits(), start_s=1.0, end_s=0.5)


def test_broken_files_are_media_errors(media, tmp_path):
    text = tmp_path / "notes.mp3"
    text.write_text("this is not audio at all " * 40)
    with pytest.raises(MediaError, match="cannot be opened"):
        load_audio(str(text), MediaLimits())
    image = tmp_path / "picture.wav"
    image.write_bytes(media.image_png.read_bytes())
    with pytest.raises(MediaError):
        load_audio(str(image), MediaLimits())
    with pytest.raises(MediaError):
        load_audio(str(truncated_copy(media.tone["m4a"], tmp_path / "cut.m4a", 0.05)), MediaLimits())


@pytest.mark.parametrize("kind", ["mp3", "flac", "wav"])
def test_truncated_stream_keeps_what_decodes(media, tmp_path, kind):
    cut = truncated_copy(media.tone[kind], tmp_path / f"cut.{kind}", 0.5)
    waveform = load_audio(str(cut), MediaLimits())
    assert 0.2 < waveform.size / RATE < 1.4


def test_truncated_ogg_is_a_media_error(media, tmp_path):
    # FFmpeg's ogg demuxer reads the last page when it opens a file: a cut file does not open
    with pytest.raises(MediaError, match="cannot be opened"):
        load_audio(str(truncated_copy(media.tone["opus"], tmp_path / "cut.opus", 0.5)), MediaLimits())


def test_wrong_extension_is_decoded_by_content(media, tmp_path):
    renamed = tmp_path / "really_flac.mp3"
    renamed.write_bytes(media.tone["flac"].read_bytes())
    assert np.allclose(load_audio(str(renamed), MediaLimits()), load_audio(str(media.tone["flac"]), MediaLimits()))
    assert load_audio(io.BytesIO(b"").getvalue() or media.tone["wav"].read_bytes(), MediaLimits()).size == 24000
