"""End to end: a Qwen3-Omni checkpoint through omni's loader, OmniSession (alone and on the engine),
against transformers' Qwen3OmniMoeForConditionalGeneration.generate on the same weights: the greedy
reply's text tokens, all 16 codes of every frame, and the waveform (against the reference Code2Wav's
single pass, not its inexact `chunked_decode`).

The checkpoint is the random `tiny` preset. Its weights are widened the way
tests/talker/qwen3/test_qwen3_talker.py does it (0.02-scale random weights give near-tied logits that a
last-bit difference could flip), in the reference, and copied into omni's loaded modules by
omni.qwen3.weights, so both run the very same numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omni.talker.generate import TalkerOptions

from omni.loading import load_model
from omni.qwen3.weights import load_weights
from omni.sampling import SamplingParams
from omni.session import OmniSession
from omni.speech import SpeechOptions
from tests.qwen3_reference import widen_random_weights

pytestmark = pytest.mark.parity

THINKER_TOKENS = 6
TALKER_TOKENS = 12  # the reference's talker_max_new_tokens: 11 frames (its last token gets no residual codes)


@pytest.fixture(scope="module")
def pair(qwen3_tiny_checkpoint):
    return _pair(qwen3_tiny_checkpoint)


def _pair(checkpoint):
    """(reference, omni's LoadedModel, processor) on the same, widened weights."""
    from transformers import AutoProcessor, Qwen3OmniMoeForConditionalGeneration

    reference = Qwen3OmniMoeForConditionalGeneration.from_pretrained(
        checkpoint, dtype=torch.float32, attn_implementation="eager").eval()
    for sub in (reference.config.thinker_config.text_config, reference.config.talker_config.text_config):
        sub._experts_implementation = "eager"
    for module in reference.modules():
        if hasattr(module, "config") and getattr(module.config, "_experts_implementation", None) not in (None, "eager"):
            module.config._experts_implementation = "eager"
    widen_random_weights(reference)
    loaded = load_model(checkpoint, dtype="fp32")
    assert loaded.family == "qwen3_omni_moe" and loaded.audio_output
    report = load_weights(loaded.model, reference.state_dict().items())
    assert report.ok
    processor = AutoProcessor.from_pretrained(checkpoint)
    return reference, loaded, processor


def _reference_generate(reference, **inputs):
    """The reference's greedy reply: (generated token ids, talker codes (frames, 16)). Its `chunked_decode`
    is replaced by a recorder: the codes are compared, and the waveform against its single pass."""
    recorded = {}

    def record_codes(codes, **kwargs):
        recorded["codes"] = codes
        return torch.zeros(1, 1, 1)

    reference.code2wav.chunked_decode = record_codes
    try:
        with torch.no_grad():
            sequences, _ = reference.generate(
                **inputs, speaker="Ethan", thinker_max_new_tokens=THINKER_TOKENS, thinker_do_sample=False,
                talker_max_new_tokens=TALKER_TOKENS, talker_do_sample=False, talker_repetition_penalty=1.0)
    finally:
        del reference.code2wav.chunked_decode
    return sequences[0, inputs["input_ids"].shape[1]:], recorded["codes"][0].T


def _reference_reply(reference, processor, messages, images=None, audio=None):
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, images=images, audio=audio, return_tensors="pt")
    text_ids, codes = _reference_generate(reference, **inputs)
    return inputs["input_ids"][0], text_ids, codes


def _streamed_text(loaded, token_ids) -> str:
    """The text omni streams for these reply tokens (its detokenizer drops bytes that never form UTF-8,
    where tokenizer.decode shows U+FFFD: a random model emits such tokens)."""
    detokenizer = loaded.tokenizer.detokenizer()
    return "".join(detokenizer.push(t) for t in token_ids) + detokenizer.flush()


def _assert_same_reply(session, reply, prompt_ids, text_ids, codes) -> None:
    """omni's prompt and reply tokens, text and every frame's 16 codes equal the reference's."""
    state = session.state
    prompt = prompt_ids.tolist()
    assert state.fed_token_ids[: len(prompt)] == prompt  # the chat template renders alike
    # the reply: the tokens fed back, then the last sampled one (pending before the turn's <|im_end|>)
    reply_ids = state.fed_token_ids[len(prompt):] + state.pending_token_ids[:-1]
    stop_ids = set(session.model.generation.eos_token_ids)  # a stop token ends the reply; omni keeps it out
    assert reply_ids == [t for t in text_ids.tolist() if t not in stop_ids]
    assert reply.text == _streamed_text(session.model, reply_ids)
    got = torch.tensor(reply.done.codec_codes)
    assert got.shape == codes.shape and got.shape[0] >= 4, (got.shape, codes.shape)
    assert torch.equal(got, codes)


def _omni_reply(loaded, messages, engine: bool):
    session = OmniSession(loaded, system_prompt=None, max_new_tokens=THINKER_TOKENS, sampling=SamplingParams(),
                          engine=engine)
    speech = SpeechOptions(voice="Ethan", talker=TalkerOptions(sampling=SamplingParams(), max_codes=TALKER_TOKENS - 1,
                                                               codes_per_text_token=None))
    reply = session.reply(messages, return_audio=True, speech=speech)
    return session, reply


@pytest.mark.parametrize("engine", [False, True], ids=["alone", "engine"])
def test_text_prompt_reply_matches_reference(pair, engine):
    _check_text_reply(pair, engine)


@pytest.mark.slow
def test_small_preset_reply_matches_reference(qwen3_small_checkpoint):
    _check_text_reply(_pair(qwen3_small_checkpoint), engine=True)


def _check_text_reply(pair, engine: bool) -> None:
    reference, loaded, processor = pair
    messages = [{"role": "user", "content": [{"type": "text", "text": "Say something about the sea."}]}]
    prompt_ids, text_ids, codes = _reference_reply(reference, processor, messages)
    with torch.no_grad():
        waveform = reference.code2wav(codes.T[None])[0, 0]
    session, reply = _omni_reply(loaded, messages, engine)
    _assert_same_reply(session, reply, prompt_ids, text_ids, codes)
    audio = torch.from_numpy(reply.audio)
    assert audio.shape == waveform.shape
    assert float(waveform.abs().max()) > 1e-3  # not a near-silent comparison
    assert float((audio - waveform).abs().max()) <= 1e-4
    assert reply.sample_rate_hz == 24000


def test_voices_and_unknown_voice(pair):
    _, loaded, _ = pair
    assert {"Chelsie", "Ethan", "Aiden"} <= set(loaded.voices)
    session = OmniSession(loaded, engine=False, max_new_tokens=2)
    from omni.errors import UnknownVoiceError

    with pytest.raises(UnknownVoiceError, match="Ethan"):
        session.reply("hi", return_audio=True, voice="Nobody")
    # voice names are matched without regard to case, as the reference does
    reply = session.reply("hi", return_audio=True, voice="ethan",
                          speech=SpeechOptions(talker=TalkerOptions(max_codes=4)))
    assert reply.audio is not None and reply.audio.size > 0
    assert np.isfinite(reply.audio).all()


def _speech_wave(seconds: float) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    rng = np.random.default_rng(5)
    return (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t) + 0.02 * rng.standard_normal(t.size)
            ).astype(np.float32)


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_media_prompt_reply_matches_reference(pair, kind, tmp_path):
    """Media through omni's loaders, encoders, deepstack (images) and the Talker's hidden-state path."""
    import wave

    from PIL import Image

    reference, loaded, processor = pair
    if kind == "image":
        pixels = np.random.default_rng(3).integers(0, 255, (64, 96, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        path = tmp_path / "picture.png"
        image.save(path)
        item, media = {"type": "image", "image": str(path)}, {"images": [image]}
    else:
        pcm = (_speech_wave(1.5) * 32767).astype(np.int16)
        path = tmp_path / "speech.wav"
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(16000)
            out.writeframes(pcm.tobytes())
        item, media = {"type": "audio", "audio": str(path)}, {"audio": [pcm.astype(np.float32) / 32768.0]}
    reference_messages = [{"role": "user", "content": [{"type": kind, kind: str(path)},
                                                       {"type": "text", "text": "What is this?"}]}]
    prompt_ids, text_ids, codes = _reference_reply(reference, processor, reference_messages, **media)
    session, reply = _omni_reply(loaded, [{"role": "user", "content": [item, {"type": "text", "text": "What is this?"}]}],
                                 engine=False)
    _assert_same_reply(session, reply, prompt_ids, text_ids, codes)


def test_second_turn_reply_matches_reference(pair):
    """The second turn continues the Thinker's cache and re-reads the conversation's user turns in the
    Talker (Qwen3TalkerContext); the reference reads the same tokens fresh."""
    reference, loaded, _ = pair
    session, _ = _omni_reply(loaded, [{"role": "user", "content": "Tell me about rivers."}], engine=False)
    speech = SpeechOptions(voice="Ethan", talker=TalkerOptions(sampling=SamplingParams(), max_codes=TALKER_TOKENS - 1,
                                                               codes_per_text_token=None))
    second = session.reply([{"role": "user", "content": "And lakes?"}], return_audio=True, speech=speech)
    fed = session.state.fed_token_ids
    starts = [i for i in range(len(fed) - 1) if fed[i] == 151644 and fed[i + 1] == 77091]
    prompt = torch.tensor([fed[: starts[-1] + 3]])
    assert starts[-1] > starts[0]  # a second assistant turn
    text_ids, codes = _reference_generate(reference, input_ids=prompt, attention_mask=torch.ones_like(prompt))
    _assert_same_reply(session, second, prompt[0], text_ids, codes)

