"""bench/gpu.sh's real-size job, run as the GPU machine runs it (a bare layout on PYTHONPATH), at
`tiny` on the CPU: it must build, measure and find greedy tokens and codes identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parity
def test_gpu_job_at_tiny_on_cpu():
    if not (REPO / ".omni-cache" / "device" / "qwen.tiktoken").is_file():
        pytest.skip("run `bash bench/gpu.sh --prepare` first (it lays out the files the GPU machine gets)")
    env = dict(os.environ, OMNI_GPU_PRESET="tiny", PYTHON=sys.executable)
    result = subprocess.run(["bash", "bench/gpu.sh", "--device", "cpu", "--tokens", "16", "--codes", "60",
                             "--text-tokens", "8"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["preset"] == "tiny" and figures["device"] == "cpu"
    assert figures["prompt_tokens"] >= 1000 and figures["greedy_tokens_compared"] >= 16
    assert figures["greedy_tokens_identical"] and figures["codes_identical"] and figures["reply_text_identical"]
    assert figures["codes_compared"] == 60 and figures["spoken_audio_s"] == 1.2
    for key in ("omni_prefill_ms", "reference_prefill_ms", "omni_decode_tokens_per_s", "reference_decode_tokens_per_s",
                "omni_time_to_first_audio_s", "omni_spoken_total_s", "reference_spoken_total_s", "omni_codec_rtf",
                "reference_codec_rtf", "peak_memory_gib", "build_s"):
        assert figures[key] > 0, key
