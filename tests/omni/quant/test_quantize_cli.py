"""`--quantize` on the command line: make-checkpoint's published layouts, run's load-time modes and --stats."""

from __future__ import annotations

import json

from safetensors import safe_open

from omni import cli


def test_make_checkpoint_writes_the_awq_layout_and_run_loads_it(tmp_path, capsys):
    target = tmp_path / "awq"
    assert cli.main(["make-checkpoint", str(target), "--preset", "tiny", "--quantize", "awq"]) == 0
    assert "AWQ layout" in capsys.readouterr().out
    section = json.loads((target / "config.json").read_text())["quantization_config"]
    assert section == {"bits": 4, "group_size": 64, "quant_method": "awq", "version": "gemm", "zero_point": True,
                       "modules_to_not_convert": None}
    with safe_open(str(target / "model.safetensors"), framework="pt") as handle:
        names = set(handle.keys())
    assert "thinker.model.layers.0.mlp.up_proj.qweight" in names
    assert "thinker.model.layers.0.mlp.up_proj.weight" not in names

    code = cli.main(["run", str(target), "--prompt", "Hello", "--max-new-tokens", "3", "--dtype", "fp32", "--stats"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "[stats: weights" in captured.err and "(AWQ 4 bit, group 64)" in captured.err
    assert "peak host" in captured.err


def test_run_quantizes_while_loading_and_reports_it(tiny_checkpoint, capsys):
    code = cli.main(["run", str(tiny_checkpoint), "--prompt", "Hello", "--max-new-tokens", "3", "--dtype", "fp32",
                     "--quantize", "int8", "--stats"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "(int8 per output channel)" in captured.err


def test_bad_quantize_options_are_one_clear_line(tiny_checkpoint, tmp_path, capsys):
    code = cli.main(["run", str(tiny_checkpoint), "--prompt", "Hello", "--quantize", "int4"])
    assert code == 2
    error = capsys.readouterr().err
    assert "int4 group size 128 does not divide the input width 64" in error and "int4:32" in error

    code = cli.main(["make-checkpoint", str(tmp_path / "x"), "--group-size", "32"])
    assert code == 2
    assert "--group-size and --desc-act go with --quantize gptq|awq" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before anything was built


def test_from_pretrained_quantizes(tiny_checkpoint):
    from omni.quant.linear import QuantLinear
    from omni.session import OmniSession

    session = OmniSession.from_pretrained(tiny_checkpoint, dtype="fp32", audio_output=False, quantize="int8",
                                          engine=False)
    assert session.model.quantization and "int8" in session.model.quantization
    assert any(isinstance(m, QuantLinear) for m in session.model.model.thinker.modules())
    assert isinstance(session.reply("Hi.", max_new_tokens=2).text, str)
