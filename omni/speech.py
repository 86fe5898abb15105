"""The speech stages of a reply: the Talker and the streaming Token2Wav, fed one Thinker step at a
time by the pipeline's scheduler.

`SpeechStages` owns one reply's Talker stream and codec stream. After every Thinker step the
scheduler hands it the step; it turns the step into the Talker's input (the conversation at step 0,
one reply part per fed token afterwards), runs every Talker step whose input now exists, and pushes
the new codes into the codec, returning the audio chunks that became ready. Once the text is done,
`drain()` runs the Talker to its end and flushes the codec.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from omni.errors import AudioOutputUnavailable
from omni.events import AudioChunk
from omni.loading import LoadedModel
from omni.thinker.generate import ThinkerPrompt, ThinkerStep
from omni.talker.flow import FlowOptions
from omni.talker.generate import TalkerOptions, TalkerStream
from omni.talker.streaming import ChunkSchedule, StreamingToken2Wav
from omni.talker.token2wav import select_voice

DEFAULT_VOICE = "Chelsie"  # the reference generate()'s default speaker

# Codec tokens (50 per second of speech) spoken per text token. Not yet measured on Qwen2.5-Omni's
# own replies (no real checkpoint was at hand): measured on espeak-ng reading assistant-style English
# replies at 150-170 words/min and counted with Qwen's tokenizer, 13-19 per sentence, 14.2 at 170
# wpm and 16.4 at 150 wpm. `python bench/realtime.py --measure-ratio --model DIR` measures it on a
# real checkpoint's finished spoken replies (codec_tokens / text_tokens); put that number here.
CODEC_TOKENS_PER_TEXT_TOKEN = 15.0


@dataclass(frozen=True)
class SpeechOptions:
    voice: str | None = None
    talker: TalkerOptions = TalkerOptions()
    schedule: ChunkSchedule = ChunkSchedule()
    flow: FlowOptions = FlowOptions()
    streaming: bool = True  # False: synthesise the whole utterance once its codes are complete
    seed: int | None = None  # initial noise of the codec (None: fresh noise)
    initial_noise: torch.Tensor | None = None  # (frames, mel_dim): exact noise, for reproductions


@dataclass
class TalkerContext:
    """The conversation as the Talker reads it: per token, Thinker input embedding (zero where the
    audio / vision encoders filled it) plus final hidden state, and its rope positions."""

    embeds: torch.Tensor  # (1, L, embedding_size)
    positions: torch.Tensor  # (3, 1, L)

    @staticmethod
    def join(parts: list[TalkerContext]) -> TalkerContext:
        return TalkerContext(torch.cat([p.embeds for p in parts], dim=1), torch.cat([p.positions for p in parts], dim=2))

    @property
    def length(self) -> int:
        return self.embeds.shape[1]

    def prefix(self, length: int) -> TalkerContext:
        """The first `length` tokens, copied (a barge-in or a prefix-cache hit keeps only these)."""
        return TalkerContext(self.embeds[:, :length].clone(), self.positions[:, :, :length].clone())


def speech_stages(loaded: LoadedModel, options: SpeechOptions, history, clock, started_at: float,
                  voice: str | None):
    """The speech stages of the loaded model's family (Qwen3-Omni's in omni.qwen3.speech)."""
    if loaded.family == "qwen3_omni_moe":
        from omni.qwen3.speech import Qwen3SpeechStages

        return Qwen3SpeechStages(loaded, options, history, clock, started_at, voice)
    return SpeechStages(loaded, options, history, clock, started_at, voice)


@dataclass(frozen=True)
class CodecTiming:
    """How long a "code" handed from Talker to codec lasts, per family: Qwen2.5-Omni's codec tokens are
    20 ms, Qwen3-Omni's frames (16 codes) 80 ms."""

    sample_rate_hz: int
    samples_per_code: int
    codes_per_text_token: float


def codec_timing(loaded: LoadedModel) -> CodecTiming:
    if loaded.family == "qwen3_omni_moe":
        from omni.qwen3.speech import FRAMES_PER_TEXT_TOKEN, SAMPLE_RATE_HZ

        return CodecTiming(SAMPLE_RATE_HZ, loaded.model.code2wav.samples_per_frame, FRAMES_PER_TEXT_TOKEN)
    token2wav = loaded.model.token2wav
    return CodecTiming(token2wav.sample_rate_hz, token2wav.samples_per_code, CODEC_TOKENS_PER_TEXT_TOKEN)


def resolve_voice(loaded: LoadedModel, voice: str | None) -> str:
    if loaded.family == "qwen3_omni_moe":
        from omni.qwen3.speech import resolve_qwen3_voice

        return resolve_qwen3_voice(loaded, voice)
    if not loaded.audio_output:
        raise AudioOutputUnavailable(
            "audio was requested but this model was loaded without speech output (no talker/token2wav "
            "weights or no spk_dict.pt, or audio_output=False); ask for text only"
        )
    name = voice or (DEFAULT_VOICE if DEFAULT_VOICE in loaded.voices else loaded.voices[0])
    select_voice(loaded.speakers, name)  # raises UnknownVoiceError listing the voices
    return name


@dataclass
class SpeechProgress:
    samples_out: int = 0
    chunks_out: int = 0
    first_audio_at: float | None = None
    reply_parts: list[torch.Tensor] = field(default_factory=list)  # (1, 1, H) per fed reply token


class SpeechStages:
    """With `voice=None` the stages only remember the turn for the Talker of a later spoken turn
    (a text-only reply never runs the Talker or the codec)."""

    batched_talker = True  # the engine runs this Talker's steps batched (omni.engine.runner.talker_step)

    def __init__(self, loaded: LoadedModel, options: SpeechOptions, history: TalkerContext | None,
                 clock, started_at: float, voice: str | None) -> None:
        model = loaded.model
        self.speaks = voice is not None
        self.loaded = loaded
        self.options = options
        self.history = history
        self.clock = clock
        self.started_at = started_at
        self.voice_name = voice
        self.voice_entry = select_voice(loaded.speakers, voice) if voice is not None else None
        self.token2wav = model.token2wav
        self.sample_rate_hz = self.token2wav.sample_rate_hz
        self.samples_per_code = self.token2wav.samples_per_code
        self.codes_per_text_token = CODEC_TOKENS_PER_TEXT_TOKEN
        self.talker = TalkerStream(model.talker, model.thinker.embed, options.talker,
                                   codec_vocabulary=self.token2wav.dit_config.num_embeds + 1)
        self.codec: StreamingToken2Wav | None = None
        self.prompt_context: TalkerContext | None = None
        self._before_start: list[torch.Tensor] = []  # reply parts that arrived before the Talker started
        self._text_finished = False
        self.next_position = 0
        self.progress = SpeechProgress()

    # -- Thinker side --------------------------------------------------------------------------

    def on_thinker_step(self, step: ThinkerStep, prompt: ThinkerPrompt) -> None:
        """Take what the Talker needs from a Thinker step (no model work: the Talker runs in
        `advance`, or in the engine's batched step)."""
        if step.index == 0:
            input_embeds = step.input_embeds
            if prompt.multimodal_mask is not None:
                # the reference hands the Talker zeros where the encoders' features were merged
                input_embeds = input_embeds.masked_fill(prompt.multimodal_mask.to(input_embeds.device)[..., None], 0)
            self.prompt_context = TalkerContext(input_embeds + step.hidden, prompt.position_ids.to(step.hidden.device))
            self.next_position = int(prompt.next_position[0])
            return
        reply_part = step.input_embeds[:, -1:] + step.hidden[:, -1:]
        self.progress.reply_parts.append(reply_part)
        if not self.speaks:
            return
        if self.talker.started:
            self.talker.push_reply_part(reply_part)
        else:
            self._before_start.append(reply_part)

    def can_start_talker(self) -> bool:
        """The Talker's prefill can run: the first reply part exists and it has not started."""
        return self.speaks and not self.talker.started and bool(self._before_start)

    def start_talker(self) -> list[AudioChunk]:
        """The Talker's prefill over the conversation and the first reply part; the chunks its first
        code made ready."""
        code = self.start_talker_code()
        return self.codes_out([code]) if code is not None else []

    def start_talker_code(self) -> int | None:
        """The Talker's prefill; its first code (None: it ended the utterance at once). The caller
        hands the code to the codec (`codes_out`)."""
        began = time.perf_counter()
        context = TalkerContext.join([self.history, self.prompt_context]) if self.history else self.prompt_context
        code = self.talker.start(context.embeds, context.positions, self.next_position,
                                 int(self.voice_entry["bos_token"]), self._before_start.pop(0))
        for reply_part in self._before_start:
            self.talker.push_reply_part(reply_part)
        self._before_start.clear()
        if self._text_finished:
            self.talker.finish_text()
        self.clock.add("talker", time.perf_counter() - began)
        return code

    def can_step_talker(self) -> bool:
        return self.talker.can_step()

    def advance(self) -> list[AudioChunk]:
        """Run every Talker step whose input exists (starting it if it can), alone; the audio chunks
        that became ready."""
        chunks = self.start_talker() if self.can_start_talker() else []
        return chunks + self._run_talker()

    def finish_text(self) -> None:
        self._text_finished = True
        self.talker.finish_text()

    def context_after(self, fed_tokens: int) -> TalkerContext | None:
        """The Talker's view of the conversation including this turn's prompt and its first
        `fed_tokens` reply tokens: the next turn's history."""
        if self.prompt_context is None:
            return self.history
        parts = [p for p in (self.history, self.prompt_context) if p is not None]
        if fed_tokens:
            embeds = torch.cat(self.progress.reply_parts[:fed_tokens], dim=1)
            positions = torch.arange(self.next_position, self.next_position + fed_tokens, device=embeds.device)
            parts.append(TalkerContext(embeds, positions.view(1, 1, -1).expand(3, 1, -1)))
        return TalkerContext.join(parts)

    # -- Talker and codec ------------------------------------------------------------------------

    def _run_talker(self) -> list[AudioChunk]:
        codes = []
        began = time.perf_counter()
        while self.talker.can_step():
            code = self.talker.step()
            if code is not None:
                codes.append(code)
        self.clock.add("talker", time.perf_counter() - began)
        return self.codes_out(codes)

    def drain(self, cancelled) -> Iterator[AudioChunk]:
        """After the text ended, alone: the Talker's remaining codes, then the codec's last chunks."""
        if self.can_start_talker():
            yield from self.start_talker()
        if not self.talker.started:
            return
        while not self.talker.finished:
            if cancelled():
                return
            began = time.perf_counter()
            code = self.talker.step()
            self.clock.add("talker", time.perf_counter() - began)
            if code is not None:
                yield from self.codes_out([code])
        if cancelled():
            return
        yield from self.flush_codec()

    @property
    def talking(self) -> bool:
        """The Talker has started and not finished (or is about to start)."""
        return self.can_start_talker() or (self.talker.started and not self.talker.finished)

    def flush_codec(self) -> list[AudioChunk]:
        """Once the Talker has finished: the codec's last chunks (or, not streaming, the whole utterance)."""
        if not self.talker.codes:
            return []
        began = time.perf_counter()
        if self.options.streaming:
            samples = self._ensure_codec().finish()
        else:
            codes = torch.tensor(self.talker.codes, dtype=torch.long).view(1, -1)
            samples = [self.token2wav.synthesize(codes, self._voice(), self._noise(), self.options.flow)]
        self.clock.add("token2wav", time.perf_counter() - began)
        return self._chunks(samples)

    def codes_out(self, codes: list[int]) -> list[AudioChunk]:
        """Push new codes into the streaming codec; the chunks that became ready."""
        if not codes or not self.options.streaming:
            return []
        began = time.perf_counter()
        samples = self._ensure_codec().push(codes)
        self.clock.add("token2wav", time.perf_counter() - began)
        return self._chunks(samples)

    def _chunks(self, pieces: list[torch.Tensor]) -> list[AudioChunk]:
        out = []
        for samples in pieces:
            if self.progress.first_audio_at is None:
                self.progress.first_audio_at = time.perf_counter() - self.started_at
            out.append(AudioChunk(samples.detach().cpu().numpy().astype(np.float32, copy=False),
                                  self.sample_rate_hz, self.progress.chunks_out))
            self.progress.chunks_out += 1
            self.progress.samples_out += samples.numel()
        return out

    def _voice(self):
        return self.token2wav.voice(self.voice_name, self.voice_entry)

    def _noise(self):
        return self.token2wav.noise(self.options.seed, self.options.initial_noise)

    def _ensure_codec(self) -> StreamingToken2Wav:
        if self.codec is None:
            self.codec = StreamingToken2Wav(self.token2wav, self._voice(), self._noise(), self.options.schedule,
                                            self.options.flow)
        return self.codec

    @property
    def spoken_codes(self) -> int:
        """Codec tokens whose audio has been handed out."""
        return self.progress.samples_out // self.token2wav.samples_per_code

    @property
    def speech_complete(self) -> bool:
        """The Talker stopped by itself (a stop code after the whole text), not by a cancel or close."""
        state = self.talker.state
        return state is not None and state.text_finished and state.last_code in self.talker.stop_codes

    @property
    def codec_tokens(self) -> list[int]:
        return self.talker.codes

    def close(self) -> None:
        """Free the Talker's cache and the codec's state (after the end or a cancellation)."""
        self.talker.close()
        if self.codec is not None:
            self.codec.reset()
            self.codec = None
