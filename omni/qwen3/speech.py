"""The speech stages of a Qwen3-Omni reply: its Talker stream (one frame of 16 codec codes per step) and
the exact streaming Code2Wav, fed one Thinker step at a time by the pipeline or the engine.

The same interface as Qwen2.5-Omni's `omni.speech.SpeechStages`, so `ReplyRun`, `run_reply` and the
engine drive either family; what differs is inside:
- the Talker reads the whole conversation's user turns again on every reply (it keeps no cache across
  turns, as the reference re-reads them), so the stages keep a `Qwen3TalkerContext` of everything the
  Thinker consumed: token ids, input embeddings and, for media positions, the hidden state of layer
  `accept_hidden_layer`;
- after the Talker's prefill (the prompt and the first reply token), each step reads one more reply
  token, so speech starts once the Thinker has fed its first token back (its second step);
- a "code" handed between Talker and codec is one frame (16 codes, 80 ms); Code2Wav is causal, so
  every frame's audio is final as soon as it is decoded: no windows, no crossfade.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from omni.errors import AudioOutputUnavailable, UnknownVoiceError
from omni.events import AudioChunk
from omni.sampling import SamplingParams
from omni.talker.qwen3.code2wav_streaming import Code2WavStream
from omni.talker.qwen3.talker_stream import (
    DEFAULT_CODE_PREDICTOR_SAMPLING,
    DEFAULT_TALKER_SAMPLING,
    TalkerOptions,
    TalkerPrompt,
    TalkerStream,
)
from omni.thinker.generate import ThinkerPrompt, ThinkerStep

SAMPLE_RATE_HZ = 24000
DEFAULT_VOICE = "Ethan"  # the reference generate()'s default speaker
# One Talker step reads one text token and makes one 80 ms frame; 15 codes of Qwen2.5's 50 Hz codec per
# text token (omni.pipeline.CODEC_TOKENS_PER_TEXT_TOKEN, measured on espeak-ng speech) is 0.3 s of
# speech per text token, 3.75 frames.
FRAMES_PER_TEXT_TOKEN = 3.75
# Code2Wav decodes the first frame alone (56.9 ms of audio as soon as it exists), then groups of frames:
# a call's cost is mostly fixed (every codec weight is read once per call: at the published width one
# frame alone takes about as long as several together on a CPU), so later audio goes out 320 ms at a time.
FIRST_CHUNK_FRAMES = 1
FRAMES_PER_CHUNK = 4


@dataclass
class Qwen3TalkerContext:
    """The conversation as the Qwen3 Talker reads it: per token the Thinker consumed, its id, input
    embedding and (media positions only; zeros elsewhere) hidden state of `accept_hidden_layer`, plus the
    geometry of the images and videos in it (their Talker positions need it)."""

    input_ids: torch.Tensor  # (L,)
    embeds: torch.Tensor  # (L, thinker width)
    hidden: torch.Tensor  # (L, thinker width)
    image_grid_thw: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    video_second_per_grid: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    def prefix(self, length: int) -> Qwen3TalkerContext:
        """The first `length` tokens (a barge-in or a prefix-cache hit keeps only these). Media are never
        cut in two (the callers move cuts to item starts), so the geometry of the items kept stays."""
        return Qwen3TalkerContext(self.input_ids[:length].clone(), self.embeds[:length].clone(),
                                  self.hidden[:length].clone(), self.image_grid_thw, self.video_grid_thw,
                                  self.video_second_per_grid)

    @staticmethod
    def join(parts: list[Qwen3TalkerContext]) -> Qwen3TalkerContext:
        def cat(name):
            pieces = [getattr(p, name) for p in parts if getattr(p, name) is not None]
            return torch.cat(pieces) if pieces else None

        return Qwen3TalkerContext(cat("input_ids"), cat("embeds"), cat("hidden"), cat("image_grid_thw"),
                                  cat("video_grid_thw"), cat("video_second_per_grid"))


def resolve_qwen3_voice(loaded, voice: str | None) -> str:
    if not loaded.audio_output:
        raise AudioOutputUnavailable(
            "audio was requested but this model was loaded without speech output (no talker/code2wav weights, "
            "or audio_output=False); ask for text only"
        )
    if voice is None:
        return DEFAULT_VOICE if DEFAULT_VOICE in loaded.voices else loaded.voices[0]
    for name in loaded.voices:
        if name.lower() == voice.lower():  # the reference looks voices up case-insensitively
            return name
    raise UnknownVoiceError(f"unknown voice {voice!r}; available voices: {', '.join(loaded.voices)}")


class Qwen3SpeechStages:
    """With `voice=None` the stages only remember the turn for the Talker of a later spoken turn."""

    batched_talker = False  # the engine steps this Talker reply by reply (no batched Qwen3 Talker step yet)

    def __init__(self, loaded, options, history: Qwen3TalkerContext | None, clock, started_at: float,
                 voice: str | None) -> None:
        from omni.speech import SpeechProgress  # shared record of what was handed out

        model = loaded.model
        self.loaded = loaded
        self.speaks = voice is not None
        self.options = options
        self.history = history
        self.clock = clock
        self.started_at = started_at
        self.voice_name = voice
        self.sample_rate_hz = SAMPLE_RATE_HZ
        self.code2wav = model.code2wav if loaded.audio_output else None
        self.samples_per_code = self.code2wav.samples_per_frame if self.code2wav is not None else 1920
        self.codes_per_text_token = FRAMES_PER_TEXT_TOKEN
        self.talker = None
        if self.speaks:
            self.talker = TalkerStream(model.talker, model.thinker.embed, _talker_options(options, voice))
        self.codec: Code2WavStream | None = None
        self.prompt_context: Qwen3TalkerContext | None = None
        self._reply_ids: list[int] = []  # reply tokens fed back to the Thinker, in order
        self._reply_embeds: list[torch.Tensor] = []  # their input embeddings, (width,) each
        self._last_sampled: int | None = None
        self._text_finished = False
        self.frames: list[torch.Tensor] = []
        self._undecoded: list[torch.Tensor] = []  # frames waiting for the codec's next call
        self.progress = SpeechProgress()

    # -- Thinker side --------------------------------------------------------------------------

    def on_thinker_step(self, step: ThinkerStep, prompt: ThinkerPrompt) -> None:
        if step.index == 0:
            embeds = step.input_embeds[0]
            hidden = step.layer_hidden[0] if step.layer_hidden is not None else torch.zeros_like(embeds)
            self.prompt_context = Qwen3TalkerContext(
                prompt.input_ids[0].to(embeds.device), embeds, hidden, prompt.image_grid_thw,
                prompt.video_grid_thw, prompt.video_second_per_grid)
        else:
            embed = step.input_embeds[0, -1]
            self._reply_ids.append(self._last_sampled)
            self._reply_embeds.append(embed)
            if self.speaks and self.talker.started:
                self.talker.push_text(embed[None])
        self._last_sampled = int(step.token_ids[0])

    def can_start_talker(self) -> bool:
        """The prefill can run: the first reply token has been fed back and the Talker has not started."""
        return self.speaks and not self.talker.started and bool(self._reply_embeds)

    def start_talker_code(self) -> torch.Tensor | None:
        """The Talker's prefill and its first frame (None: the utterance ended at once)."""
        began = time.perf_counter()
        context = self._conversation()
        self.talker.start(TalkerPrompt(
            input_ids=context.input_ids,
            thinker_embeds=torch.cat((context.embeds, self._reply_embeds[0][None])),
            thinker_hidden=context.hidden,
            image_grid_thw=context.image_grid_thw,
            video_grid_thw=context.video_grid_thw,
            video_second_per_grid=context.video_second_per_grid,
        ))
        if len(self._reply_embeds) > 1:
            self.talker.push_text(torch.stack(self._reply_embeds[1:]))
        if self._text_finished:
            self.talker.finish_text()
        frame = self.talker.step()
        self.clock.add("talker", time.perf_counter() - began)
        return self._kept(frame)

    def start_talker(self) -> list[AudioChunk]:
        frame = self.start_talker_code()
        return self.codes_out([frame]) if frame is not None else []

    def can_step_talker(self) -> bool:
        return self.speaks and self.talker.can_step()

    def step_talker(self) -> torch.Tensor | None:
        """One Talker step alone (the engine calls this reply by reply): its frame, or None."""
        if self._past_bound():
            self.talker.state.finished = True
            return None
        began = time.perf_counter()
        frame = self.talker.step()
        self.clock.add("talker", time.perf_counter() - began)
        return self._kept(frame)

    def advance(self) -> list[AudioChunk]:
        chunks = self.start_talker() if self.can_start_talker() else []
        frames = []
        while self.can_step_talker():
            frame = self.step_talker()
            if frame is not None:
                frames.append(frame)
        return chunks + self.codes_out(frames)

    def finish_text(self) -> None:
        self._text_finished = True
        if self.speaks and self.talker.started:
            self.talker.finish_text()

    def context_after(self, fed_tokens: int) -> Qwen3TalkerContext | None:
        """The conversation including this turn's prompt and its first `fed_tokens` reply tokens: the next
        turn's history."""
        if self.prompt_context is None:
            return self.history
        parts = [p for p in (self.history, self.prompt_context) if p is not None]
        if fed_tokens:
            embeds = torch.stack(self._reply_embeds[:fed_tokens])
            ids = torch.tensor(self._reply_ids[:fed_tokens], dtype=torch.long, device=embeds.device)
            parts.append(Qwen3TalkerContext(ids, embeds, torch.zeros_like(embeds)))
        return Qwen3TalkerContext.join(parts)

    def _past_bound(self) -> bool:
        """The safety bound of omni.talker.generate.TalkerOptions, in frames: once the text is complete, a
        Talker still talking past `codes_per_text_token` codes (at 50 Hz) per text token plus `extra_codes`
        cannot be saying the text (a random or damaged model that never says codec eos). None: no bound,
        as the reference."""
        per_token = self.options.talker.codes_per_text_token
        if per_token is None or not self._text_finished:
            return False
        frames_per_code = 12.5 / 50.0
        limit = (len(self._reply_ids) + 1) * per_token * frames_per_code + self.options.talker.extra_codes * frames_per_code
        return len(self.frames) >= limit

    def _conversation(self) -> Qwen3TalkerContext:
        if self.history is None:
            return self.prompt_context
        return Qwen3TalkerContext.join([self.history, self.prompt_context])

    def _kept(self, frame: torch.Tensor | None) -> torch.Tensor | None:
        if frame is not None:
            self.frames.append(frame)
        return frame

    # -- Talker and codec ------------------------------------------------------------------------

    def drain(self, cancelled) -> Iterator[AudioChunk]:
        if self.can_start_talker():
            yield from self.start_talker()
        if not self.speaks or not self.talker.started:
            return
        while not self.talker.finished:
            if cancelled():
                return
            frame = self.step_talker()
            if frame is not None:
                yield from self.codes_out([frame])
            elif not self.talker.can_step():
                break
        if cancelled():
            return
        yield from self.flush_codec()

    @property
    def talking(self) -> bool:
        return self.can_start_talker() or (self.speaks and self.talker.started and not self.talker.finished)

    @property
    def speech_complete(self) -> bool:
        """The Talker ended the utterance itself (codec eos after the whole text)."""
        state = self.talker.state if self.talker is not None else None
        return state is not None and state.finished and state.text_finished and state.code0 == self.talker.config.codec_eos_id

    @property
    def codec_tokens(self) -> list[tuple[int, ...]]:
        """The utterance's frames, each the 16 codes of one 80 ms frame."""
        return [tuple(int(c) for c in frame.tolist()) for frame in self.frames]

    def flush_codec(self) -> list[AudioChunk]:
        if not self.frames:
            return []
        began = time.perf_counter()
        if self.options.streaming:
            codec = self._ensure_codec()
            samples = [codec.step(torch.stack(self._undecoded, dim=1))] if self._undecoded else []
            self._undecoded = []
            samples.append(codec.finish())
        else:
            codes = torch.stack(self.frames, dim=1)[None].to(self.code2wav.code_embedding.weight.device)
            with torch.inference_mode():
                samples = [self.code2wav(codes)[0]]
        self.clock.add("token2wav", time.perf_counter() - began)
        return self._chunks(samples)

    def codes_out(self, frames: list[torch.Tensor]) -> list[AudioChunk]:
        """Hand new frames to the streaming codec; decode once a chunk's worth is waiting (see
        FRAMES_PER_CHUNK); the audio chunks that became ready."""
        if not frames or not self.options.streaming:
            return []
        self._undecoded.extend(frames)
        wanted = FIRST_CHUNK_FRAMES if self.progress.chunks_out == 0 else FRAMES_PER_CHUNK
        if len(self._undecoded) < wanted:
            return []
        began = time.perf_counter()
        samples = self._ensure_codec().step(torch.stack(self._undecoded, dim=1))
        self._undecoded = []
        self.clock.add("token2wav", time.perf_counter() - began)
        return self._chunks([samples])

    def _chunks(self, pieces: list[torch.Tensor]) -> list[AudioChunk]:
        out = []
        for samples in pieces:
            if samples.numel() == 0:
                continue
            if self.progress.first_audio_at is None:
                self.progress.first_audio_at = time.perf_counter() - self.started_at
            out.append(AudioChunk(samples.detach().float().cpu().numpy().astype(np.float32, copy=False),
                                  self.sample_rate_hz, self.progress.chunks_out))
            self.progress.chunks_out += 1
            self.progress.samples_out += samples.numel()
        return out

    def _ensure_codec(self) -> Code2WavStream:
        if self.codec is None:
            self.codec = Code2WavStream(self.code2wav)
        return self.codec

    @property
    def spoken_codes(self) -> int:
        """Frames whose audio has been handed out."""
        return self.progress.samples_out // self.samples_per_code

    def close(self) -> None:
        if self.talker is not None:
            self.talker.reset()
        if self.codec is not None:
            self.codec.reset()
            self.codec = None
        self._undecoded = []


def _talker_options(options, voice: str) -> TalkerOptions:
    """The reference's Talker sampling unless the session's speech options say otherwise: greedy when
    their Talker sampling is greedy (do_sample False), with its seed."""
    sampling: SamplingParams = options.talker.sampling
    if sampling.do_sample:
        talker = replace(DEFAULT_TALKER_SAMPLING, seed=sampling.seed)
        predictor = replace(DEFAULT_CODE_PREDICTOR_SAMPLING, seed=sampling.seed)
    else:
        talker = SamplingParams(repetition_penalty=sampling.repetition_penalty, seed=sampling.seed)
        predictor = SamplingParams(seed=sampling.seed)
    # max_codes counts what the codec receives (frames here); the Talker's max_new_tokens counts its group-0
    # tokens, of which the last never gets its residual codes (the reference's talker_max_new_tokens)
    return TalkerOptions(speaker=voice.lower(), sampling=talker, code_predictor_sampling=predictor,
                         max_new_tokens=options.talker.max_codes + 1)
