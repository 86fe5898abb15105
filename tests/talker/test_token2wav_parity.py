"""Token2Wav against the reference: the DiT's mel and BigVGAN's waveform from the same codes, voice
and initial noise (fp32)."""

import pytest
import torch

pytestmark = pytest.mark.parity

TOLERANCE = 1e-4


def _codes(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 8192, (1, count), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("voice", ["Chelsie", "Ethan"])
def test_dit_mel_matches_reference(speech_pair, voice):
    ours, reference = speech_pair
    speaker = ours.speakers[voice]
    codes = _codes(61)  # 122 mel frames: five blocks of 24, the last one partial
    torch.manual_seed(7)
    with torch.no_grad():
        expected = reference.token2wav.code2wav_dit_model.sample(speaker["cond"].float(), speaker["ref_mel"].float(), codes)
    torch.manual_seed(7)
    noise = torch.randn(1, 122, 80)[0]
    t2w = ours.model.token2wav
    mel = t2w.mel(codes, t2w.voice(voice, speaker), noise)
    assert mel.shape == (1, 122, 80)
    assert expected.abs().max() > 0.5  # a real signal, not a vanishing one
    assert (mel.transpose(1, 2) - expected).abs().max().item() <= TOLERANCE


def test_bigvgan_waveform_matches_reference(speech_pair):
    ours, reference = speech_pair
    mel = torch.randn(1, 80, 50, generator=torch.Generator().manual_seed(3)) - 4.0  # natural-log mel range
    with torch.no_grad():
        expected = reference.token2wav.code2wav_bigvgan_model(mel)
    samples = ours.model.token2wav.vocode(mel.transpose(1, 2))
    assert samples.shape == (50 * 240,)
    assert expected.abs().max() > 0.05
    assert (samples - expected).abs().max().item() <= TOLERANCE


def test_whole_token2wav_matches_reference(speech_pair):
    ours, reference = speech_pair
    speaker = ours.speakers["Chelsie"]
    codes = _codes(40, seed=1)
    torch.manual_seed(11)
    with torch.no_grad():
        expected = reference.token2wav(codes, conditioning=speaker["cond"].float(), reference_mel=speaker["ref_mel"].float())
    torch.manual_seed(11)
    noise = torch.randn(1, 80, 80)[0]
    t2w = ours.model.token2wav
    samples = t2w.synthesize(codes, t2w.voice("Chelsie", speaker), t2w.noise(noise=noise))
    assert samples.dtype == torch.float32 and samples.shape == (40 * 480,)
    assert (samples - expected).abs().max().item() <= TOLERANCE


# --- Other devices (tests/devices.py): omni runs the codec in fp32 everywhere; on CUDA with TF32 off
# it keeps the CPU tolerance. ---

from tests.devices import CODEC_CASES, strict_fp32  # noqa: E402


@pytest.fixture(scope="module")
def codec_on_device(request, tiny_checkpoint):
    from transformers import Qwen2_5OmniForConditionalGeneration

    from omni.loading import load_model

    device = request.param
    ours = load_model(tiny_checkpoint, dtype="fp32", device=device, audio_output=True)
    reference = Qwen2_5OmniForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    reference.token2wav.to(device)
    return device, ours, reference


@pytest.mark.parametrize("codec_on_device", CODEC_CASES, indirect=True)
def test_whole_token2wav_matches_reference_on_device(codec_on_device):
    device, ours, reference = codec_on_device
    speaker = ours.speakers["Chelsie"]
    codes = _codes(40, seed=1).to(device)
    with strict_fp32():
        torch.manual_seed(11)  # the reference draws its initial noise on `device` from this seed
        with torch.no_grad():
            expected = reference.token2wav(codes, conditioning=speaker["cond"].float().to(device),
                                           reference_mel=speaker["ref_mel"].float().to(device)).float().cpu()
        torch.manual_seed(11)
        noise = torch.randn(1, 80, 80, device=device)[0]
        t2w = ours.model.token2wav
        samples = t2w.synthesize(codes, t2w.voice("Chelsie", speaker), t2w.noise(noise=noise)).float().cpu()
    assert samples.shape == (40 * 480,)
    assert expected.abs().max() > 0.05
    assert (samples - expected).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("codec_on_device", CODEC_CASES, indirect=True)
def test_bigvgan_waveform_matches_reference_on_device(codec_on_device):
    device, ours, reference = codec_on_device
    mel = (torch.randn(1, 80, 50, generator=torch.Generator().manual_seed(3)) - 4.0).to(device)
    with torch.no_grad(), strict_fp32():
        expected = reference.token2wav.code2wav_bigvgan_model(mel).float().cpu()
        samples = ours.model.token2wav.vocode(mel.transpose(1, 2)).float().cpu()
    assert (samples - expected).abs().max().item() <= TOLERANCE
