"""Quantized Thinkers against the full-precision one, teacher-forced over 64 tokens of a fixed text
(conftest.teacher_forced_logits says why teacher-forced)."""

from __future__ import annotations

import pytest
import torch

from omni.loading import load_model
from omni.quant.codes import dequantize_int4, dequantize_int8, quantize_int4, quantize_int8
from omni.quant.linear import QuantLinear, kernel_dtype
from omni.quant.loader import decoder_linear_names

FORCED_TOKENS = 64  # conftest.teacher_forced_logits


def cosine_per_position(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def relative_error(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """Root mean square over positions of |logits - reference| / |reference|."""
    per_position = (logits - reference).norm(dim=-1) / reference.norm(dim=-1)
    return float(per_position.pow(2).mean().sqrt())


def weight_error(loaded_fp, quantize_dequantize) -> float:
    """Relative error |W - dequantize(quantize(W))| / |W| over all decoder linears together."""
    error = total = 0.0
    for path in decoder_linear_names(loaded_fp.config.thinker.text.num_layers):
        weight = loaded_fp.model.get_submodule(path).weight
        error += float((quantize_dequantize(weight) - weight).pow(2).sum())
        total += float(weight.pow(2).sum())
    return (error / total) ** 0.5


@pytest.fixture(scope="module")
def small_runs(small_checkpoint, forced_logits):
    """Teacher-forced logits of the fp32 model and of its int8 and int4 (group 128) loads."""
    reference = load_model(small_checkpoint, dtype="fp32", audio_output=False)
    runs = {"fp32": forced_logits(reference)}
    for mode in ("int8", "int4"):
        loaded = load_model(small_checkpoint, dtype="fp32", audio_output=False, quantize=mode)
        layers = [loaded.model.get_submodule(p) for p in decoder_linear_names(loaded.config.thinker.text.num_layers)]
        assert layers and all(isinstance(layer, QuantLinear) and layer.bits == int(mode[3:]) for layer in layers)
        assert isinstance(loaded.model.thinker.lm_head, torch.nn.Linear)  # the lm_head keeps its dtype
        runs[mode] = forced_logits(loaded)
    weight_errors = {  # the codes as the loader makes them (scales in the CPU kernels' bf16)
        "int8": weight_error(reference, lambda w: dequantize_int8(quantize_int8(w, torch.bfloat16))),
        "int4": weight_error(reference, lambda w: dequantize_int4(quantize_int4(w, 128, torch.bfloat16))),
    }
    return runs, weight_errors


def test_int8_logits_follow_the_full_precision_model(small_runs):
    runs, _ = small_runs
    cosine = cosine_per_position(runs["int8"], runs["fp32"])
    assert cosine.shape == (FORCED_TOKENS,)
    assert cosine.min() >= 0.999, f"int8: min cosine {cosine.min():.5f}, mean {cosine.mean():.5f}"
    assert cosine.min() < 1.0 - 1e-9, "int8 computed exactly the full-precision logits: nothing was quantized"


def test_int8_in_a_bf16_model_follows_the_fp32_model(small_checkpoint, small_runs, forced_logits):
    """bf16 is how a quantized model is served: its int8 logits against the fp32 model's."""
    runs, _ = small_runs
    loaded = load_model(small_checkpoint, dtype="bf16", audio_output=False, quantize="int8")
    assert loaded.model.get_submodule(decoder_linear_names(1)[0]).scales.dtype == torch.bfloat16
    cosine = cosine_per_position(forced_logits(loaded), runs["fp32"])
    assert cosine.min() >= 0.999, f"bf16 int8: min cosine {cosine.min():.5f}"


# A 16-level uniform quantizer cannot do better on Gaussian data than 0.1074 standard deviations of
# error (Max, "Quantizing for minimum distortion", 1960: mean squared error 0.01154 at the optimal
# step); per-group min-max over 128 random-normal weights comes close to that.
UNIFORM_4BIT_GAUSSIAN_ERROR = 0.1074


def test_int4_weights_are_as_close_as_a_4_bit_uniform_quantizer_can_be(small_runs):
    _, weight_errors = small_runs
    assert weight_errors["int4"] <= UNIFORM_4BIT_GAUSSIAN_ERROR, weight_errors


def test_int4_logit_error_is_what_its_weight_rounding_predicts(small_runs):
    """The random `small` model carries a weight error into its logits almost linearly (int8 measures
    the gain: logit error / weight error); int4 may add no error of its own beyond that."""
    runs, weight_errors = small_runs
    gain = relative_error(runs["int8"], runs["fp32"]) / weight_errors["int8"]
    predicted = gain * weight_errors["int4"]
    measured = relative_error(runs["int4"], runs["fp32"])
    assert measured <= 1.25 * predicted, f"int4 logit error {measured:.4f}, weight rounding predicts {predicted:.4f}"
    cosine = cosine_per_position(runs["int4"], runs["fp32"])
    assert cosine.min() < 1.0 - 1e-6, "int4 computed the full-precision logits: nothing was quantized"


@pytest.mark.xfail(strict=True, reason=(
    "issue 14 asks for int4 cosine >= 0.98 at `small`; measured min 0.946 (group 128), 0.959 (group 32). This random "
    "model carries a weight error into its logits ~2.9x (int8: weight error 0.0072 -> logit error 0.0211), so 0.98 "
    "(logit error <= 0.2) needs a weight error <= ~6.8%; 4-bit round-to-nearest of its Gaussian weights gives 10.0% "
    "in groups of 128 and 7.8% in groups of 32, the smallest group the int4 kernels take"))
def test_int4_logits_cosine_reaches_the_issues_floor(small_runs):
    runs, _ = small_runs
    assert cosine_per_position(runs["int4"], runs["fp32"]).min() >= 0.98


def _replace_with_dequantized(loaded, quantize_dequantize) -> None:
    """The full-precision model with each decoder linear's weight replaced by its dequantized codes."""
    with torch.no_grad():
        for path in decoder_linear_names(loaded.config.thinker.text.num_layers):
            linear = loaded.model.get_submodule(path)
            assert isinstance(linear, torch.nn.Linear)
            linear.weight.copy_(quantize_dequantize(linear.weight))


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_the_dequantized_weights_model_matches_the_quantized_one(small_checkpoint, forced_logits, mode):
    """The kernels and the loader's wiring against plain float layers holding the same codes."""
    quantized = forced_logits(load_model(small_checkpoint, dtype="fp32", audio_output=False, quantize=mode))
    plain = load_model(small_checkpoint, dtype="fp32", audio_output=False)
    scales = kernel_dtype("cpu", int(mode[3:]), torch.float32)  # the loader makes its codes with these
    if mode == "int8":
        _replace_with_dequantized(plain, lambda w: dequantize_int8(quantize_int8(w, scales)))
    else:
        _replace_with_dequantized(plain, lambda w: dequantize_int4(quantize_int4(w, 128, scales)))
    cosine = cosine_per_position(quantized, forced_logits(plain))
    assert cosine.min() >= 0.9999, f"{mode}: min cosine {cosine.min():.7f}"
