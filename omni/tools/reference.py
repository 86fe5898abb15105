"""The transformers reference, driven the way omni's parity tests and benchmarks need it:

- `reference_inputs` runs the Qwen2.5-Omni processor on the media omni decoded (it reads no files
  itself): the judge for omni's processor outputs and the input of the reference Thinker;
- `reference_speech` runs the reference's whole speech path, instrumented: text, codec tokens,
  talker logits, waveform, and the initial noise its DiT drew (so omni can start from the same)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from omni.encoders.messages import MediaItem


def reference_inputs(processor, conversations, items: list[list[MediaItem]], use_audio_in_video: bool = False,
                     image_pixels: tuple[int, int] | None = None, video_pixels: tuple[int, int] | None = None):
    """Processor outputs for a batch. `image_pixels` / `video_pixels` are the (min, max) pixel bounds
    the media were fitted to, so that the processor's own resize keeps omni's sizes. All videos of
    one call must share their sampling rate: the processor takes one fps per call."""
    texts = [processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
             for conversation in conversations]
    flat = [item for row in items for item in row]
    images = [item.image for item in flat if item.kind == "image"] or None
    videos = [item.frames.float() for item in flat if item.kind == "video"] or None
    audio, slots, video_index = [], [], 0
    for item in flat:
        if item.kind == "audio":
            audio.append(item.waveform)
            slots.append(None)
        elif item.kind == "video":
            if item.video_audio is not None:
                audio.append(item.video_audio)
                slots.append(video_index)
            video_index += 1
    kwargs = {}
    if image_pixels is not None:
        kwargs["images_kwargs"] = {"size": {"shortest_edge": image_pixels[0], "longest_edge": image_pixels[1]}}
    if videos:
        rates = {round(item.sample_fps, 9) for item in flat if item.kind == "video"}
        assert len(rates) == 1, "the processor takes one fps per call"
        kwargs["videos_kwargs"] = {"fps": flat[[i.kind for i in flat].index("video")].sample_fps}
        if video_pixels is not None:
            kwargs["videos_kwargs"]["size"] = {"shortest_edge": video_pixels[0], "longest_edge": video_pixels[1]}
    if use_audio_in_video and videos:
        kwargs.update(load_audio_from_video=True, audio_from_video_indices=slots)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return processor(text=texts, images=images, videos=videos, audio=audio or None, padding=True,
                         return_tensors="pt", **kwargs)

NOISE_SEED = 1234


@dataclass
class ReferenceSpeech:
    text_ids: list[int]
    codes: list[int]
    talker_logits: list[torch.Tensor]  # (vocab,) per talker forward (prefill first)
    waveform: torch.Tensor
    initial_noise: torch.Tensor  # (frames, mel_dim)


def codec_bad_words(vocab_size: int, num_embeds: int, stop_codes=(8292, 8294), bos=8293) -> list[list[int]]:
    """Codes a random talker must not produce (the DiT cannot embed them), as omni restricts them."""
    return [[code] for code in range(num_embeds + 1, vocab_size) if code not in stop_codes and code != bos]


def reference_speech(reference, input_ids: torch.Tensor, speaker: str, thinker_max_new_tokens: int,
                     talker_max_new_tokens: int, left_pad: int = 1, pad_id: int = 151643, **inputs) -> ReferenceSpeech:
    """Greedy Thinker, greedy Talker (the default repetition penalty still applies) through
    `Qwen2_5OmniForConditionalGeneration.generate`.

    `left_pad` padding tokens (masked out) go before the prompt. With none, transformers' generate
    drops the all-ones attention mask before the talker's forward sees it, and the talker then skips
    its prefill branch: no codec pad/bos embeddings on the last two inputs and plain 1-D positions
    instead of the multimodal rope index (see test_reference_skips_codec_conditioning_without_a_mask).
    One masked padding token keeps the mask, so the reference runs the talker prefill it means to."""
    attention_mask = torch.ones_like(input_ids)
    if left_pad:
        pad = torch.full((1, left_pad), pad_id, dtype=input_ids.dtype, device=input_ids.device)
        input_ids = torch.cat([pad, input_ids], dim=1)
        attention_mask = torch.cat([torch.zeros_like(pad, dtype=attention_mask.dtype), attention_mask], dim=1)
    captured: dict = {"logits": []}
    repeats = reference.config.token2wav_config.dit_config.repeats
    mel_dim = reference.config.token2wav_config.dit_config.mel_dim

    def record_talker(module, args, output):
        captured["logits"].append(output.logits[0, -1].detach().clone())

    def seed_token2wav(module, args, kwargs):
        code = args[0] if args else kwargs["code"]
        captured["codes"] = code[0].tolist()
        torch.manual_seed(NOISE_SEED)
        captured["noise"] = torch.randn([1, code.shape[1] * repeats, mel_dim])[0]
        torch.manual_seed(NOISE_SEED)  # the DiT's own draw repeats it

    config = reference.config
    bad = codec_bad_words(config.talker_config.vocab_size, config.token2wav_config.dit_config.num_embeds)
    hooks = [reference.talker.register_forward_hook(record_talker),
             reference.token2wav.register_forward_pre_hook(seed_token2wav, with_kwargs=True)]
    try:
        with torch.no_grad():
            text, waveform = reference.generate(
                input_ids=input_ids, attention_mask=attention_mask, speaker=speaker,
                thinker_max_new_tokens=thinker_max_new_tokens, thinker_do_sample=False,
                thinker_eos_token_id=[151645, 151643], talker_do_sample=False,
                talker_max_new_tokens=talker_max_new_tokens, talker_bad_words_ids=bad, **inputs,
            )
    finally:
        for hook in hooks:
            hook.remove()
    return ReferenceSpeech(text[0, input_ids.shape[1]:].tolist(), captured["codes"], captured["logits"],
                           waveform.reshape(-1).float(), captured["noise"])
