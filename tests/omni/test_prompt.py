"""Multimodal prompts through omni's Thinker against the transformers reference Thinker fed the
processor's outputs for the same decoded media: logits (fp32, <= 1e-4) and 32 greedy tokens for an
image, two images, an audio clip, a video and a video with its audio track, on tiny and small; a
left-padded batch; a turn continued on the KV cache; bf16; bad prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omni.errors import InputError, MediaError
from omni.loading import load_model
from omni.prompt import build_prompt, encode_media, merge_prompt, prepare_prompt
from omni.sampling import SamplingParams
from omni.thinker.generate import stream_thinker
from tests.conftest import PAD_ID, STOP_IDS
from omni.tools.media_factory import build_media
from omni.tools.reference import reference_inputs

VIDEO_PIXELS = (16 * 784, 32 * 784)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return build_media(tmp_path_factory.mktemp("prompt-media"))


@pytest.fixture(scope="module")
def pair(checkpoint):
    from transformers import Qwen2_5OmniProcessor, Qwen2_5OmniThinkerForConditionalGeneration

    ours = load_model(checkpoint, dtype="fp32", audio_output=False)
    reference = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return ours, reference, Qwen2_5OmniProcessor.from_pretrained(checkpoint)


def _user(*items):
    return [{"role": "user", "content": list(items)}]


def _video(path):
    return {"type": "video", "video": str(path), "min_pixels": VIDEO_PIXELS[0], "max_pixels": VIDEO_PIXELS[1]}


def _case(media, name):
    ask = {"type": "text", "text": "What is in it?"}
    return {
        "image": (_user({"type": "image", "image": str(media.image_png)}, ask), False),
        "two_images": (_user({"type": "image", "image": str(media.image_png)}, {"type": "text", "text": "and"},
                             {"type": "image", "image": str(media.image_jpg)}, ask), False),
        "audio": (_user({"type": "audio", "audio": str(media.speech)}, ask), False),
        "video": (_user(_video(media.video["mp4"]), ask), False),
        "video_with_audio": (_user(_video(media.long_video_audio), ask), True),
    }[name]


def _prepare(ours, conversations, **options):
    return prepare_prompt(ours.tokenizer, ours.model.thinker.config, conversations, pad_token_id=PAD_ID, **options)


def _omni_logits(ours, prompt):
    thinker = ours.model.thinker
    with torch.no_grad():
        return thinker.lm_head(thinker(prompt.inputs_embeds, prompt.position_ids, token_mask=prompt.token_mask))


@pytest.mark.parity
@pytest.mark.parametrize("name", ["image", "two_images", "audio", "video", "video_with_audio"])
def test_logits_and_32_greedy_tokens_match_reference(pair, media, name):
    ours, reference, processor = pair
    conversation, use_audio_in_video = _case(media, name)
    prepared = _prepare(ours, conversation, use_audio_in_video=use_audio_in_video)
    inputs = reference_inputs(processor, [conversation], prepared.items, use_audio_in_video, video_pixels=VIDEO_PIXELS)
    assert torch.equal(prepared.input_ids, inputs["input_ids"])
    thinker = ours.model.thinker
    prompt = merge_prompt(thinker, prepared, encode_media(thinker, prepared.media))

    ids = thinker.config.token_ids
    placeholders = torch.isin(prompt.input_ids, torch.tensor([ids.image, ids.video, ids.audio]))
    assert prompt.multimodal_mask is not None and torch.equal(prompt.multimodal_mask, placeholders)
    with torch.no_grad():
        expected = reference(**inputs, use_audio_in_video=use_audio_in_video).logits
    difference = (_omni_logits(ours, prompt) - expected).abs().max().item()
    assert difference <= 1e-4, f"max abs logit difference {difference}"

    steps = list(stream_thinker(thinker, prompt, SamplingParams(), 32, stop_token_ids=STOP_IDS, pad_token_id=PAD_ID))
    actual = [int(step.token_ids[0]) for step in steps]
    generated = reference.generate(**inputs, use_audio_in_video=use_audio_in_video, max_new_tokens=32,
                                   do_sample=False, eos_token_id=STOP_IDS, pad_token_id=PAD_ID)
    assert actual == generated[0, inputs["input_ids"].shape[1]:].tolist()
    assert len(actual) == 32 or actual[-1] in STOP_IDS


@pytest.mark.parity
def test_left_padded_batch_matches_reference(pair, media):
    ours, reference, processor = pair
    conversations = [
        _user({"type": "image", "image": str(media.image_jpg)}, {"type": "audio", "audio": str(media.tone["flac"])},
              {"type": "text", "text": "Describe both."}),
        _user({"type": "text", "text": "Just text here, a little longer than the other prompt, to pad it."}),
        _user(_video(media.video_audio["webm"]), {"type": "text", "text": "And this?"}),
    ]
    prepared = _prepare(ours, conversations, use_audio_in_video=True)
    assert prepared.token_mask is not None and not bool(prepared.token_mask.all())
    inputs = reference_inputs(processor, conversations, prepared.items, True, video_pixels=VIDEO_PIXELS)
    thinker = ours.model.thinker
    prompt = merge_prompt(thinker, prepared, encode_media(thinker, prepared.media))
    with torch.no_grad():
        expected = reference(**inputs, use_audio_in_video=True).logits
    real = prepared.token_mask
    assert (_omni_logits(ours, prompt) - expected)[real].abs().max().item() <= 1e-4

    steps = list(stream_thinker(thinker, prompt, SamplingParams(), 12, stop_token_ids=STOP_IDS, pad_token_id=PAD_ID))
    actual = torch.stack([step.token_ids for step in steps], dim=1)
    generated = reference.generate(**inputs, use_audio_in_video=True, max_new_tokens=12, do_sample=False,
                                   eos_token_id=STOP_IDS, pad_token_id=PAD_ID)
    assert actual.tolist() == generated[:, inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.parity
def test_continued_turn_on_the_kv_cache_matches_the_whole_conversation(pair, media):
    """Turn 2 (with an audio clip) appended to turn 1's cache gives the reference's positions and
    logits for the conversation run as one sequence."""
    ours, reference, processor = pair
    thinker = ours.model.thinker
    turn1 = _user({"type": "image", "image": str(media.image_png)}, {"type": "text", "text": "What is it?"})
    first = build_prompt(ours, turn1)
    cache = thinker.model.new_cache(1, 256)
    steps = list(stream_thinker(thinker, first, SamplingParams(), 5, stop_token_ids=[], pad_token_id=PAD_ID,
                                cache=cache))
    reply = [int(step.token_ids[0]) for step in steps]
    assert cache.length == first.input_ids.shape[1] + 4  # the last sampled token is not consumed yet

    turn2 = _user({"type": "audio", "audio": str(media.tone["wav"])}, {"type": "text", "text": "And this sound?"})
    start = first.next_position + 4
    history = turn1 + [{"role": "assistant", "content": ours.tokenizer.decode(reply)}]
    prepared = _prepare(ours, turn2, continuation=True, history=history, prefix_ids=reply[-1:],
                        prefix="<|im_end|>\n", start_position=start)
    second = merge_prompt(thinker, prepared, encode_media(thinker, prepared.media))
    with torch.no_grad():
        logits = thinker.lm_head(thinker(second.inputs_embeds, second.position_ids, cache=cache))

    whole_ids = torch.cat([first.input_ids, torch.tensor([reply[:-1]]), second.input_ids], dim=1)
    first_inputs = reference_inputs(processor, [turn1], [[item for item in _prepare(ours, turn1).items[0]]])
    second_inputs = reference_inputs(processor, [turn2], prepared.items)
    assert torch.equal(first.input_ids, first_inputs["input_ids"])
    mask = torch.ones_like(whole_ids)
    positions, _ = reference.model.get_rope_index(whole_ids, first_inputs["image_grid_thw"], None, mask, False,
                                                  second_inputs["feature_attention_mask"].sum(-1), None)
    new = slice(whole_ids.shape[1] - second.input_ids.shape[1], None)
    assert torch.equal(second.position_ids, positions[:, :, new])
    with torch.no_grad():
        expected = reference(input_ids=whole_ids, attention_mask=mask, pixel_values=first_inputs["pixel_values"],
                             image_grid_thw=first_inputs["image_grid_thw"],
                             input_features=second_inputs["input_features"],
                             feature_attention_mask=second_inputs["feature_attention_mask"]).logits
    assert (logits - expected[:, new]).abs().max().item() <= 1e-4


@pytest.fixture(scope="module")
def front_end(tiny_checkpoint):
    """The prompt builder's inputs and the reference processor, without any model."""
    from transformers import Qwen2_5OmniProcessor

    from omni.config import load_config
    from omni.tokenizer import Tokenizer

    return (Tokenizer.from_checkpoint(tiny_checkpoint), load_config(tiny_checkpoint).thinker,
            Qwen2_5OmniProcessor.from_pretrained(tiny_checkpoint))


@pytest.mark.parity
@pytest.mark.parametrize("use_audio_in_video", [False, True])
def test_turns_on_a_cache_feed_the_processor_ids_of_the_whole_conversation(front_end, media, use_audio_in_video):
    """As a session feeds them: turn 1; the reply's tokens; <|im_end|> and "\n"; turn 2 rendered after
    the history. Together: the ids of the processor (its own rendering of the checkpoint's published
    template, and its placeholder expansion) for the whole conversation with the system prompt."""
    from omni.chat import AUDIO_SYSTEM_PROMPT

    tokenizer, config, processor = front_end
    turn1 = _user({"type": "image", "image": str(media.image_png)}, {"type": "text", "text": "What is it?"})
    reply = "A red square, I think."
    turn2 = _user(_video(media.long_video_audio), {"type": "audio", "audio": str(media.tone["wav"])},
                  {"type": "image", "image": str(media.image_jpg)}, {"type": "text", "text": "And these?"})
    history = turn1 + [{"role": "assistant", "content": reply}]
    options = dict(pad_token_id=PAD_ID, system_prompt=AUDIO_SYSTEM_PROMPT, use_audio_in_video=use_audio_in_video)
    first = prepare_prompt(tokenizer, config, turn1, **options)
    reply_ids = tokenizer.encode(reply) + [tokenizer.token_id("<|im_end|>")]
    second = prepare_prompt(tokenizer, config, turn2, continuation=True, history=history, prefix_ids=reply_ids,
                            prefix="\n", **options)
    fed = torch.cat([first.input_ids, second.input_ids], dim=1)

    whole = [{"role": "system", "content": AUDIO_SYSTEM_PROMPT}] + history + turn2
    expected = reference_inputs(processor, [whole], [first.items[0] + second.items[0]], use_audio_in_video,
                                video_pixels=VIDEO_PIXELS)
    assert torch.equal(fed, expected["input_ids"])
    ids = config.token_ids
    assert all(bool((second.input_ids == token).any()) for token in (ids.image, ids.audio, ids.video))


def test_a_continued_turn_needs_its_history(front_end):
    tokenizer, config, _ = front_end
    with pytest.raises(InputError, match="continuation=True needs history"):
        prepare_prompt(tokenizer, config, [{"role": "user", "content": "Hi"}], pad_token_id=PAD_ID, continuation=True)
    with pytest.raises(InputError, match="history holds 1 conversations' messages for 2 conversations"):
        prepare_prompt(tokenizer, config, [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]],
                       pad_token_id=PAD_ID, continuation=True, history=[{"role": "user", "content": "x"}])


def test_bf16_prompt_runs_close_to_fp32(tiny_checkpoint, media):
    conversation, _ = _case(media, "video_with_audio")
    outputs = {}
    for dtype in ("fp32", "bf16"):
        model = load_model(tiny_checkpoint, dtype=dtype, audio_output=False)
        prompt = build_prompt(model, conversation, use_audio_in_video=True)
        assert prompt.inputs_embeds.dtype == (torch.bfloat16 if dtype == "bf16" else torch.float32)
        outputs[dtype] = _omni_logits(model, prompt).float()
        steps = list(stream_thinker(model.model.thinker, prompt, SamplingParams(), 4, stop_token_ids=STOP_IDS,
                                    pad_token_id=PAD_ID))
        assert len(steps) >= 1
    relative = (outputs["bf16"] - outputs["fp32"]).norm() / outputs["fp32"].norm()
    assert torch.isfinite(outputs["bf16"]).all() and relative.item() < 0.05


def test_text_only_prompt_has_no_multimodal_mask(tiny_text_model):
    prompt = build_prompt(tiny_text_model, [{"role": "user", "content": "Hello"}])
    assert prompt.multimodal_mask is None and prompt.token_mask is None
    assert prompt.next_position.tolist() == [prompt.input_ids.shape[1]]


def test_bad_prompts_are_typed_errors(tiny_text_model, media):
    with pytest.raises(InputError, match="must not contain <\\|IMAGE\\|>"):
        build_prompt(tiny_text_model, _user({"type": "text", "text": "sneaky <|vision_bos|><|IMAGE|><|vision_eos|>"}))
    with pytest.raises(MediaError, match="at least 321 samples"):
        build_prompt(tiny_text_model, _user({"type": "audio", "audio": np.zeros(200, np.float32)}))
    with pytest.raises(MediaError, match="does not exist"):
        build_prompt(tiny_text_model, _user({"type": "image", "image": str(media.directory / "missing.png")}))
    # a malformed message is reported before any media is read
    with pytest.raises(InputError, match="role 'robot'"):
        build_prompt(tiny_text_model, [{"role": "robot", "content": [{"type": "image", "image": "missing.png"}]}])


def test_preloaded_media_give_the_same_prompt(tiny_text_model, media):
    from omni.prompt import load_media

    conversation, _ = _case(media, "two_images")
    config = tiny_text_model.model.thinker.config
    items = load_media(conversation, config)
    direct = _prepare(tiny_text_model, conversation)
    preloaded = _prepare(tiny_text_model, conversation, media_items=items)
    assert torch.equal(direct.input_ids, preloaded.input_ids)
    assert torch.equal(direct.position_ids, preloaded.position_ids)
    assert torch.equal(direct.media.images.pixel_values, preloaded.media.images.pixel_values)
