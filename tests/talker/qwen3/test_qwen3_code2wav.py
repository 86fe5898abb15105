"""Code2Wav against transformers' Qwen3OmniMoeCode2Wav (fp32, small widths, same weights), and exact
streaming against the whole pass.

A reference Code2Wav with its own random init is near-silent (peak ~4e-7): its convolutions are
initialised with std 0.02 whatever their fan-in, the layer scales are 0.01, the ConvNeXt gains 1e-6.
`loud_random_init` rescales the weights so that the waveform peaks around 0.5 and every stage
(transformer, ConvNeXt, SnakeBeta, residual units) changes the result:
- every Linear weight (transformer projections and MLP, ConvNeXt pointwise convs):
  normal(0, 1 / sqrt(in_features));
- every Conv1d weight: normal(0, gain / sqrt(in_channels / groups * kernel)), gain 0.3 for the residual
  units' conv1 / conv2, 0.05 for the last conv (`decoder.6.conv`), 1 otherwise;
- every ConvTranspose1d weight: normal(0, 1 / sqrt(in_channels * kernel / stride));
- every bias: normal(0, 0.1); RMSNorm / LayerNorm weights: normal(1, 0.1);
- SnakeBeta alpha and beta (log-scale): normal(0, 0.2);
- layer scales (`*_layer_scale.scale`) and ConvNeXt `gamma`: 0.5;
all drawn in `named_parameters()` / `named_modules()` order from one torch.Generator.
"""

from __future__ import annotations

import math

import pytest
import torch

from omni.errors import InputError
from omni.qwen3.config import Code2WavConfig
from omni.talker.qwen3.code2wav import Code2Wav
from omni.talker.qwen3.code2wav_streaming import start

PARITY_TOLERANCE = 1e-4
STREAM_TOLERANCE = 1e-5
CODEBOOK = 32


def make_configs(sliding_window: int):
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeCode2WavConfig

    sizes = dict(codebook_size=CODEBOOK, num_quantizers=16, hidden_size=64, num_attention_heads=4,
                 intermediate_size=96, sliding_window=sliding_window, rms_norm_eps=1e-5,
                 layer_scale_initial_scale=0.01, upsample_rates=(8, 5, 4, 3), upsampling_ratios=(2, 2),
                 decoder_dim=96, max_position_embeddings=8000)
    reference = Qwen3OmniMoeCode2WavConfig(**sizes, num_hidden_layers=2, num_key_value_heads=2,
                                           rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                           attn_implementation="eager")
    ours = Code2WavConfig(**sizes, num_layers=2, num_kv_heads=2, head_dim=16, rope_theta=10000.0)
    return reference, ours


def loud_random_init(model: torch.nn.Module, seed: int) -> None:
    """The recipe in the module docstring (applied to the reference; then copied into omni)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("alpha", "beta")):
                parameter.normal_(0.0, 0.2, generator=generator)
            elif name.endswith(("layer_scale.scale", "gamma")):
                parameter.fill_(0.5)
            elif "norm" in name and name.endswith("weight"):
                parameter.normal_(1.0, 0.1, generator=generator)
            elif name.endswith("bias"):
                parameter.normal_(0.0, 0.1, generator=generator)
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Conv1d):
                fan_in = module.in_channels // module.groups * module.kernel_size[0]
                gain = 0.3 if name.endswith(("conv1.conv", "conv2.conv")) else 1.0
                if name == f"decoder.{len(model.decoder) - 1}.conv":
                    gain = 0.05
                module.weight.normal_(0.0, gain / math.sqrt(fan_in), generator=generator)
            elif isinstance(module, torch.nn.ConvTranspose1d):
                fan_in = module.in_channels * module.kernel_size[0] / module.stride[0]
                module.weight.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
            elif isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 1.0 / math.sqrt(module.in_features), generator=generator)


def build_pair(sliding_window: int):
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeCode2Wav

    reference_config, config = make_configs(sliding_window)
    torch.manual_seed(0)
    reference = Qwen3OmniMoeCode2Wav(reference_config).eval()
    loud_random_init(reference, seed=1)
    ours = Code2Wav(config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


@pytest.fixture(scope="module")
def pair():
    # a window of 8 frames: 37 and 100 frames run far past it, so the key/value window is trimmed
    return build_pair(sliding_window=8)


@pytest.fixture(scope="module")
def pair_published_window():
    return build_pair(sliding_window=72)


def random_codes(batch: int, frames: int, seed: int) -> torch.Tensor:
    return torch.randint(0, CODEBOOK, (batch, 16, frames), generator=torch.Generator().manual_seed(seed))


def whole(model: Code2Wav, codes: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(codes)


def stream(model: Code2Wav, codes: torch.Tensor, chunk_frames: list[int]) -> tuple[torch.Tensor, list[int]]:
    """codes (16, frames) in chunks of the given sizes, cycled; the concatenated audio and the step sizes."""
    state = start(model)
    pieces, sizes, frame, index = [], [], 0, 0
    while frame < codes.shape[-1]:
        n = chunk_frames[index % len(chunk_frames)]
        pieces.append(state.step(codes[:, frame : frame + n]))
        sizes.append(pieces[-1].shape[0])
        frame, index = frame + n, index + 1
    pieces.append(state.finish())
    return torch.cat(pieces), sizes


def test_parameter_names_and_shapes_match_reference(pair):
    reference, ours = pair
    expected = {name: tuple(t.shape) for name, t in reference.state_dict().items()}
    assert {name: tuple(t.shape) for name, t in ours.state_dict().items()} == expected
    # the published checkpoint's naming (`code2wav.` + these)
    for name in ("code_embedding.weight", "pre_transformer.layers.1.self_attn_layer_scale.scale",
                 "upsample.1.0.conv.weight", "upsample.0.1.dwconv.conv.weight", "decoder.1.block.0.alpha",
                 "decoder.4.block.4.conv2.conv.bias", "decoder.5.beta", "decoder.6.conv.weight"):
        assert name in expected


@pytest.mark.parity
@pytest.mark.parametrize("frames", [1, 2, 37, 100])
def test_whole_pass_matches_reference(pair, frames):
    reference, ours = pair
    codes = random_codes(2, frames, seed=frames)
    expected = whole(reference, codes)[:, 0]
    got = whole(ours, codes)
    assert got.shape == expected.shape == (2, frames * 1920 - 555)
    assert (got - expected).abs().max() <= PARITY_TOLERANCE
    if frames >= 37:  # the test means something: audible, not clipped everywhere
        assert 0.1 < expected.abs().max() <= 1.0
        assert (expected.abs() >= 1.0).float().mean() < 0.01


@pytest.mark.parity
@pytest.mark.slow
def test_whole_pass_matches_reference_published_window_and_long_input(pair_published_window):
    """The published 72-frame window, and more frames than one query block of the whole-pass attention."""
    reference, ours = pair_published_window
    codes = random_codes(1, 300, seed=3)
    difference = (whole(ours, codes) - whole(reference, codes)[:, 0]).abs().max()
    assert difference <= PARITY_TOLERANCE


def test_decode_is_causal(pair):
    """Decoding the first k frames gives the first k * 1920 - 555 samples of the whole decode."""
    _, ours = pair
    codes = random_codes(1, 40, seed=4)
    full = whole(ours, codes)[0]
    for frames in (1, 2, 9, 39):
        prefix = whole(ours, codes[..., :frames])[0]
        assert prefix.shape[0] == ours.samples_for_frames(frames) == frames * 1920 - 555
        assert (prefix - full[: prefix.shape[0]]).abs().max() <= STREAM_TOLERANCE
    assert ours.held_back_samples == 555


@pytest.mark.parametrize("frames", [1, 2, 37, pytest.param(100, marks=pytest.mark.slow)])
@pytest.mark.parametrize("chunks", [[1], [1, 3, 7, 25]], ids=["one-frame", "uneven"])
def test_streaming_equals_whole_pass(pair, frames, chunks):
    _, ours = pair
    codes = random_codes(1, frames, seed=10 + frames)
    expected = whole(ours, codes)[0]
    streamed, sizes = stream(ours, codes[0], chunks)
    assert streamed.shape == expected.shape
    assert (streamed - expected).abs().max() <= STREAM_TOLERANCE
    # every step returns all samples that became final, and nothing else
    assert sum(sizes) == ours.samples_for_frames(frames)
    assert sizes[0] == ours.samples_for_frames(min(chunks[0], frames))


@pytest.mark.parity
@pytest.mark.slow
def test_streaming_equals_reference_whole_pass(pair_published_window):
    reference, ours = pair_published_window
    codes = random_codes(1, 100, seed=5)
    streamed, _ = stream(ours, codes[0], [1, 3, 7, 25])
    assert (streamed - whole(reference, codes)[0, 0]).abs().max() <= PARITY_TOLERANCE


def test_first_frame_latency(pair):
    """After one frame the stream has 1920 - 555 = 1365 final samples (56.9 ms at 24 kHz)."""
    _, ours = pair
    codes = random_codes(1, 5, seed=6)
    state = start(ours)
    first = state.step(codes[0, :, :1])
    assert first.shape[0] == state.first_frame_samples == 1365
    assert (first - whole(ours, codes)[0, :1365]).abs().max() <= STREAM_TOLERANCE
    assert all(state.step(codes[0, :, i : i + 1]).shape[0] == 1920 for i in range(1, 5))


def test_finish_reset_and_errors(pair):
    _, ours = pair
    codes = random_codes(1, 6, seed=7)[0]
    state = start(ours)
    first = torch.cat([state.step(codes[:, :4]), state.step(codes[:, 4:])])
    assert state.finish().numel() == 0
    with pytest.raises(InputError):
        state.step(codes[:, :1])
    state.reset()
    again = torch.cat([state.step(codes[:, :2]), state.step(codes[:, 2:])])
    assert (again - first).abs().max() <= STREAM_TOLERANCE
    assert state.step(codes[:, :0]).numel() == 0
    with pytest.raises(InputError):
        state.step(torch.full((16, 1), CODEBOOK))
    with pytest.raises(InputError):
        state.step(codes[:15])
    with pytest.raises(InputError):
        ours(codes[None, :15])


@pytest.mark.parity
@pytest.mark.slow
def test_reference_chunked_decode_is_not_exact_streaming_is(pair):
    """transformers' chunked_decode re-decodes each chunk with 25 frames of left context: it drops 555
    samples at every chunk border and, past the first chunk, misses context the transformer (8-frame
    window here, 2 layers: 14 frames back) and the decoder's convolutions read. Exact streaming does not."""
    reference, ours = pair
    frames, chunk, left = 60, 20, 4
    codes = random_codes(1, frames, seed=8)
    expected = whole(reference, codes)[0, 0]
    with torch.no_grad():
        chunked = reference.chunked_decode(codes, chunk_size=chunk, left_context_size=left)[0, 0]
    borders = frames // chunk - 1
    assert chunked.shape[0] == expected.shape[0] - 555 * borders
    # chunk c's samples start at global sample c * chunk * 1920 in the whole decode
    chunk_samples = chunk * 1920 - 555
    chunk_errors = []
    for index in range(frames // chunk):
        got = chunked[index * chunk_samples : (index + 1) * chunk_samples]
        start_sample = index * chunk * 1920
        chunk_errors.append(float((got - expected[start_sample : start_sample + chunk_samples]).abs().max()))
    assert chunk_errors[0] <= PARITY_TOLERANCE  # the first chunk has no border
    assert min(chunk_errors[1:]) > 1e-2, chunk_errors
    streamed, _ = stream(ours, codes[0], [chunk])
    assert (streamed - expected).abs().max() <= PARITY_TOLERANCE


@pytest.mark.parity
def test_weights_loaded_after_a_decode_are_used(pair):
    """The transposed convolutions cache their polyphase taps; loading new weights in place must
    rebuild them."""
    reference, ours = pair
    fresh = Code2Wav(ours.config).eval()
    codes = random_codes(1, 3, seed=9)
    whole(fresh, codes)  # builds the caches from the fresh init
    fresh.load_state_dict(reference.state_dict())
    assert (whole(fresh, codes) - whole(reference, codes)[:, 0]).abs().max() <= PARITY_TOLERANCE
