"""The Talker against the reference, inside the whole reply: with greedy Thinker and greedy Talker,
the same reply text, talker logits within 1e-4 at every step, identical codec tokens, and (from the
same initial noise) the reference's waveform: within 1e-4 for the non-streaming codec, and within
the streaming bound of test_streaming for the streaming one.

The reference runs with one masked padding token before the prompt: see reference.py and the last
test here for why an unpadded call does not run the reference talker's own prefill."""

import pytest
import torch

from omni import OmniSession
from omni.chat import AUDIO_SYSTEM_PROMPT
from omni.events import AudioChunk, ReplyDone
from omni.prompt import build_prompt
from omni.sampling import SamplingParams
from omni.speech import SpeechOptions
from omni.talker.generate import TalkerOptions
from omni.tools.reference import reference_speech
from tests.talker.test_streaming import STREAMING_SNR_DB

pytestmark = pytest.mark.parity

TEXT_TOKENS = 16
CODES = 96
MESSAGES = [{"role": "user", "content": "Tell me a short story about a cat."}]


# both voices on tiny; one on small, whose reference run is the slow part of this file
CASES = [("tiny", "Chelsie"), ("tiny", "Ethan"), ("small", "Chelsie")]
_PAIRS: dict = {}


def _pair(preset):
    if preset not in _PAIRS:
        from transformers import Qwen2_5OmniForConditionalGeneration

        from omni.loading import load_model
        from tests.conftest import build_checkpoint

        path = build_checkpoint(preset)
        _PAIRS.clear()  # one pair in memory at a time
        _PAIRS[preset] = (load_model(path, dtype="fp32", audio_output=True),
                          Qwen2_5OmniForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval())
    return _PAIRS[preset]


@pytest.fixture(scope="module", params=CASES, ids=[f"{p}-{v}" for p, v in CASES])
def reference_run(request):
    preset, voice = request.param
    ours, reference = _pair(preset)
    prompt = build_prompt(ours, [MESSAGES], system_prompt=AUDIO_SYSTEM_PROMPT)
    return ours, voice, reference_speech(reference, prompt.input_ids, voice, TEXT_TOKENS, CODES)


def _omni_reply(ours, voice, expected, streaming):
    talker_logits = []
    hook = ours.model.talker.register_forward_hook(lambda module, args, out: talker_logits.append(out[0].clone()))
    try:
        session = OmniSession(ours, sampling=SamplingParams(do_sample=False))
        speech = SpeechOptions(
            voice=voice, streaming=streaming, initial_noise=expected.initial_noise,
            talker=TalkerOptions(sampling=SamplingParams(do_sample=False, repetition_penalty=1.05), max_codes=CODES,
                                 codes_per_text_token=None),
        )
        events = list(session.stream(MESSAGES, return_audio=True, max_new_tokens=TEXT_TOKENS, speech=speech))
    finally:
        hook.remove()
    done = events[-1]
    assert isinstance(done, ReplyDone)
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    return session, done, chunks, talker_logits


def test_text_logits_and_codes_match_reference(reference_run):
    ours, voice, expected = reference_run
    session, done, chunks, logits = _omni_reply(ours, voice, expected, streaming=True)
    assert done.text == ours.tokenizer.decode(expected.text_ids)
    assert done.usage.codec_tokens == len(expected.codes)
    assert len(logits) == len(expected.talker_logits)
    worst = max((a - b).abs().max().item() for a, b in zip(logits, expected.talker_logits))
    assert worst <= 1e-4
    assert list(done.codec_codes) == expected.codes
    assert sum(len(c.samples) for c in chunks) == len(expected.codes) * 480


def test_non_streaming_waveform_matches_reference(reference_run):
    ours, voice, expected = reference_run
    _, done, chunks, _ = _omni_reply(ours, voice, expected, streaming=False)
    waveform = torch.from_numpy(torch.cat([torch.from_numpy(c.samples) for c in chunks]).numpy())
    assert waveform.shape == expected.waveform.shape
    assert (waveform - expected.waveform).abs().max().item() <= 1e-4


def test_streaming_waveform_matches_reference_within_the_streaming_bound(reference_run):
    ours, voice, expected = reference_run
    _, done, chunks, _ = _omni_reply(ours, voice, expected, streaming=True)
    assert len(chunks) > 1  # it really streamed
    waveform = torch.cat([torch.from_numpy(c.samples) for c in chunks])
    assert waveform.shape == expected.waveform.shape
    error = waveform - expected.waveform
    snr_db = 10 * torch.log10(expected.waveform.pow(2).sum() / error.pow(2).sum()).item()
    assert snr_db >= STREAMING_SNR_DB


def test_reference_skips_codec_conditioning_without_a_mask():
    """transformers' generate drops an all-ones attention mask; the reference talker takes a missing
    mask to mean "not the prefill" and then never adds the codec pad/bos embeddings it builds its
    prefill around (nor the multimodal rope index). The same prompt then gives a different first
    talker step depending only on whether a masked padding token precedes it, which the model
    cannot mean; omni follows the masked (intended) path, checked above."""
    ours, reference = _pair("tiny")
    prompt = build_prompt(ours, [MESSAGES], system_prompt=AUDIO_SYSTEM_PROMPT)
    seen = []
    hook = reference.talker.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("attention_mask") is not None), with_kwargs=True)
    try:
        padded = reference_speech(reference, prompt.input_ids, "Chelsie", 4, 2, left_pad=1)
        unpadded = reference_speech(reference, prompt.input_ids, "Chelsie", 4, 2, left_pad=0)
    finally:
        hook.remove()
    assert padded.text_ids == unpadded.text_ids  # the Thinker is unaffected
    assert seen[0] is True and seen[len(padded.talker_logits)] is False
    assert (padded.talker_logits[0] - unpadded.talker_logits[0]).abs().max().item() > 1e-3


def test_image_and_audio_prompt_speech_matches_reference(tiny_checkpoint, tmp_path):
    """With media the Talker reads zeros at the encoders' positions and the multimodal (TMRoPE)
    positions of the prompt: same text, codes, logits and waveform as the reference."""
    from transformers import Qwen2_5OmniProcessor

    from omni.prompt import prepare_prompt
    from omni.tools.media_factory import drawing, tone, write_audio
    from omni.tools.reference import reference_inputs

    ours, reference = _pair("tiny")
    processor = Qwen2_5OmniProcessor.from_pretrained(tiny_checkpoint)
    drawing(320, 240, seed=4).save(tmp_path / "picture.png")
    audio = write_audio(tmp_path / "clip.wav", tone(2.0, 300.0, rate=16000), 16000, "wav")
    messages = [{"role": "user", "content": [
        {"type": "image", "image": str(tmp_path / "picture.png")}, {"type": "audio", "audio": str(audio)},
        {"type": "text", "text": "What do you see and hear?"}]}]
    conversation = [{"role": "system", "content": [{"type": "text", "text": AUDIO_SYSTEM_PROMPT}]}] + messages
    prepared = prepare_prompt(ours.tokenizer, ours.model.thinker.config, [messages], system_prompt=AUDIO_SYSTEM_PROMPT,
                              pad_token_id=ours.generation.pad_token_id)
    inputs = dict(reference_inputs(processor, [conversation], prepared.items))
    input_ids = inputs.pop("input_ids")
    inputs.pop("attention_mask")
    assert torch.equal(input_ids, prepared.input_ids)
    inputs["thinker_pixel_values"] = inputs.pop("pixel_values")  # generate would hand it to the talker too
    expected = reference_speech(reference, input_ids, "Chelsie", TEXT_TOKENS, 48, **inputs)

    talker_logits = []
    hook = ours.model.talker.register_forward_hook(lambda module, args, out: talker_logits.append(out[0].clone()))
    try:
        speech = SpeechOptions(voice="Chelsie", streaming=False, initial_noise=expected.initial_noise,
                               talker=TalkerOptions(sampling=SamplingParams(do_sample=False, repetition_penalty=1.05),
                                                    max_codes=48, codes_per_text_token=None))
        reply = OmniSession(ours, sampling=SamplingParams(do_sample=False)).reply(
            messages, return_audio=True, max_new_tokens=TEXT_TOKENS, speech=speech)
    finally:
        hook.remove()
    assert reply.text == ours.tokenizer.decode(expected.text_ids)
    assert list(reply.done.codec_codes) == expected.codes
    assert max((a - b).abs().max().item() for a, b in zip(talker_logits, expected.talker_logits)) <= 1e-4
    assert (torch.from_numpy(reply.audio) - expected.waveform).abs().max().item() <= 1e-4


# --- Other devices and dtypes (tests/devices.py): the CPU fp32 tests above keep their tolerances ---

from tests.devices import DTYPES, LLM_CASES, REDUCED_PRECISION_FACTOR, assert_no_worse_than_reference, strict_fp32  # noqa: E402

DEVICE_CODES = 32
# Three reply tokens: the Talker is under test here, and a random Thinker in bf16 parts from the
# reference at near-ties within a few tokens (the Thinker's own device tests judge those).
DEVICE_TEXT_TOKENS = 3


@pytest.mark.parametrize("device,dtype", LLM_CASES)
def test_talker_logits_and_codes_on_device_and_dtype(tiny_checkpoint, device, dtype):
    """The whole spoken reply on `device` in `dtype` (codec fp32) against the reference there: same
    text; in fp32 the same codes and talker logits within the CPU tolerance; in bf16/fp16 the first
    talker step no further from the fp32 reference than twice the reference's own error, and the codes
    equal until a step where the reference's own two candidates are closer than that error."""
    from transformers import Qwen2_5OmniForConditionalGeneration

    from omni.loading import load_model

    ours = load_model(tiny_checkpoint, dtype=dtype, device=device, audio_output=True)
    reference = Qwen2_5OmniForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=DTYPES[dtype]).eval()
    reference.to(device)
    reference.token2wav.float()
    prompt = build_prompt(ours, [MESSAGES], system_prompt=AUDIO_SYSTEM_PROMPT)
    with strict_fp32():
        expected = reference_speech(reference, prompt.input_ids.to(device), "Chelsie", DEVICE_TEXT_TOKENS, DEVICE_CODES)
        talker_logits = []
        hook = ours.model.talker.register_forward_hook(lambda module, args, out: talker_logits.append(out[0].float().cpu()))
        try:
            speech = SpeechOptions(voice="Chelsie", streaming=False, talker=TalkerOptions(
                sampling=SamplingParams(do_sample=False, repetition_penalty=1.05), max_codes=DEVICE_CODES,
                codes_per_text_token=None))
            reply = OmniSession(ours, sampling=SamplingParams(do_sample=False)).reply(
                MESSAGES, return_audio=True, max_new_tokens=DEVICE_TEXT_TOKENS, speech=speech)
        finally:
            hook.remove()
    assert reply.text == ours.tokenizer.decode(expected.text_ids)
    theirs = [logits.float().cpu() for logits in expected.talker_logits]
    codes, expected_codes = list(reply.done.codec_codes), expected.codes
    if dtype == "fp32":
        assert codes == expected_codes
        assert max((a - b).abs().max().item() for a, b in zip(talker_logits, theirs)) <= 1e-4
        return
    fp32_reference = Qwen2_5OmniForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    fp32 = reference_speech(fp32_reference, prompt.input_ids, "Chelsie", DEVICE_TEXT_TOKENS, 1)
    assert fp32.text_ids == expected.text_ids  # the same prefill input for the first talker step
    assert_no_worse_than_reference(talker_logits[0], theirs[0], fp32.talker_logits[0], f"{device} {dtype} talker step 0")
    noise = (theirs[0] - fp32.talker_logits[0]).abs().max().item()
    if codes[:len(expected_codes)] == expected_codes and len(codes) == len(expected_codes):
        return
    first = next((i for i, (a, b) in enumerate(zip(codes, expected_codes)) if a != b), min(len(codes), len(expected_codes)))
    if first < min(len(codes), len(expected_codes)):
        step = theirs[first + 1]  # logits[0] is the prefill, whose argmax is the first code
        margin = abs(step[codes[first]] - step[expected_codes[first]]).item()
        assert margin <= REDUCED_PRECISION_FACTOR * noise, (
            f"code {first} differs ({codes[first]} vs {expected_codes[first]}): reference margin {margin:.3g}, "
            f"more than the dtype's error {noise:.3g}")
