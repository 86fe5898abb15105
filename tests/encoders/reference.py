"""Run the transformers Qwen2.5-Omni processor on the media omni decoded (it reads no files itself):
the judge for omni's processor outputs and the input of the reference Thinker in parity tests."""

from __future__ import annotations

import warnings

from encoders.messages import MediaItem


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
