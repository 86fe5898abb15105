"""omni's Thinker against transformers' Qwen2_5OmniThinkerForConditionalGeneration on the same
random-weight checkpoints (fp32): logits of a padded batch of text prompts, and greedy generation."""

from __future__ import annotations

import pytest
import torch

from omni.chat import render_chat
from omni.loading import load_model
from omni.sampling import SamplingParams
from omni.thinker.generate import stream_thinker, text_prompt
from tests.conftest import PAD_ID, STOP_IDS

pytestmark = pytest.mark.parity

PROMPTS = [
    [{"role": "user", "content": "Hello, who are you?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "天气怎么样？ Tell me 2+2."}],
    [{"role": "user", "content": "x"}],
    [
        {"role": "user", "content": "Write a haiku about rivers."},
        {"role": "assistant", "content": "Water finds its way"},
        {"role": "user", "content": "Another, please 🙂"},
    ],
]


@pytest.fixture(scope="module")
def pair(checkpoint):
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    ours = load_model(checkpoint, dtype="fp32", audio_output=False)
    reference = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return ours, reference


def _token_lists(tokenizer):
    return [tokenizer.encode(render_chat(messages)) for messages in PROMPTS]


def test_batch_logits_match_reference(pair):
    ours, reference = pair
    prompt = text_prompt(_token_lists(ours.tokenizer), pad_id=PAD_ID)
    assert prompt.token_mask is not None  # the batch really is padded
    with torch.no_grad():
        expected = reference(input_ids=prompt.input_ids, attention_mask=prompt.token_mask.long()).logits
        thinker = ours.model.thinker
        hidden = thinker(thinker.embed(prompt.input_ids), prompt.position_ids, token_mask=prompt.token_mask)
        actual = thinker.lm_head(hidden)
    real = prompt.token_mask
    difference = (actual - expected)[real].abs().max().item()
    assert difference <= 1e-4, f"max abs logit difference {difference}"
    assert expected[real].abs().max().item() > 1e-2  # the comparison is not between zeros


def test_prefill_then_decode_logits_match_reference(pair):
    """Cached decoding steps give the reference's logits for the same continued sequence."""
    ours, reference = pair
    ids = _token_lists(ours.tokenizer)[0]
    continuation = [9707, 1879, 11, 220, 108386]
    prompt = text_prompt([ids], pad_id=PAD_ID)
    thinker = ours.model.thinker
    cache = thinker.model.new_cache(1, 8)  # deliberately small: it must grow
    with torch.no_grad():
        logits = [thinker.lm_head(thinker(thinker.embed(prompt.input_ids), prompt.position_ids, cache=cache))[0]]
        for offset, token in enumerate(continuation):
            position = torch.full((3, 1, 1), len(ids) + offset)
            hidden = thinker(thinker.embed(torch.tensor([[token]])), position, cache=cache)
            logits.append(thinker.lm_head(hidden)[0])
        actual = torch.cat(logits)
        full = torch.tensor([ids + continuation])
        expected = reference(input_ids=full, attention_mask=torch.ones_like(full)).logits[0]
    assert cache.length == len(ids) + len(continuation)
    assert (actual - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("prompt_index", range(len(PROMPTS)))
def test_greedy_64_tokens_identical(pair, prompt_index):
    ours, reference = pair
    ids = _token_lists(ours.tokenizer)[prompt_index]
    prompt = text_prompt([ids], pad_id=PAD_ID)
    steps = list(
        stream_thinker(ours.model.thinker, prompt, SamplingParams(), 64, stop_token_ids=STOP_IDS, pad_token_id=PAD_ID)
    )
    actual = [int(step.token_ids[0]) for step in steps]
    generated = reference.generate(
        input_ids=prompt.input_ids,
        attention_mask=torch.ones_like(prompt.input_ids),
        max_new_tokens=64,
        do_sample=False,
        eos_token_id=STOP_IDS,
        pad_token_id=PAD_ID,
    )
    expected = generated[0, len(ids):].tolist()
    assert actual == expected
    assert len(actual) == 64 or actual[-1] in STOP_IDS


def test_batched_greedy_matches_reference_batch(pair):
    """Left-padded batch generation with per-row stopping equals the reference's batched generate."""
    ours, reference = pair
    token_lists = _token_lists(ours.tokenizer)
    prompt = text_prompt(token_lists, pad_id=PAD_ID)
    steps = list(
        stream_thinker(ours.model.thinker, prompt, SamplingParams(), 24, stop_token_ids=STOP_IDS, pad_token_id=PAD_ID)
    )
    actual = torch.stack([step.token_ids for step in steps], dim=1)
    generated = reference.generate(
        input_ids=prompt.input_ids,
        attention_mask=prompt.token_mask.long(),
        max_new_tokens=24,
        do_sample=False,
        eos_token_id=STOP_IDS,
        pad_token_id=PAD_ID,
    )
    expected = generated[:, prompt.input_ids.shape[1]:]
    assert actual.tolist() == expected.tolist()


# --- Other devices and dtypes (tests/devices.py): the CPU fp32 tests above keep their tolerances ---

from tests.devices import DTYPES, LLM_CASES, assert_no_worse_than_reference, strict_fp32  # noqa: E402


@pytest.fixture(scope="module")
def reference_fp32(tiny_checkpoint):
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    return Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()


def _device_pair(checkpoint, device, dtype):
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    ours = load_model(checkpoint, dtype=dtype, device=device, audio_output=False)
    reference = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(checkpoint, dtype=DTYPES[dtype])
    return ours, reference.eval().to(device)


def _omni_logits(ours, prompt, device):
    thinker = ours.model.thinker
    mask = prompt.token_mask.to(device) if prompt.token_mask is not None else None
    hidden = thinker(thinker.embed(prompt.input_ids.to(device)), prompt.position_ids.to(device), token_mask=mask)
    return thinker.lm_head(hidden).float().cpu()


@pytest.mark.parametrize("device,dtype", LLM_CASES)
def test_batch_logits_on_device_and_dtype(tiny_checkpoint, reference_fp32, device, dtype):
    ours, reference = _device_pair(tiny_checkpoint, device, dtype)
    prompt = text_prompt(_token_lists(ours.tokenizer), pad_id=PAD_ID)
    real = prompt.token_mask
    with torch.no_grad(), strict_fp32():
        fp32 = reference_fp32(input_ids=prompt.input_ids, attention_mask=real.long()).logits
        theirs = reference(input_ids=prompt.input_ids.to(device), attention_mask=real.long().to(device)).logits
        actual = _omni_logits(ours, prompt, device)
    if dtype == "fp32":
        assert (actual - fp32)[real].abs().max().item() <= 1e-4
    else:
        assert_no_worse_than_reference(actual[real], theirs[real.to(theirs.device)], fp32[real], f"{device} {dtype} logits")


@pytest.mark.parametrize("device,dtype", LLM_CASES)
def test_greedy_tokens_on_device_and_dtype(tiny_checkpoint, reference_fp32, device, dtype):
    """32 greedy tokens equal the reference's in the same dtype on the same device; where reduced
    precision makes them part, the fp32 logits of the two candidates must be a near-tie: closer than the
    reference's own error in that dtype at that position (else the difference is omni's)."""
    ours, reference = _device_pair(tiny_checkpoint, device, dtype)
    ids = _token_lists(ours.tokenizer)[0]
    prompt = text_prompt([ids], pad_id=PAD_ID)
    with strict_fp32():
        actual = [int(step.token_ids[0]) for step in stream_thinker(
            ours.model.thinker, prompt, SamplingParams(), 32, stop_token_ids=[], pad_token_id=PAD_ID)]
        expected = reference.generate(input_ids=prompt.input_ids.to(device),
                                      attention_mask=torch.ones_like(prompt.input_ids).to(device), max_new_tokens=32,
                                      min_new_tokens=None, do_sample=False, eos_token_id=None,
                                      pad_token_id=PAD_ID)[0, len(ids):].tolist()
    assert len(actual) == len(expected) == 32
    if actual == expected:
        return
    assert dtype != "fp32", f"fp32 on {device} parts from the reference: {actual} vs {expected}"
    first = next(i for i, (a, b) in enumerate(zip(actual, expected)) if a != b)
    prefix = torch.tensor([ids + expected[:first]])
    with torch.no_grad():
        fp32 = reference_fp32(input_ids=prefix, attention_mask=torch.ones_like(prefix)).logits[0, -1]
        theirs = reference(input_ids=prefix.to(device),
                           attention_mask=torch.ones_like(prefix).to(device)).logits[0, -1].float().cpu()
    margin = abs(fp32[actual[first]] - fp32[expected[first]]).item()
    noise = (theirs - fp32).abs().max().item()
    assert margin <= REDUCED_NEAR_TIE * noise, (
        f"{device} {dtype}: token {first} differs ({actual[first]} vs {expected[first]}) with an fp32 margin "
        f"{margin:.3g}, more than the dtype's own error {noise:.3g}")


REDUCED_NEAR_TIE = 2.0  # as REDUCED_PRECISION_FACTOR: the same "twice the reference's own error" rule
