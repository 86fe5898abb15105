"""Test media made on the spot: tones and speech in several audio containers, Pillow drawings, short
videos (with and without an audio track) in several video containers, and broken files."""

from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

# container format, audio codec, encoder sample rate
AUDIO_FORMATS = {
    "wav": ("wav", "pcm_s16le", 44100),
    "flac": ("flac", "flac", 44100),
    "mp3": ("mp3", "libmp3lame", 44100),
    "opus": ("ogg", "libopus", 48000),
    "m4a": ("ipod", "aac", 44100),
}
# container format, video codec, audio codec (for the track)
VIDEO_FORMATS = {
    "mp4": ("mp4", "libx264", "aac"),
    "webm": ("webm", "libvpx", "libopus"),
    "mkv": ("matroska", "libx264", "flac"),
    "mov": ("mov", "mpeg4", "aac"),
}


def tone(seconds: float, frequency_hz: float = 440.0, rate: int = 44100, channels: int = 1,
         amplitude: float = 0.5) -> np.ndarray:
    """(channels, samples) float32 sine; channel c is at frequency * (c + 1)."""
    t = np.arange(int(round(seconds * rate))) / rate
    return np.stack([amplitude * np.sin(2 * np.pi * frequency_hz * (c + 1) * t) for c in range(channels)]).astype(
        np.float32)


def write_audio(path: Path, waveform: np.ndarray, rate: int, kind: str) -> Path:
    """waveform: (channels, samples) float32 at `rate` (resampled by the encoder when it needs to)."""
    container_format, codec, codec_rate = AUDIO_FORMATS[kind]
    layout = "mono" if waveform.shape[0] == 1 else "stereo"
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=codec_rate, layout=layout)
        _encode_audio(container, stream, waveform, rate, layout)
    return path


def _encode_audio(container, stream, waveform: np.ndarray, rate: int, layout: str) -> None:
    for packet in _encoded_audio(stream, waveform, rate, layout):
        container.mux(packet)


def _encoded_audio(stream, waveform: np.ndarray, rate: int, layout: str) -> list:
    target_format = stream.codec_context.codec.audio_formats[0].name
    resampler = av.AudioResampler(format=target_format, layout=layout, rate=stream.codec_context.sample_rate,
                                  frame_size=stream.codec_context.frame_size or 1024)
    packets = []
    step = 4096
    for start in range(0, waveform.shape[1], step):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(waveform[:, start:start + step]), format="fltp",
                                           layout=layout)
        frame.sample_rate = rate
        for chunk in resampler.resample(frame):
            packets.extend(stream.encode(chunk))
    for chunk in resampler.resample(None):
        packets.extend(stream.encode(chunk))
    packets.extend(stream.encode(None))
    return packets


def speech(path: Path, text: str) -> Path:
    """A wav of `text` spoken by espeak-ng (22.05 kHz mono)."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed; the media tests need it (apt-get install -y espeak-ng)")
    subprocess.run(["espeak-ng", "-v", "en", "-s", "170", "-w", str(path), text], check=True, capture_output=True,
                   timeout=60)
    return path


def trimmed_pcm16(path: Path, rate: int) -> np.ndarray:
    """An audio file as mono int16 PCM at `rate`, its leading and trailing silence trimmed."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    pieces = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    samples = np.concatenate(pieces).astype(np.int16)
    voiced = np.flatnonzero(np.abs(samples.astype(np.int32)) > 300)
    return samples[voiced[0]:voiced[-1] + 1].copy()


def drawing(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Shapes in random colours on a gradient, deterministic per seed."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    base = np.concatenate([x.repeat(height, 0), y.repeat(width, 1), (x + y).repeat(1, 0) / 2 * np.ones((height, 1, 1))],
                          axis=2)
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(4, max(5, width // 2))), y0 + int(rng.integers(4, max(5, height // 2)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    if mode == "RGBA":
        alpha = Image.fromarray((np.linspace(0, 255, width)[None, :].repeat(height, 0)).astype(np.uint8), "L")
        image = image.convert("RGBA")
        image.putalpha(alpha)
        return image
    return image.convert(mode) if mode != "RGB" else image


def video_frames(count: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """(count, height, width, 3) uint8: a square that moves and changes colour frame by frame."""
    rng = np.random.default_rng(seed)
    background = np.asarray(drawing(width, height, seed))
    frames = np.empty((count, height, width, 3), dtype=np.uint8)
    side = max(4, min(width, height) // 3)
    for index in range(count):
        frame = background.copy()
        x = (index * 7) % max(1, width - side)
        y = (index * 5) % max(1, height - side)
        frame[y:y + side, x:x + side] = rng.integers(0, 256, 3, dtype=np.uint8)
        frames[index] = frame
    return frames


def write_video(path: Path, frames: np.ndarray, fps: int, kind: str, audio: np.ndarray | None = None,
                audio_rate: int = 44100) -> Path:
    container_format, video_codec, audio_codec = VIDEO_FORMATS[kind]
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(video_codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        if video_codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "18"}
        audio_stream = None
        if audio is not None:
            layout = "mono" if audio.shape[0] == 1 else "stereo"
            rate = 48000 if audio_codec == "libopus" else audio_rate
            audio_stream = container.add_stream(audio_codec, rate=rate, layout=layout)
        # Every encoder opens (and sets its extradata) before the first mux writes the header:
        # matroska needs flac's STREAMINFO in it.
        packets = []
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = index
            packets.extend(stream.encode(frame))
        packets.extend(stream.encode(None))
        if audio_stream is not None:
            packets.extend(_encoded_audio(audio_stream, audio, audio_rate, "mono" if audio.shape[0] == 1 else "stereo"))
        packets.sort(key=lambda packet: float((packet.dts if packet.dts is not None else 0) * packet.time_base))
        for packet in packets:
            container.mux(packet)
    return path


def write_undecodable_video(path: Path) -> Path:
    """A matroska file with a valid h264 track of 10 packets whose payloads are zeroed after their
    first NAL start code: the container demuxes, no frame decodes."""
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        packets = []
        for index in range(10):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts = index
            packets.extend(stream.encode(frame))
        packets.extend(stream.encode(None))
        for real in packets:
            payload = bytearray(bytes(real))
            payload[8:] = bytes(len(payload) - 8)
            broken = av.Packet(bytes(payload))
            broken.stream, broken.pts, broken.dts, broken.time_base = stream, real.pts, real.dts, real.time_base
            broken.is_keyframe = real.is_keyframe
            container.mux(broken)
    return path


def truncated_copy(source: Path, target: Path, keep: float) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: max(1, int(len(data) * keep))])
    return target


SPEECH_TEXT = "Hello, this is omni. The quick brown fox jumps over the lazy dog."


class Media:
    """Paths of the media one test session builds (see `build_media`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.speech = directory / "speech.wav"
        self.tone = {kind: directory / f"tone.{kind}" for kind in AUDIO_FORMATS}  # 1.5 s stereo, 440 / 880 Hz
        self.image_png = directory / "drawing.png"  # 200 x 150
        self.image_jpg = directory / "tall.jpg"  # 90 x 300
        self.image_rgba = directory / "alpha.png"
        self.video = {kind: directory / f"clip.{kind}" for kind in VIDEO_FORMATS}  # 3 s, 10 fps, 160 x 120
        self.video_audio = {kind: directory / f"clip_audio.{kind}" for kind in VIDEO_FORMATS}  # + 3 s tone
        self.long_video_audio = directory / "long_audio.mp4"  # 5 s with a 5 s tone: 3 chunks of 2 s
        self.undecodable_video = directory / "undecodable.mkv"


def build_media(directory: Path) -> Media:
    media = Media(directory)
    speech(media.speech, SPEECH_TEXT)
    for kind, path in media.tone.items():
        write_audio(path, tone(1.5, 440.0, channels=2), 44100, kind)
    drawing(200, 150, seed=1).save(media.image_png)
    drawing(90, 300, seed=2).save(media.image_jpg, quality=95)
    drawing(120, 80, seed=3, mode="RGBA").save(media.image_rgba)
    frames = video_frames(30, 160, 120, seed=4)
    for kind in VIDEO_FORMATS:
        write_video(media.video[kind], frames, 10, kind)
        write_video(media.video_audio[kind], frames, 10, kind, audio=tone(3.0, 330.0))
    write_video(media.long_video_audio, video_frames(50, 160, 120, seed=5), 10, "mp4", audio=tone(5.0, 550.0))
    write_undecodable_video(media.undecodable_video)
    return media
