"""The Qwen3-Omni Talker, code predictor and streaming talker loop against transformers'
Qwen3OmniMoeForConditionalGeneration (fp32, eager attention and experts, greedy).

The reference model is the `tiny` preset with random weights. Its `generate` runs the Thinker, then the
Talker over the whole Thinker output; the Thinker's output (its embeddings and hidden states, an input
to the Talker, not part of it) is recorded and fed to omni's streaming Talker one text token at a time,
interleaved with `step()`, and every code of every frame must equal the reference's.
"""

from __future__ import annotations

import copy

import pytest
import torch
from omni.talker.qwen3.talker import Talker
from omni.talker.qwen3.talker_stream import (
    TalkerOptions,
    TalkerPrompt,
    TalkerStream,
    talker_positions,
)

from omni.qwen3.config import parse_config
from omni.qwen3.weights import load_weights
from omni.tools.qwen3_presets import PRESETS
from tests.qwen3_reference import widen_random_weights

pytestmark = pytest.mark.parity

IM_START, IM_END, USER, ASSISTANT, SYSTEM, NEWLINE = 151644, 151645, 872, 77091, 8948, 198
VISION_START, VISION_END, IMAGE = 151652, 151653, 151655
AUDIO_START, AUDIO_END, AUDIO = 151669, 151670, 151675


def _preset_config() -> dict:
    return copy.deepcopy(PRESETS["tiny"].config)


@pytest.fixture(scope="module")
def models():
    """(reference Qwen3OmniMoeForConditionalGeneration, omni Talker with its weights, omni config)."""
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration

    config = Qwen3OmniMoeConfig(**_preset_config())
    config._attn_implementation = "eager"
    for sub in (config.thinker_config.text_config, config.talker_config.text_config):
        sub._experts_implementation = "eager"
    torch.manual_seed(0)
    reference = Qwen3OmniMoeForConditionalGeneration(config).eval()
    widen_random_weights(reference)
    omni_config = parse_config(_preset_config())
    talker = Talker(omni_config.talker).eval()
    report = load_weights(talker, reference.talker.state_dict().items())
    assert report.ok and report.loaded == len(reference.talker.state_dict())
    return reference, talker, omni_config


def _text(generator: torch.Generator, n: int) -> list[int]:
    return torch.randint(1000, 150000, (n,), generator=generator).tolist()


def _turn(role: int, body: list[int]) -> list[int]:
    return [IM_START, role, NEWLINE, *body, IM_END, NEWLINE]


def _run_reference(reference, input_ids: torch.Tensor, thinker_tokens: int, talker_tokens: int,
                   repetition_penalty: float, **media):
    """Reference generate (greedy Talker) -> (the Thinker's generate output, talker codes (frames, 16))."""
    recorded = {}
    thinker_generate = reference.thinker.generate

    def record_thinker(*args, **kwargs):
        recorded["thinker"] = thinker_generate(*args, **kwargs)
        return recorded["thinker"]

    def record_codes(codes, **kwargs):
        recorded["codes"] = codes
        return torch.zeros(1, 1, 1)

    reference.thinker.generate = record_thinker
    reference.code2wav.chunked_decode = record_codes
    try:
        reference.generate(input_ids=input_ids, speaker="Ethan", thinker_max_new_tokens=thinker_tokens,
                           talker_max_new_tokens=talker_tokens, talker_do_sample=False,
                           talker_repetition_penalty=repetition_penalty, **media)
    finally:
        del reference.thinker.generate
        del reference.code2wav.chunked_decode
    return recorded["thinker"], recorded["codes"][0].T


def _stream(reference, talker, thinker_result, prompt_length: int, options: TalkerOptions, accept_layer: int,
            **geometry):
    """omni's streaming Talker fed the Thinker's output token by token; checks that it waits for text and
    that each step reads only text up to its own index. Returns the frames (frames, 16)."""
    embeds = torch.cat([step[0] for step in thinker_result.hidden_states], dim=1)[0]
    hidden = thinker_result.hidden_states[0][accept_layer][0]
    stream = TalkerStream(talker, reference.thinker.get_input_embeddings(), options)
    stream.start(TalkerPrompt(input_ids=thinker_result.sequences[0, :prompt_length],
                              thinker_embeds=embeds[: prompt_length + 1], thinker_hidden=hidden, **geometry))
    fed_text = embeds[prompt_length + 1 :]  # the generated tokens the Thinker fed back after the first
    frames = []
    for pushed in range(fed_text.shape[0] + 1):
        # Frame k needs text entry k - 1: with `pushed` entries, exactly `pushed + 1` frames can exist.
        while (frame := stream.step()) is not None:
            frames.append(frame)
        assert len(frames) == pushed + 1 or stream.finished
        assert not stream.finished or len(frames) <= pushed + 1
        if stream.finished:
            break
        assert not stream.can_step()
        if pushed < fed_text.shape[0]:
            stream.push_text(fed_text[pushed : pushed + 1])
    stream.finish_text()
    while (frame := stream.step()) is not None:
        frames.append(frame)
    assert stream.finished
    return torch.stack(frames)


def _compare(reference, talker, config, input_ids, thinker_tokens=5, talker_tokens=14, repetition_penalty=1.0,
             geometry=None, **media):
    thinker_result, expected = _run_reference(reference, input_ids, thinker_tokens, talker_tokens,
                                              repetition_penalty, **media)
    options = TalkerOptions.greedy(repetition_penalty=repetition_penalty, max_new_tokens=talker_tokens)
    got = _stream(reference, talker, thinker_result, input_ids.shape[1], options, config.talker.accept_hidden_layer,
                  **(geometry or {}))
    assert got.shape == expected.shape, (got.shape, expected.shape)
    assert torch.equal(got, expected), (got - expected).abs().max()
    return got


# ---------------------------------------------------------------------------------------------------
# Module level


def test_talker_logits_match_reference(models):
    reference, talker, config = models
    generator = torch.Generator().manual_seed(3)
    width = config.talker.text.hidden_size
    embeds = torch.randn(1, 12, width, generator=generator)
    # M-RoPE positions with a vision-like block (equal time, varying rows and columns) inside text
    positions = torch.arange(12).expand(3, 1, -1).clone()
    positions[:, 0, 4:8] = torch.tensor([[4, 4, 4, 4], [4, 4, 5, 5], [4, 5, 4, 5]])
    positions[:, 0, 8:] = torch.arange(6, 10)
    with torch.no_grad():
        out = reference.talker.model(inputs_embeds=embeds, position_ids=positions)
        expected = reference.talker.codec_head(out.last_hidden_state)
        whole = talker.codec_logits(talker(embeds, positions))
        cache = talker.new_cache(1, 4)  # grows while decoding
        stepped = [talker.codec_logits(talker(embeds[:, :8], positions[:, :, :8], cache=cache))]
        for i in range(8, 12):
            stepped.append(talker.codec_logits(talker(embeds[:, i : i + 1], positions[:, :, i : i + 1], cache=cache)))
    assert (whole - expected).abs().max().item() <= 1e-4
    assert (torch.cat(stepped, dim=1) - expected).abs().max().item() <= 1e-4
    assert expected.abs().max().item() > 1.0  # not a degenerate comparison


def test_code_predictor_codes_match_reference(models):
    reference, talker, config = models
    generator = torch.Generator().manual_seed(4)
    predictor = talker.code_predictor
    cache = predictor.new_cache(1)
    positions = predictor.new_positions(1)
    for trial in range(3):
        talker_hidden = torch.randn(1, config.talker.text.hidden_size, generator=generator)
        code0 = torch.randint(0, 2048, (1, 1), generator=generator)
        code0_embed = talker.embed_codes(code0)[:, 0]
        with torch.no_grad():
            result = reference.talker.code_predictor.generate(
                inputs_embeds=torch.stack((talker_hidden, code0_embed), dim=1), max_new_tokens=15, do_sample=False,
                output_hidden_states=True, return_dict_in_generate=True)
            codes, embed_sum = predictor.predict(talker_hidden, code0_embed, cache, positions)
        assert torch.equal(codes, result.sequences), trial
        assert len(set(codes[0].tolist())) > 3  # the heads do not all pick one code
        # the next Talker input as the reference sums it: code 0 by the Talker's table, 1..14 as fed to the
        # predictor, 15 by the last residual table
        fed = [hidden[0] for hidden in result.hidden_states[1:]]
        last = reference.talker.code_predictor.get_input_embeddings()[-1](result.sequences[:, -1:])
        expected_sum = torch.cat([talker.embed_codes(code0)] + fed + [last], dim=1).sum(1)
        assert (embed_sum - expected_sum).abs().max().item() <= 1e-5


def test_code_predictor_cache_is_reused_without_growing(models):
    _, talker, config = models
    predictor = talker.code_predictor
    cache = predictor.new_cache(1)
    buffers = [k.data_ptr() for k in cache.keys]
    hidden = torch.randn(2, 1, config.talker.text.hidden_size)
    first, _ = predictor.predict(hidden[0], hidden[1], cache, predictor.new_positions(1))
    second, _ = predictor.predict(hidden[0], hidden[1], cache, predictor.new_positions(1))
    assert torch.equal(first, second)  # reset per frame: the second frame does not see the first
    assert [k.data_ptr() for k in cache.keys] == buffers
    assert cache.capacity == config.talker.num_code_groups


# ---------------------------------------------------------------------------------------------------
# Whole loop


@pytest.mark.slow
@pytest.mark.parametrize("repetition_penalty", [1.0, 1.05])
def test_text_prompt_codes_match_reference(models, repetition_penalty):
    reference, talker, config = models
    generator = torch.Generator().manual_seed(10)
    ids = _turn(SYSTEM, _text(generator, 4)) + _turn(USER, _text(generator, 6)) + [IM_START, ASSISTANT, NEWLINE]
    frames = _compare(reference, talker, config, torch.tensor([ids]), repetition_penalty=repetition_penalty)
    assert frames.shape == (13, 16)  # 14 group-0 tokens, the last without residual codes
    assert len(set(frames[:, 0].tolist())) > 2


@pytest.mark.slow
def test_multi_turn_codes_match_reference(models):
    """Two user turns (both reach the Talker), an assistant turn and a system turn (dropped)."""
    reference, talker, config = models
    generator = torch.Generator().manual_seed(11)
    ids = (_turn(SYSTEM, _text(generator, 3)) + _turn(USER, _text(generator, 5))
           + _turn(ASSISTANT, _text(generator, 4)) + _turn(USER, _text(generator, 3))
           + [IM_START, ASSISTANT, NEWLINE])
    _compare(reference, talker, config, torch.tensor([ids]), thinker_tokens=3, talker_tokens=10)


@pytest.mark.slow
def test_image_prompt_codes_match_reference(models):
    """Image placeholders reach the Talker through hidden_projection, at 3-D positions."""
    reference, talker, config = models
    generator = torch.Generator().manual_seed(12)
    grid = torch.tensor([[1, 4, 6]])  # 24 patches, 6 merged tokens
    vision = config.thinker.vision
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    pixel_values = torch.randn(int(grid.prod()), patch_dim, generator=generator)
    body = [VISION_START] + [IMAGE] * 6 + [VISION_END] + _text(generator, 4)
    ids = _turn(USER, body) + [IM_START, ASSISTANT, NEWLINE]
    _compare(reference, talker, config, torch.tensor([ids]), talker_tokens=10,
             geometry={"image_grid_thw": grid}, pixel_values=pixel_values, image_grid_thw=grid)


@pytest.mark.slow
def test_audio_prompt_codes_match_reference(models):
    """Audio placeholders take hidden_projection; the reference keeps the Talker's positions sequential."""
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
        _get_feat_extract_output_lengths,
    )

    reference, talker, config = models
    generator = torch.Generator().manual_seed(13)
    mel_frames = 100
    tokens = int(_get_feat_extract_output_lengths(torch.tensor(mel_frames)))
    features = torch.randn(1, config.thinker.audio.num_mel_bins, mel_frames, generator=generator)
    body = [AUDIO_START] + [AUDIO] * tokens + [AUDIO_END] + _text(generator, 3)
    ids = _turn(USER, body) + [IM_START, ASSISTANT, NEWLINE]
    _compare(reference, talker, config, torch.tensor([ids]), talker_tokens=10, input_features=features,
             feature_attention_mask=torch.ones(1, mel_frames, dtype=torch.long))


@pytest.mark.slow
def test_codec_eos_ends_the_reply_as_in_reference(models):
    """A Talker whose eos logit tracks a common code stops early; both stop at the same frame."""
    reference, talker, config = models
    generator = torch.Generator().manual_seed(10)
    ids = _turn(USER, _text(generator, 6)) + [IM_START, ASSISTANT, NEWLINE]
    input_ids = torch.tensor([ids])
    _, free_run = _run_reference(reference, input_ids, 5, 14, 1.0)
    eos = config.talker.codec_eos_id
    common = int(free_run[3, 0])
    saved_ref = reference.talker.codec_head.weight[eos].clone()
    saved = talker.codec_head.weight[eos].clone()
    try:
        with torch.no_grad():
            reference.talker.codec_head.weight[eos] = 1.5 * reference.talker.codec_head.weight[common]
            talker.codec_head.weight[eos] = 1.5 * talker.codec_head.weight[common]
        frames = _compare(reference, talker, config, input_ids, talker_tokens=14)
    finally:
        with torch.no_grad():
            reference.talker.codec_head.weight[eos] = saved_ref
            talker.codec_head.weight[eos] = saved
    assert frames.shape[0] < 13  # ended by eos, not by max_new_tokens
    assert common not in frames[:, 0].tolist()


# ---------------------------------------------------------------------------------------------------
# Pieces


def test_talker_positions_follow_reference_rope_index(models):
    reference, _, config = models
    tokens = [IM_START, USER, NEWLINE, VISION_START] + [IMAGE] * 6 + [VISION_END, 5, 6, IM_END, NEWLINE]
    tokens += [config.talker.token_ids.tts_pad] * 9
    ids = torch.tensor(tokens)
    grid = torch.tensor([[1, 4, 6]])
    expected, delta = reference.talker.get_rope_index(ids[None], image_grid_thw=grid,
                                                      attention_mask=torch.ones(1, len(tokens), dtype=torch.long))
    got = talker_positions(ids, config.talker, image_grid_thw=grid)
    assert torch.equal(got, expected[:, 0].long())
    assert int(got.max()) + 1 - len(tokens) == int(delta)
    assert torch.equal(talker_positions(ids, config.talker), torch.arange(len(tokens)).expand(3, -1))


def test_talker_video_positions_keep_fractional_times(models):
    reference, _, config = models
    tokens = [IM_START, USER, NEWLINE, VISION_START] + [151656] * 8 + [VISION_END, 5, IM_END, NEWLINE]
    tokens += [config.talker.token_ids.tts_pad] * 9
    ids = torch.tensor(tokens)
    grid, seconds = torch.tensor([[2, 4, 4]]), torch.tensor([0.5])
    expected, _ = reference.talker.get_rope_index(ids[None], video_grid_thw=grid, second_per_grids=seconds,
                                                  attention_mask=torch.ones(1, len(tokens), dtype=torch.long))
    got = talker_positions(ids, config.talker, video_grid_thw=grid, video_second_per_grid=seconds)
    assert got.dtype == torch.float32 and 4 + 6.5 in got[0].tolist()  # frame 1 at 0.5 s x 13 per second
    assert torch.equal(got, expected[:, 0])


def test_audio_with_images_is_refused_like_the_reference(models):
    """The reference Talker's rope index reads `config.audio_config`, which its config lacks."""
    from omni.errors import InputError

    reference, _, config = models
    tokens = [VISION_START, IMAGE, VISION_END, AUDIO_START, AUDIO, AUDIO_END, 5]
    ids = torch.tensor(tokens)
    grid = torch.tensor([[1, 2, 2]])
    with pytest.raises(AttributeError, match="audio_config"):
        reference.talker.get_rope_index(ids[None], image_grid_thw=grid, audio_seqlens=torch.tensor([4]),
                                        attention_mask=torch.ones(1, len(tokens), dtype=torch.long))
    with pytest.raises(InputError, match="audio"):
        talker_positions(ids, config.talker, image_grid_thw=grid)


def test_unknown_voice_is_refused(models):
    from omni.errors import InputError

    reference, talker, _ = models
    with pytest.raises(InputError, match="chelsie"):
        TalkerStream(talker, reference.thinker.get_input_embeddings(), TalkerOptions(speaker="nobody"))


@pytest.mark.slow
def test_omni_thinker_feeds_the_talker_as_it_generates(models):
    """The integration: omni's Thinker generates greedily and hands the Talker its first token's
    embedding, the prompt's hidden state `accept_hidden_layer`, then each fed token's embedding; the
    Talker interleaves frames with the Thinker's steps. Text and codes equal the reference's."""
    from omni.qwen3.thinker import Thinker

    reference, talker, config = models
    thinker = Thinker(config.thinker, encoders=False).eval()
    state = {name: tensor for name, tensor in reference.thinker.state_dict().items()
             if "audio_tower" not in name and "visual" not in name}
    assert load_weights(thinker, state.items()).ok
    generator = torch.Generator().manual_seed(14)
    ids = _turn(USER, _text(generator, 7)) + [IM_START, ASSISTANT, NEWLINE]
    input_ids = torch.tensor([ids])
    thinker_tokens, talker_tokens = 5, 12
    thinker_result, expected = _run_reference(reference, input_ids, thinker_tokens, talker_tokens, 1.0)

    length = input_ids.shape[1]
    stream = TalkerStream(talker, thinker.embed, TalkerOptions.greedy(max_new_tokens=talker_tokens))
    cache = thinker.new_cache(1, length + thinker_tokens)
    frames, generated = [], []
    with torch.inference_mode():
        prompt_embeds = thinker.embed(input_ids)
        hidden, accepted = thinker(prompt_embeds, torch.arange(length).expand(3, 1, -1), cache=cache,
                                   hidden_states_of_layer=config.talker.accept_hidden_layer)
        token = int(thinker.logits(hidden[:, -1]).argmax())
        generated.append(token)
        token_embed = thinker.embed(torch.tensor([[token]]))
        stream.start(TalkerPrompt(input_ids=input_ids[0], thinker_embeds=torch.cat((prompt_embeds, token_embed), 1)[0],
                                  thinker_hidden=accepted[0]))
        while len(generated) < thinker_tokens and token != IM_END:
            if len(generated) > 1:
                stream.push_text(token_embed[0])  # a token fed back after the first (start() took that one)
            while (frame := stream.step()) is not None:  # the Talker catches up with the text so far
                frames.append(frame)
            assert len(frames) == len(generated)  # frame k waits for text entry k - 1 = generated token k
            position = torch.full((3, 1, 1), length + len(generated) - 1)
            hidden = thinker(token_embed, position, cache=cache)
            token = int(thinker.logits(hidden[:, -1]).argmax())
            generated.append(token)
            token_embed = thinker.embed(torch.tensor([[token]]))
        stream.finish_text()
        while (frame := stream.step()) is not None:
            frames.append(frame)
    assert generated == thinker_result.sequences[0, length:].tolist()
    assert torch.equal(torch.stack(frames), expected)


def test_sampled_reply_is_seeded_and_never_emits_suppressed_codes(models):
    """Sampling (the reference's defaults: temperature 0.9, top-k 50, penalty 1.05; the code predictor
    top-k 50, top-p 0.8): the same seeds give the same frames, other seeds others, and group 0 never
    takes the suppressed codec specials (the last 1024 ids but eos)."""
    from dataclasses import replace

    reference, talker, config = models
    generator = torch.Generator().manual_seed(15)
    ids = torch.tensor(_turn(USER, _text(generator, 5)) + [IM_START, ASSISTANT, NEWLINE])
    thinker_embeds = torch.randn(ids.shape[0] + 1, config.talker.thinker_hidden_size, generator=generator)

    def run(seed: int) -> torch.Tensor:
        options = TalkerOptions(max_new_tokens=20)
        options = replace(options, sampling=replace(options.sampling, seed=seed),
                          code_predictor_sampling=replace(options.code_predictor_sampling, seed=seed + 1))
        stream = TalkerStream(talker, reference.thinker.get_input_embeddings(), options)
        stream.start(TalkerPrompt(input_ids=ids, thinker_embeds=thinker_embeds))
        stream.finish_text()
        while stream.step() is not None:
            pass
        return torch.stack(stream.frames)

    first, again, other = run(1), run(1), run(2)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    vocab = config.talker.text.vocab_size
    for frames in (first, other):
        group0 = frames[:, 0]
        assert bool(((group0 < vocab - 1024) | (group0 == config.talker.codec_eos_id)).all())
        assert bool((frames[:, 1:] < config.talker.code_predictor.vocab_size).all())
