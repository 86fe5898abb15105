"""Token2Wav: codec tokens -> mel (DiT + flow matching) -> waveform (BigVGAN), always in fp32.

`Token2Wav` is the module tree of the checkpoint's `token2wav.*` weights plus the functions that run
it: `voice()` prepares a speaker's conditioning once, `mel()` synthesises the mel of a window of codes
from given initial noise, `vocode()` turns mel into samples, and `synthesize()` is the whole
non-streaming path (the yardstick the streaming decoder in `omni.talker.streaming` is measured against).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from omni.config import BigVGANConfig, DiTConfig
from omni.errors import InputError, UnknownVoiceError
from omni.talker.bigvgan import BigVGAN
from omni.talker.dit import DiT
from omni.talker.flow import FlowOptions, evaluation_times, guided, integrate, time_grid


MEL_FRAMES_PER_SECOND = 100  # the codec's mel rate (codes run at 50 Hz with repeats 2)


@dataclass(frozen=True)
class VoiceCondition:
    """A voice from spk_dict.pt, ready for the DiT."""

    name: str
    cond: torch.Tensor  # (1, enc_emb_dim): the voice's conditioning vector
    speaker: torch.Tensor  # (1, enc_dim): ECAPA embedding of its reference mel
    null_speaker: torch.Tensor  # (1, enc_dim): ECAPA embedding of a silent (zero) mel, the guidance branch


def select_voice(speakers: dict[str, dict] | None, name: str) -> dict:
    if not speakers:
        raise UnknownVoiceError("this checkpoint has no voices (spk_dict.pt was not loaded)")
    if name not in speakers:
        raise UnknownVoiceError(f"unknown voice {name!r}; available voices: {', '.join(sorted(speakers))}")
    return speakers[name]


class NoiseSource:
    """The initial noise of one utterance, (frames, mel_dim), drawn page by page as frames are
    needed, so that a streaming decoder and a whole-utterance decoder seeded alike start from the
    same noise at every frame."""

    page_frames = 256

    def __init__(self, mel_dim: int, seed: int | None = None, device: torch.device | str = "cpu",
                 noise: torch.Tensor | None = None) -> None:
        self.mel_dim = mel_dim
        self.generator = torch.Generator(device=device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        self.device = device
        self.noise = noise.reshape(-1, mel_dim).float().to(device) if noise is not None else torch.empty(0, mel_dim, device=device)
        self.fixed = noise is not None

    def frames(self, start: int, end: int) -> torch.Tensor:
        while self.noise.shape[0] < end:
            if self.fixed:
                raise InputError(f"the given initial noise covers {self.noise.shape[0]} mel frames, {end} are needed")
            page = torch.randn(self.page_frames, self.mel_dim, generator=self.generator, device=self.device)
            self.noise = torch.cat([self.noise, page])
        return self.noise[start:end]


class Token2Wav(nn.Module):
    def __init__(self, dit_config: DiTConfig, bigvgan_config: BigVGANConfig) -> None:
        super().__init__()
        self.code2wav_dit_model = DiT(dit_config)
        self.code2wav_bigvgan_model = BigVGAN(bigvgan_config)
        self.dit_config = dit_config
        self._voices: dict[tuple[str, int], VoiceCondition] = {}

    @property
    def device(self) -> torch.device:
        return self.code2wav_dit_model.proj_out.weight.device

    @property
    def mel_frames_per_code(self) -> int:
        return self.dit_config.repeats

    @property
    def samples_per_mel_frame(self) -> int:
        return self.code2wav_bigvgan_model.samples_per_mel_frame

    @property
    def sample_rate_hz(self) -> int:
        return self.samples_per_mel_frame * MEL_FRAMES_PER_SECOND  # 24 kHz for Qwen2.5-Omni

    @property
    def samples_per_code(self) -> int:
        return self.mel_frames_per_code * self.samples_per_mel_frame

    @property
    def max_codes(self) -> int:
        return self.dit_config.max_position_embeddings // self.dit_config.repeats

    @torch.inference_mode()
    def voice(self, name: str, entry: dict) -> VoiceCondition:
        """Prepare (once per voice) the speaker conditioning from a spk_dict.pt entry."""
        key = (name, id(entry))
        if key not in self._voices:
            dit = self.code2wav_dit_model
            reference_mel = entry["ref_mel"].to(self.device, torch.float32).reshape(1, -1, self.dit_config.mel_dim)
            cond = entry["cond"].to(self.device, torch.float32).reshape(1, -1)
            self._voices[key] = VoiceCondition(
                name=name, cond=cond, speaker=dit.speaker_embedding(reference_mel),
                null_speaker=dit.speaker_embedding(torch.zeros_like(reference_mel)),
            )
        return self._voices[key]

    def noise(self, seed: int | None = None, noise: torch.Tensor | None = None) -> NoiseSource:
        return NoiseSource(self.dit_config.mel_dim, seed, self.device, noise)

    @torch.inference_mode()
    def mel(self, codes: torch.Tensor, voice: VoiceCondition, initial_noise: torch.Tensor,
            flow: FlowOptions = FlowOptions()) -> torch.Tensor:
        """Mel (1, frames, mel_dim) of codes (1, n) integrated from initial_noise (frames, mel_dim)."""
        return self.mel_window(codes, voice, initial_noise, flow)[0]

    @torch.inference_mode()
    def mel_window(self, codes: torch.Tensor, voice: VoiceCondition, initial_noise: torch.Tensor,
                   flow: FlowOptions = FlowOptions(), start_frame: int = 0, past: list[dict] | None = None,
                   remember_from: int | None = None) -> tuple[torch.Tensor, list[dict] | None]:
        """The mel of a window of codes that starts at mel frame `start_frame` (a block boundary).

        past: what an earlier window remembered of the block just before this one, per velocity
        evaluation (keys/values of the look-back layers); remember_from: the window frame where the
        block to remember for the next window starts. Returns the mel and that memory."""
        dit = self.code2wav_dit_model
        frames = codes.shape[1] * self.dit_config.repeats
        condition = dit.condition(codes.to(self.device), voice.cond, voice.speaker, voice.null_speaker)
        grid = time_grid(flow, self.device)
        steps = dit.steps(evaluation_times(grid))
        rotation = dit.rotation(frames, self.device, start=start_frame)
        past_frames = self.dit_config.block_size if past else 0
        masks = dit.attention_masks(frames, self.device, past_frames)
        memory: list[dict] | None = [] if remember_from is not None else None

        def velocity(evaluation: int, state: torch.Tensor) -> torch.Tensor:
            remember = None
            if memory is not None:
                memory.append({})
                remember = (remember_from, memory[-1])
            prediction = dit.velocity(state, steps, evaluation, condition, rotation, masks,
                                      past[evaluation] if past else None, remember)
            return guided(prediction, flow.guidance_scale)

        return integrate(velocity, initial_noise.reshape(1, frames, -1), grid), memory

    @torch.inference_mode()
    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (1, frames, mel_dim) -> samples (frames * samples_per_mel_frame,)."""
        return self.code2wav_bigvgan_model(mel.transpose(1, 2))[0]

    def check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        codes = torch.as_tensor(codes, dtype=torch.long).reshape(1, -1)
        if codes.shape[1] == 0:
            raise InputError("no codec tokens to synthesise")
        if codes.shape[1] > self.max_codes:
            raise InputError(f"{codes.shape[1]} codec tokens exceed the DiT's limit of {self.max_codes}")
        largest = self.dit_config.num_embeds
        if int(codes.min()) < 0 or int(codes.max()) > largest:
            raise InputError(f"codec tokens must lie in [0, {largest}], got [{int(codes.min())}, {int(codes.max())}]")
        return codes

    @torch.inference_mode()
    def synthesize(self, codes: torch.Tensor, voice: VoiceCondition, noise: NoiseSource,
                   flow: FlowOptions = FlowOptions()) -> torch.Tensor:
        """The whole utterance at once: samples (n * samples_per_code,) float32 in [-1, 1]."""
        codes = self.check_codes(codes)
        frames = codes.shape[1] * self.dit_config.repeats
        return self.vocode(self.mel(codes, voice, noise.frames(0, frames), flow))
