"""The Gradio app: chat (typed text and uploads), voice chat (streaming microphone, VAD end of turn,
barge-in) and video chat (webcam snapshot or clip, or an uploaded video, with a typed or spoken
question). The reply's text streams into the chat and its speech into an autoplaying streaming audio
player. Each browser session gets its own `Conversation` (in a gr.State) over one shared model.

Everything that decides anything lives in demo/turn.py; this file only wires widgets to it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from omni.demo.turn import Conversation, ReplySettings, ReplyUpdate
from omni.encoders.limits import MediaLimits
from omni.chat import AUDIO_SYSTEM_PROMPT
from omni.errors import OmniError
from omni.loading import LoadedModel

MIC_CHUNK_S = 0.25  # how often the browser sends microphone audio (and so the VAD's reaction time)
TEXT_UPDATE_S = 0.05  # at most this often a text-only update goes to the browser
FILE_TYPES = ["image", "audio", "video"]
GRADIO_CACHE_MAX_AGE_S = 3600


def build_app(
    loaded: LoadedModel,
    system_prompt: str | None = AUDIO_SYSTEM_PROMPT,
    max_new_tokens: int = 256,
    media_limits: MediaLimits | None = None,
    media_dir: str | Path | None = None,
    max_concurrent_replies: int = 2,
) -> gr.Blocks:
    """The demo's Blocks; `launch()` it with `allowed_paths=[app.omni_media_dir]` so the chat can
    play back spoken turns. Each conversation keeps only its last few recordings there and deletes
    them when it is cleared or its browser session ends; a media dir made here is removed at exit."""
    if media_dir is None:
        media_dir = Path(tempfile.mkdtemp(prefix="omni-demo-"))
        atexit.register(shutil.rmtree, media_dir, ignore_errors=True)
    media_dir = Path(media_dir)
    media_dir.mkdir(parents=True, exist_ok=True)
    limits = media_limits or MediaLimits()

    def new_conversation() -> Conversation:
        return Conversation(loaded, system_prompt=system_prompt, media_limits=limits, media_dir=media_dir)

    def ensure(conversation: Conversation | None) -> Conversation:
        return conversation if conversation is not None else new_conversation()

    voices = loaded.voices
    # Gradio serves copies of files (spoken turns, each streamed speech chunk) from its own cache,
    # which would otherwise only grow: drop copies over an hour old, every hour.
    with gr.Blocks(title="omni", delete_cache=(GRADIO_CACHE_MAX_AGE_S, GRADIO_CACHE_MAX_AGE_S)) as app:
        state = gr.State(None, delete_callback=lambda c: c.close() if c is not None else None)
        gr.Markdown(f"## omni — talk to `{loaded.path.name}`\nType, upload, speak or show; "
                    "the reply streams as text and speech. Speak over a reply to interrupt it.")
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Conversation", elem_id="chat", height=460)
                reply_audio = gr.Audio(label="Spoken reply", streaming=True, autoplay=True, interactive=False,
                                       elem_id="reply-audio")
                latency = gr.Markdown(elem_id="latency")
                with gr.Tabs():
                    with gr.Tab("Chat", id="chat-tab"):
                        box = gr.MultimodalTextbox(
                            placeholder="Type a message, or attach images, audio or video",
                            file_types=FILE_TYPES, file_count="multiple", sources=["upload", "microphone"],
                            show_label=False, elem_id="message")
                    with gr.Tab("Voice chat", id="voice-tab"):
                        mic = gr.Audio(sources=["microphone"], streaming=True, type="numpy",
                                       label="Microphone: speak, pause to let omni answer", elem_id="mic")
                        voice_status = gr.Markdown("Press record and speak.", elem_id="voice-status")
                        turn_counter = gr.Number(0, visible=False)
                    with gr.Tab("Video chat", id="video-tab"):
                        with gr.Row():
                            snapshot = gr.Image(sources=["webcam", "upload"], type="filepath",
                                                label="Snapshot", elem_id="snapshot")
                            clip = gr.Video(sources=["webcam", "upload"], label="Clip or video", elem_id="clip")
                        question = gr.Textbox(label="Question (typed)", elem_id="question")
                        spoken_question = gr.Audio(sources=["microphone", "upload"], type="filepath",
                                                   label="Question (spoken)", elem_id="spoken-question")
                        listen = gr.Checkbox(False, label="Also listen to the clip's sound")
                        ask = gr.Button("Ask", variant="primary", elem_id="ask")
                with gr.Row():
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                    clear = gr.Button("Clear", elem_id="clear")
            with gr.Column(scale=1):
                speak = gr.Checkbox(loaded.audio_output, label="Speak the reply", elem_id="speak")
                voice = gr.Dropdown(voices, value=voices[0] if voices else None, label="Voice",
                                    interactive=bool(voices))
                system = gr.Textbox(system_prompt or "", label="System prompt (changing it starts over)", lines=4)
                tokens = gr.Slider(1, 8192, value=max_new_tokens, step=1, label="Max new tokens",
                                   elem_id="max-tokens")
                temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)")

        settings_inputs = [speak, voice, tokens, temperature]
        reply_outputs = [chatbot, reply_audio, latency, state]

        def settings_of(speak_on, voice_name, max_tokens, temp, use_audio_in_video=False) -> ReplySettings:
            return ReplySettings(speak=bool(speak_on), voice=voice_name or None, max_new_tokens=int(max_tokens),
                                 temperature=float(temp), use_audio_in_video=bool(use_audio_in_video))

        def stream_updates(conversation: Conversation, message, settings: ReplySettings) -> Iterator[tuple]:
            # the player keeps the last reply until this one's first chunk: opening an audio stream
            # with no chunk yet leaves the browser polling an empty playlist
            yield conversation.history, gr.skip(), "", conversation
            update = None
            last_sent = 0.0
            for update in conversation.reply(message, settings):
                # text-only updates are coalesced: a small model makes tokens faster than a browser redraws
                now = time.monotonic()
                if update.audio_wav is None and update.done is None and now - last_sent < TEXT_UPDATE_S:
                    continue
                last_sent = now
                yield conversation.history, _audio_value(update), _latency_value(update), conversation
            if update is not None and update.error:
                gr.Warning(update.error)

        def on_message(value: dict[str, Any] | None, conversation, *settings):
            conversation = ensure(conversation)
            value = value or {}
            try:
                message = conversation.user_turn(value.get("text"), value.get("files") or [])
            except OmniError as exc:
                raise gr.Error(str(exc)) from None
            for index, outputs in enumerate(stream_updates(conversation, message, settings_of(*settings))):
                yield (gr.MultimodalTextbox(value=None) if index == 0 else gr.skip()), *outputs

        box.submit(on_message, [box, state, *settings_inputs], [box, *reply_outputs],
                   concurrency_id="reply", concurrency_limit=max_concurrent_replies)

        def on_video_question(image, video, text, spoken, use_sound, conversation, *settings):
            conversation = ensure(conversation)
            try:
                message = conversation.user_turn(text, [f for f in (image, video, spoken) if f])
            except OmniError as exc:
                raise gr.Error(str(exc)) from None
            yield from stream_updates(conversation, message, settings_of(*settings, use_sound))

        ask.click(on_video_question, [snapshot, clip, question, spoken_question, listen, state, *settings_inputs],
                  reply_outputs, concurrency_id="reply", concurrency_limit=max_concurrent_replies)

        def on_mic_chunk(chunk, conversation, count):
            conversation = ensure(conversation)
            if chunk is None:
                return gr.skip(), gr.skip(), conversation
            sample_rate_hz, samples = chunk
            try:
                events = conversation.hear(samples, sample_rate_hz)
            except OmniError as exc:
                return gr.skip(), f"Microphone: {exc}", conversation
            return _voice_outputs(conversation, events, count)

        def on_mic_stop(conversation, count):
            conversation = ensure(conversation)
            return _voice_outputs(conversation, conversation.end_of_microphone(), count)

        mic.stream(on_mic_chunk, [mic, state, turn_counter], [turn_counter, voice_status, state],
                   stream_every=MIC_CHUNK_S, time_limit=None, concurrency_limit=None, show_progress="hidden")
        mic.stop_recording(on_mic_stop, [state, turn_counter], [turn_counter, voice_status, state],
                           concurrency_limit=None, show_progress="hidden")

        def on_spoken_turn(conversation, *settings):
            conversation = ensure(conversation)
            while (message := conversation.next_spoken_turn()) is not None:
                yield from stream_updates(conversation, message, settings_of(*settings))

        turn_counter.change(on_spoken_turn, [state, *settings_inputs], reply_outputs,
                            concurrency_id="reply", concurrency_limit=max_concurrent_replies)

        def on_stop(conversation):
            if conversation is not None:
                conversation.stop()

        stop.click(on_stop, [state], None, concurrency_limit=None, show_progress="hidden")

        def on_clear(conversation):
            conversation = ensure(conversation)
            conversation.reset()
            return [], None, "", conversation

        clear.click(on_clear, [state], reply_outputs, concurrency_limit=None)

        def on_system(text, conversation):
            conversation = ensure(conversation)
            if conversation.set_system_prompt(text):
                gr.Info("New system prompt: the conversation starts over.")
                return [], None, "", conversation
            return gr.skip(), gr.skip(), gr.skip(), conversation

        system.blur(on_system, [system, state], reply_outputs, concurrency_limit=None)
        app.load(new_conversation, None, [state])
    app.omni_media_dir = media_dir
    return app


def _audio_value(update: ReplyUpdate):
    # the streaming player appends each WAV chunk it is given; skip keeps it playing between chunks
    return update.audio_wav if update.audio_wav is not None else gr.skip()


def _latency_value(update: ReplyUpdate):
    if update.done is not None:
        return update.latency_text
    if update.first_audio_s is not None:
        return f"first audio {update.first_audio_s:.2f} s …"
    return gr.skip()


def _voice_outputs(conversation: Conversation, events, count) -> tuple:
    kinds = [event.kind for event in events]
    if "turn_end" in kinds:
        seconds = sum(len(e.audio) for e in events if e.kind == "turn_end") / 16000
        return (count or 0) + 1, f"Heard {seconds:.1f} s — answering.", conversation
    if "speech_start" in kinds:
        return gr.skip(), "Listening…", conversation
    return gr.skip(), gr.skip(), conversation


def ensure_ffmpeg() -> bool:
    """Gradio's streaming audio player calls `ffmpeg` from PATH. Without a system one, use the static
    build the imageio-ffmpeg wheel ships (a `demo` extra), linked as `ffmpeg` into a private bin dir,
    so that a fresh machine needs no system package.

    The bin dir is made fresh by mkdtemp (a new, unguessable name, mode 0700, created by us or not at
    all) rather than reused at a fixed name under /tmp: another local user could create that name
    first and put their own `ffmpeg` in it, which would then run as us. Nothing is trusted from a
    previous start; the dir is removed at exit."""
    if shutil.which("ffmpeg") is not None:
        return True
    try:
        import imageio_ffmpeg
    except ImportError:
        return False
    binary = Path(imageio_ffmpeg.get_ffmpeg_exe()).resolve()
    bin_dir = Path(tempfile.mkdtemp(prefix="omni-ffmpeg-"))
    atexit.register(shutil.rmtree, bin_dir, ignore_errors=True)
    (bin_dir / "ffmpeg").symlink_to(binary)
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return shutil.which("ffmpeg") is not None


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    dtype: str = "auto",
    device: str = "cpu",
    max_new_tokens: int = 256,
    block: bool = True,
    quantize: str | None = None,
    offload: str | None = None,
) -> gr.Blocks:
    """Load `model` once and serve the demo on host:port (a public gradio.live link with share)."""
    from omni.loading import load_model

    if not ensure_ffmpeg():
        raise OmniError("the demo streams speech through ffmpeg, which is not on PATH and imageio-ffmpeg is not "
                        "installed: pip install -e '.[demo]' or apt-get install ffmpeg")
    from omni.warmup import warm_up

    loaded = load_model(model, dtype=dtype, device=device, quantize=quantize, offload=offload)
    warm_up(loaded)  # the first user's time to first audio should not pay PyTorch's first-call costs
    app = build_app(loaded, max_new_tokens=max_new_tokens)
    app.queue(default_concurrency_limit=None)
    app.launch(server_name=host, server_port=port, share=share, allowed_paths=[str(app.omni_media_dir)],
               prevent_thread_lock=not block, show_error=True)
    return app
