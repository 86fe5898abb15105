"""Qwen3-Omni speech generation as an explicit streaming state: one Talker prefill, then one frame of
`num_code_groups` codec tokens per step, fed by the Thinker's text as it is generated.

The reference (`Qwen3OmniMoeForConditionalGeneration.generate`) runs the Talker after the Thinker has
finished. Its Talker input is:

- the user turns of the conversation (every token whose turn opens with `<|im_start|>user`; system and
  assistant turns are dropped): at audio/image/video placeholders `hidden_projection` of the Thinker's
  hidden state at `accept_hidden_layer`, elsewhere `text_projection` of the Thinker's input embedding;
- the assistant part, 9 positions: text side `<|im_start|>assistant\\n`, 4 x tts_pad, tts_bos and the
  first generated text token (all through `text_projection`); codec side zeros on the first 3, then
  nothink, think_bos, think_eos, the speaker, pad, bos;
- then per decode step j: the sum of the embeddings of the previous frame's codes (group 0 by the
  Talker's table, groups 1.. by the code predictor's) plus trailing text entry j: generated token j + 1,
  tts_eos after the last, tts_pad from then on.

Step j reads text entry j only, so the Talker can run as soon as the Thinker has fed token j + 1: this
state waits (`step()` returns None) when it has not, and the codes are those of the reference run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from omni.errors import InputError
from omni.kv_cache import KVCache
from omni.qwen3.config import TalkerConfig
from omni.qwen3.rope_index import rope_index
from omni.sampling import Sampler, SamplingParams
from omni.talker.qwen3.talker import Talker

# Qwen3OmniMoeForConditionalGeneration.generate's talker defaults.
DEFAULT_TALKER_SAMPLING = SamplingParams(do_sample=True, temperature=0.9, top_k=50, top_p=1.0,
                                         repetition_penalty=1.05)
# What the reference's Talker passes to the code predictor's generate when it samples (its own generation
# config leaves temperature at 1 and applies no repetition penalty). It samples iff the Talker samples.
DEFAULT_CODE_PREDICTOR_SAMPLING = SamplingParams(do_sample=True, top_k=50, top_p=0.8)
ASSISTANT_PREFIX_TOKENS = 3  # <|im_start|> assistant \n
TTS_PAD_SLOTS = 4  # tts_pad positions between the assistant prefix and tts_bos


@dataclass(frozen=True)
class TalkerOptions:
    speaker: str = "ethan"
    sampling: SamplingParams = DEFAULT_TALKER_SAMPLING
    code_predictor_sampling: SamplingParams = DEFAULT_CODE_PREDICTOR_SAMPLING
    # The reference's talker_max_new_tokens: group-0 tokens, the last of which gets no residual codes,
    # so at most max_new_tokens - 1 frames.
    max_new_tokens: int = 4096

    @classmethod
    def greedy(cls, speaker: str = "ethan", repetition_penalty: float = 1.0, max_new_tokens: int = 4096
               ) -> TalkerOptions:
        """Deterministic decoding (the reference with talker_do_sample=False)."""
        return cls(speaker=speaker, sampling=SamplingParams(repetition_penalty=repetition_penalty),
                   code_predictor_sampling=SamplingParams(), max_new_tokens=max_new_tokens)


@dataclass(frozen=True)
class TalkerPrompt:
    """What the Thinker side hands over once it has produced its first text token.

    input_ids (L,): the conversation prompt, ending with `<|im_start|>assistant\\n`.
    thinker_embeds (L + 1, thinker_hidden): the Thinker's input embeddings (its layer-0 input, media
    features in place) of the prompt and of the first generated token.
    thinker_hidden (L, thinker_hidden) or None: the Thinker's hidden state `accept_hidden_layer` over the
    prompt, as transformers records it (0: the embeddings, k: the output of decoder layer k - 1, before
    any deepstack addition; the last: after the final norm). Only media positions are read; None when the
    prompt has none.
    image_grid_thw (images, 3), video_grid_thw (videos, 3), video_second_per_grid (videos,): media
    geometry in prompt order, for the Talker's 3-D positions (audio needs none: see `talker_positions`).
    """

    input_ids: torch.Tensor
    thinker_embeds: torch.Tensor
    thinker_hidden: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    video_second_per_grid: torch.Tensor | None = None


@dataclass
class TalkerState:
    cache: KVCache
    predictor_cache: KVCache
    predictor_positions: torch.Tensor
    sampler: Sampler
    predictor_sample: Callable[[torch.Tensor], torch.Tensor]
    next_position: float  # fractional after a video whose times are (the reference keeps them)
    code0: int | None  # group-0 code sampled, its residual codes not yet predicted
    last_hidden: torch.Tensor  # (1, hidden): the Talker's final hidden state that produced `code0`
    tts_eos: torch.Tensor  # (hidden,) projected text entries read once the Thinker's text has run out
    tts_pad: torch.Tensor
    codec_input: torch.Tensor | None = None  # (1, 1, hidden): the last frame's summed code embeddings
    text: deque = field(default_factory=deque)  # (hidden,) projected trailing text entries not yet read
    text_finished: bool = False
    text_eos_fed: bool = False
    group0_tokens: int = 1  # group-0 tokens sampled (the prefill samples the first)
    frames: list = field(default_factory=list)
    finished: bool = False


class TalkerStream:
    """One spoken reply. `start()` prefills; `push_text()` / `finish_text()` feed what the Thinker
    generated; `step()` returns the next frame of codes (num_code_groups,), or None while it waits for
    text or once the reply has ended (`finished`)."""

    def __init__(self, talker: Talker, thinker_embed: Callable[[torch.Tensor], torch.Tensor],
                 options: TalkerOptions = TalkerOptions()) -> None:
        self.talker = talker
        self.config: TalkerConfig = talker.config
        self.thinker_embed = thinker_embed  # the Thinker's embed_tokens: ids (batch, n) -> (batch, n, width)
        self.options = options
        self.speaker_id = speaker_codec_id(self.config, options.speaker)
        vocab = self.config.text.vocab_size
        # The reference suppresses the last 1024 ids of the codec vocabulary (special tokens) but eos.
        forbidden = torch.zeros(vocab, dtype=torch.bool)
        forbidden[max(vocab - 1024, 0):] = True
        forbidden[self.config.codec_eos_id] = False
        self.forbidden = forbidden.to(talker.device)
        self.state: TalkerState | None = None

    # -- state ------------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self.state is not None

    @property
    def finished(self) -> bool:
        return self.state is not None and self.state.finished

    @property
    def frames(self) -> list[torch.Tensor]:
        return self.state.frames if self.state is not None else []

    def reset(self) -> None:
        """Drop the reply (its caches go with it); `start()` begins the next one."""
        self.state = None

    # -- feeding ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def push_text(self, thinker_embeds: torch.Tensor) -> None:
        """The Thinker's input embeddings (n, width) of the tokens it fed back after the first (a token
        the Thinker never feeds, its end-of-turn token, is not text to speak)."""
        state = self._started()
        talker = self.talker
        rows = thinker_embeds.reshape(-1, thinker_embeds.shape[-1]).to(talker.device, talker.dtype)
        state.text.extend(talker.text_projection(rows).unbind(0))

    def finish_text(self) -> None:
        """The Thinker has stopped: after the queued text come tts_eos once, then tts_pad."""
        self._started().text_finished = True

    def _started(self) -> TalkerState:
        if self.state is None:
            raise InputError("the Talker has no reply under way: call start() once the Thinker has its first token")
        return self.state

    # -- decoding ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def start(self, prompt: TalkerPrompt) -> None:
        talker, config, device, dtype = self.talker, self.config, self.talker.device, self.talker.dtype
        ids = config.token_ids
        input_ids = prompt.input_ids.reshape(-1).to(device)
        length = input_ids.shape[0]
        thinker_embeds = prompt.thinker_embeds.reshape(-1, prompt.thinker_embeds.shape[-1]).to(device, dtype)
        if thinker_embeds.shape[0] != length + 1:
            raise InputError(f"thinker_embeds has {thinker_embeds.shape[0]} rows; the Talker needs the prompt's "
                             f"{length} and the first generated token's")
        user_mask = user_turn_mask(input_ids, config)
        media_mask = (input_ids == ids.audio) | (input_ids == ids.image) | (input_ids == ids.video)
        # Projected over the whole prompt, then the user turns picked, as the reference does it.
        prompt_part = torch.empty((length, config.text.hidden_size), dtype=dtype, device=device)
        if bool(media_mask.any()):
            if prompt.thinker_hidden is None:
                raise InputError("the prompt has media placeholders; the Talker needs the Thinker's hidden state "
                                 f"{config.accept_hidden_layer} over it (TalkerPrompt.thinker_hidden)")
            hidden = prompt.thinker_hidden.reshape(length, -1).to(device, dtype)
            prompt_part[media_mask] = talker.hidden_projection(hidden[media_mask])
        prompt_part[~media_mask] = talker.text_projection(thinker_embeds[:length][~media_mask])
        user_part = prompt_part[user_mask]

        assistant_start = last_assistant_start(input_ids, config)
        assistant_text = talker.text_projection(thinker_embeds[assistant_start:])
        specials = torch.tensor([[ids.tts_bos, ids.tts_eos, ids.tts_pad]], device=device)
        tts_bos, tts_eos, tts_pad = talker.text_projection(self.thinker_embed(specials).to(dtype))[0].unbind(0)
        prefix = ASSISTANT_PREFIX_TOKENS
        text_side = torch.cat((assistant_text[:prefix], tts_pad.expand(TTS_PAD_SLOTS, -1), tts_bos[None],
                               assistant_text[prefix : prefix + 1]))
        codec_ids = torch.tensor([config.codec_nothink_id, config.codec_think_bos_id, config.codec_think_eos_id,
                                  self.speaker_id, config.codec_pad_id, config.codec_bos_id], device=device)
        codec_side = torch.cat((torch.zeros((prefix, text_side.shape[1]), dtype=dtype, device=device),
                                talker.embed_codes(codec_ids)))
        embeds = torch.cat((user_part, text_side + codec_side))[None]

        talker_ids = torch.cat((input_ids[user_mask],
                                torch.full((text_side.shape[0],), ids.tts_pad, dtype=torch.long, device=device)))
        positions = talker_positions(talker_ids, config, prompt.image_grid_thw, prompt.video_grid_thw,
                                     prompt.video_second_per_grid).to(device)
        total = embeds.shape[1]
        cache = talker.new_cache(1, total + min(self.options.max_new_tokens, 512))  # grows by doubling
        hidden = talker(embeds, positions[:, None, :], cache=cache)
        sampler = Sampler(self.options.sampling, 1, config.text.vocab_size, device, self.forbidden)
        predictor_params = self.options.code_predictor_sampling
        if not self.options.sampling.do_sample:
            predictor_params = replace(predictor_params, do_sample=False)  # the reference mirrors do_sample
        predictor_sampler = Sampler(predictor_params, 1, config.code_predictor.vocab_size, device)
        predictor = talker.code_predictor
        self.state = TalkerState(
            cache=cache,
            predictor_cache=predictor.new_cache(1),
            predictor_positions=predictor.new_positions(1),
            sampler=sampler,
            predictor_sample=predictor_sampler,
            next_position=float(positions.max()) + 1,
            code0=None,
            last_hidden=hidden[:, -1],
            tts_eos=tts_eos,
            tts_pad=tts_pad,
        )
        # Prompt tokens after the first text position (none for a prompt ending in the assistant prefix)
        # are trailing text too.
        self.state.text.extend(assistant_text[prefix + 1 :].unbind(0))
        self.state.code0 = self._sample(talker.codec_logits(hidden[:, -1]))

    def can_step(self) -> bool:
        state = self.state
        if state is None or state.finished:
            return False
        return state.code0 is not None or bool(state.text) or state.text_finished

    @torch.inference_mode()
    def step(self) -> torch.Tensor | None:
        """The next frame (num_code_groups,) of codec ids; None while the next text entry has not arrived,
        or once the reply ended (codec eos, or max_new_tokens)."""
        state = self.state
        if state is None or state.finished:
            return None
        talker = self.talker
        if state.code0 is None:
            text = self._next_text()
            if text is None:
                return None
            embeds = state.codec_input + text
            positions = torch.full((3, 1, 1), state.next_position, dtype=torch.float32, device=talker.device)
            hidden = talker(embeds, positions, cache=state.cache)
            state.next_position += 1
            state.group0_tokens += 1
            state.last_hidden = hidden[:, -1]
            state.code0 = self._sample(talker.codec_logits(hidden[:, -1]))
        code0 = state.code0
        if code0 == self.config.codec_eos_id or state.group0_tokens >= self.options.max_new_tokens:
            # The reference predicts no residual codes for the eos token, nor for the last token it samples.
            state.finished = True
            return None
        code0_tensor = torch.tensor([[code0]], device=talker.device)
        code0_embed = talker.embed_codes(code0_tensor)[:, 0]
        residual, codec_input = talker.code_predictor.predict(
            state.last_hidden, code0_embed, state.predictor_cache, state.predictor_positions, state.predictor_sample)
        state.codec_input = codec_input[:, None]
        state.code0 = None
        frame = torch.cat((code0_tensor[0], residual[0]))
        state.frames.append(frame)
        return frame

    def _sample(self, logits: torch.Tensor) -> int:
        sampled = self.state.sampler(logits)
        self.state.sampler.observe(sampled.view(1, 1))  # the repetition penalty sees group-0 tokens only
        return int(sampled[0])

    def _next_text(self) -> torch.Tensor | None:
        state = self.state
        if state.text:
            return state.text.popleft().view(1, 1, -1)
        if not state.text_finished:
            return None
        entry = state.tts_pad if state.text_eos_fed else state.tts_eos
        state.text_eos_fed = True
        return entry.view(1, 1, -1)


def speaker_codec_id(config: TalkerConfig, speaker: str) -> int:
    try:
        return config.speaker_ids[speaker.lower()]
    except KeyError:
        voices = ", ".join(config.voices) or "none"
        raise InputError(f"unknown voice {speaker!r}; this checkpoint has {voices}") from None


def user_turn_mask(input_ids: torch.Tensor, config: TalkerConfig) -> torch.Tensor:
    """(L,) bool: tokens of turns opened by `<|im_start|>user` (the turn's own im_start included). Tokens
    before the first im_start count by the token at index 1, as the reference reads them."""
    ids = config.token_ids
    length = input_ids.shape[0]
    index = torch.arange(length, device=input_ids.device)
    turn_start = torch.where(input_ids == ids.im_start, index, torch.full_like(index, -1))
    turn_start = torch.cummax(turn_start, dim=0).values.clamp_min(0)
    role = input_ids[(turn_start + 1).clamp_max(length - 1)]
    return role == ids.user


def last_assistant_start(input_ids: torch.Tensor, config: TalkerConfig) -> int:
    ids = config.token_ids
    starts = torch.nonzero((input_ids[:-1] == ids.im_start) & (input_ids[1:] == ids.assistant)).flatten()
    if starts.numel() == 0:
        raise InputError("the prompt has no '<|im_start|>assistant' turn; the Talker speaks the assistant's reply")
    return int(starts[-1])


def talker_positions(talker_ids: torch.Tensor, config: TalkerConfig, image_grid_thw: torch.Tensor | None = None,
                     video_grid_thw: torch.Tensor | None = None,
                     video_second_per_grid: torch.Tensor | None = None) -> torch.Tensor:
    """(3, Lt) positions of the Talker's prompt (user turns + assistant part).

    The reference runs its rope index over the Talker's ids only when images or videos are present, with
    the Talker's own spatial_merge_size and position_id_per_seconds; otherwise (text, audio) positions
    are 0 .. Lt-1 on all three axes. Audio placeholders in the vision path would need the audio tower's
    window, which the reference's Talker config lacks (it raises), so that mix is refused here too.
    Positions are float32 when a video's times are fractional (the reference keeps them so), else long.
    """
    length = talker_ids.shape[0]
    has_vision = any(grid is not None and grid.numel() > 0 for grid in (image_grid_thw, video_grid_thw))
    if not has_vision:
        return torch.arange(length).expand(3, -1).clone()
    if bool((talker_ids == config.token_ids.audio_start).any()):
        raise InputError("the reference Talker cannot place audio together with images or videos (its rope index "
                         "reads an audio config it lacks); send them in separate turns")
    positions, _ = rope_index(talker_ids.view(1, -1).cpu(), config.token_ids, image_grid_thw=image_grid_thw,
                              video_grid_thw=video_grid_thw, video_second_per_grid=video_second_per_grid,
                              spatial_merge_size=config.spatial_merge_size,
                              position_id_per_seconds=config.position_id_per_seconds)
    positions = positions[:, 0]
    if bool((positions == positions.round()).all()):
        return positions.long()
    return positions
