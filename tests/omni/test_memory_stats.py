"""Peak memory per stage (ReplyDone.timings) and the process's peaks (`omni run --stats`)."""

from __future__ import annotations

import threading

import pytest
import torch
from omni.talker.generate import TalkerOptions

from omni.events import ReplyDone
from omni.memory_stats import (
    STAGES,
    MemoryProbe,
    StagePeaks,
    _HostCounter,
    probe_for,
    process_peaks,
)
from omni.sampling import SamplingParams
from omni.session import OmniSession
from omni.speech import SpeechOptions
from omni.tools.media_factory import build_media

MIB = 2**20
GREEDY = SamplingParams(do_sample=False)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return build_media(tmp_path_factory.mktemp("memory-media"))


@pytest.fixture(scope="module")
def speaking_model(tiny_checkpoint):
    from omni.loading import load_model

    return load_model(tiny_checkpoint, dtype="fp32", audio_output=True)


def _allocate_and_touch(megabytes: int) -> torch.Tensor:
    return torch.ones(megabytes * MIB // 4)  # written, so resident


def test_a_stage_window_sees_its_own_peak_not_an_earlier_one():
    counter = _HostCounter()
    if not counter.exact:
        pytest.skip("no writable /proc/self/clear_refs here: the host figure is the approximate one")
    probe = MemoryProbe(counter)
    big, small = StagePeaks(), StagePeaks()
    with probe.measure_stage("codec", big):
        start = counter.current()
        block = _allocate_and_touch(256)
        del block
    with probe.measure_stage("codec", small):
        pass
    assert big.bytes["codec"] >= start + 250 * MIB  # the freed block still counts: a peak, not an end value
    assert small.bytes["codec"] < big.bytes["codec"] - 200 * MIB  # the counter was reset for the new stage
    assert probe.process_peak_bytes() >= big.bytes["codec"]  # the process peak outlives the reset
    assert big.shared == set() and "VmHWM" in probe.measure


def test_overlapping_stages_are_flagged_and_get_an_upper_bound():
    counter = _HostCounter()
    probe = MemoryProbe(counter)
    peaks = StagePeaks()
    entered, leave = threading.Event(), threading.Event()

    def codec_worker():
        with probe.measure_stage("codec", peaks):
            entered.set()
            leave.wait(10)

    worker = threading.Thread(target=codec_worker)
    worker.start()
    entered.wait(10)
    with probe.measure_stage("thinker_decode", peaks):
        block = _allocate_and_touch(64)
        del block
    leave.set()
    worker.join()
    with probe.measure_stage("talker", peaks):
        pass
    assert peaks.shared == {"codec", "thinker_decode"}  # the talker ran alone
    assert peaks.bytes["codec"] >= peaks.bytes["thinker_decode"] - MIB  # the codec's window covers the block


def test_stamping_puts_the_peaks_in_the_reply_timings():
    from omni.events import Timings, Usage

    peaks = StagePeaks()
    peaks.note("talker", 5 * MIB, shared=True, measure="m")
    peaks.note("talker", 3 * MIB, shared=False, measure="m")
    done = peaks.stamp(ReplyDone("hi", "stop", Usage(3, 1), Timings(total_s=1.0)))
    assert done.timings.stage_peak_bytes == {"talker": 5 * MIB} and done.timings.stage_peak_shared == ("talker",)
    assert done.timings.memory_measure == "m" and done.timings.total_s == 1.0 and done.text == "hi"


def test_a_spoken_reply_with_media_reports_every_stage(speaking_model, media):
    session = OmniSession(speaking_model, sampling=GREEDY)
    message = [{"role": "user", "content": [{"type": "image", "image": str(media.image_png)},
                                            {"type": "audio", "audio": str(media.speech)},
                                            {"type": "text", "text": "Describe both."}]}]
    speech = SpeechOptions(talker=TalkerOptions(sampling=GREEDY, max_codes=40), seed=1)
    done = session.reply(message, return_audio=True, max_new_tokens=8, speech=speech).done
    timings = done.timings
    assert set(timings.stage_peak_bytes) == set(STAGES)
    assert all(size > 50 * MIB for size in timings.stage_peak_bytes.values())  # the process's resident set
    assert timings.memory_measure == probe_for("cpu").measure
    assert set(timings.stage_peak_shared) <= set(STAGES)


def test_a_text_reply_without_media_reports_the_thinker_stages(speaking_model):
    done = OmniSession(speaking_model, sampling=GREEDY).reply("Hello", return_audio=False, max_new_tokens=4).done
    assert set(done.timings.stage_peak_bytes) == {"thinker_prefill", "thinker_decode"}
    assert min(done.timings.stage_peak_bytes.values()) > 0


def test_a_reply_without_the_engine_reports_its_encoders(speaking_model, media):
    session = OmniSession(speaking_model, sampling=GREEDY, engine=False)
    message = [{"role": "user", "content": [{"type": "image", "image": str(media.image_png)},
                                            {"type": "text", "text": "What is it?"}]}]
    done = session.reply(message, return_audio=False, max_new_tokens=3).done
    assert set(done.timings.stage_peak_bytes) == {"encoders"} and done.timings.stage_peak_bytes["encoders"] > 0


def test_process_peaks_on_a_cpu_have_no_device_figure():
    peaks = process_peaks("cpu")
    assert peaks.device_bytes is None and peaks.host_bytes > 50 * MIB


def test_run_stats_prints_host_peak_stage_peaks_and_the_offload_note(tiny_checkpoint, tmp_path, capsys):
    from omni import cli

    code = cli.main(["run", str(tiny_checkpoint), "--prompt", "Hello", "--max-new-tokens", "4", "--dtype", "fp32",
                     "--out", str(tmp_path / "reply.wav"), "--offload", "talker", "--stats"])
    err = capsys.readouterr().err
    assert code == 0
    assert "[stats: weights" in err and "peak host" in err and "MiB resident" in err
    stage_line = next(line for line in err.splitlines() if line.startswith("[stats: peak per stage"))
    for stage in ("thinker_prefill", "thinker_decode", "talker", "codec"):
        assert f" {stage} " in stage_line
    assert "VmHWM" in stage_line
    assert "[stats: offload talker: --offload has no effect on a CPU device" in err
