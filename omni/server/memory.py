"""What the server's limits cost in memory, and the defaults `omni serve` derives from the machine.

Per request, worst case (the README's HTTP server section has the numbers for Qwen2.5-Omni-7B):

- KV cache: the Thinker's cache grows to the prompt plus max_tokens, at most the context
  (`2 x layers x kv_heads x head_dim x dtype bytes` per token, from the model config); a spoken
  reply adds the Talker's cache over the conversation plus its codes. On a GPU this is device memory.
- body: the raw body, then its parsed form (base64 media decoded: 3/4 of their text): ~2 x body.
- media, decoded and resized before the encoders run (all of a request's items at once): a video's
  frames as uint8 (`max_video_total_pixels x 3` bytes, plus one source frame) and as the encoder's
  float32 patches (`x 12` bytes); an image's decoded source (`max_image_source_pixels x 4`, RGBA);
  an audio clip's float32 samples plus its mel features.

The derived defaults: generations at once (`max_concurrent`) such that each slot's KV cache at full
context (device) and one request's body and one video at its budget (host) fit in 80% of what is
free after loading the model; waiting requests (`max_queue`) such that their bodies fit in 25% of
host memory. A value given on the command line is kept, with a warning when it does not fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omni.encoders.limits import PATCH_FACTOR, MediaLimits

GIB = 1024**3
MIB = 1024**2
FRAMES_PER_TOKEN = 2  # a video token covers 2 frames (temporal patch) of 28 x 28 pixels
SOURCE_FRAME_BYTES = 3840 * 2160 * 3  # one decoded 4K source frame, before resizing
MEL_BYTES_PER_SECOND = 128 * 100 * 4  # 128 mel bins, 100 frames/s, float32
MAX_DERIVED_CONCURRENT = 8  # past this, one device's throughput stops growing with more slots
MAX_DERIVED_QUEUE = 32


@dataclass(frozen=True)
class MemoryPlan:
    thinker_kv_bytes_per_token: int
    talker_kv_bytes_per_token: int  # 0 for a model without speech output
    context_tokens: int
    talker_max_codes: int
    on_device: bool  # the KV cache lives in GPU memory (media always in host memory)
    max_body_bytes: int
    video_bytes: int
    image_bytes: int
    audio_bytes: int
    max_media_items: int

    @property
    def kv_bytes_per_request(self) -> int:
        talker = self.talker_kv_bytes_per_token * (self.context_tokens + self.talker_max_codes)
        return self.thinker_kv_bytes_per_token * self.context_tokens + talker

    @property
    def body_bytes_per_request(self) -> int:
        return 2 * self.max_body_bytes

    @property
    def largest_item_bytes(self) -> int:
        """The largest single media item (usually a video at its budget)."""
        return max(self.video_bytes, self.image_bytes, self.audio_bytes)

    @property
    def worst_media_bytes(self) -> int:
        return self.max_media_items * self.largest_item_bytes

    def slot_bytes(self) -> tuple[int, int]:
        """(device, host) bytes one running generation may take (device 0 when all is on the host)."""
        host = self.body_bytes_per_request + self.largest_item_bytes
        if self.on_device:
            return self.kv_bytes_per_request, host
        return 0, host + self.kv_bytes_per_request

    def describe(self) -> str:
        return (f"per request: KV cache up to {self.kv_bytes_per_request / GIB:.2f} GiB "
                f"({self.thinker_kv_bytes_per_token / 1024:.0f} KiB/token x {self.context_tokens} tokens"
                + (f", Talker {self.talker_kv_bytes_per_token / 1024:.0f} KiB/token" if self.talker_kv_bytes_per_token
                   else "") + f") on the {'GPU' if self.on_device else 'host'}; body {self.body_bytes_per_request / MIB:.0f} "
                f"MiB; one video {self.video_bytes / MIB:.0f} MiB, image {self.image_bytes / MIB:.0f} MiB, audio "
                f"clip {self.audio_bytes / MIB:.0f} MiB (up to {self.max_media_items} items)")


def plan_for(loaded, max_body_bytes: int, limits: MediaLimits, max_media_items: int) -> MemoryPlan:
    thinker = loaded.model.thinker.model
    talker_bytes, talker_codes = 0, 0
    if loaded.audio_output:
        from omni.talker.generate import TalkerOptions

        talker_bytes = kv_bytes_per_token(loaded.model.talker.model)
        talker_codes = TalkerOptions().max_codes
    return MemoryPlan(
        thinker_kv_bytes_per_token=kv_bytes_per_token(thinker),
        talker_kv_bytes_per_token=talker_bytes,
        context_tokens=loaded.config.thinker.text.max_position_embeddings,
        talker_max_codes=talker_codes,
        on_device=loaded.device.type != "cpu",
        max_body_bytes=max_body_bytes,
        video_bytes=limits.max_video_total_pixels * (3 + 12) + SOURCE_FRAME_BYTES,
        image_bytes=limits.max_image_source_pixels * 4 + limits.max_image_pixels * 12,
        audio_bytes=int(limits.max_audio_seconds * (limits.sample_rate_hz * 4 + MEL_BYTES_PER_SECOND)),
        max_media_items=max_media_items,
    )


def kv_bytes_per_token(decoder) -> int:
    """Bytes one token takes in a QwenDecoder's KV cache: keys and values in every layer."""
    config = decoder.config
    return 2 * config.num_layers * config.num_kv_heads * config.head_dim * decoder.norm.weight.element_size()


def video_pixels_for_context(context_tokens: int) -> int:
    """The most resized pixels a video can have and still fit the model's context (more could never
    be served: decoding them would be wasted)."""
    return context_tokens * PATCH_FACTOR * PATCH_FACTOR * FRAMES_PER_TOKEN


def derived_limits(plan: MemoryPlan, host_free_bytes: int, device_free_bytes: int | None) -> tuple[int, int]:
    """(max_concurrent, max_queue) that fit the memory found; at least (1, 0)."""
    device_slot, host_slot = plan.slot_bytes()
    fits = [int(0.8 * host_free_bytes) // max(1, host_slot)]
    if plan.on_device and device_free_bytes is not None:
        fits.append(int(0.8 * device_free_bytes) // max(1, device_slot))
    concurrent = max(1, min(MAX_DERIVED_CONCURRENT, *fits))
    queue = max(0, min(MAX_DERIVED_QUEUE, int(0.25 * host_free_bytes) // max(1, plan.body_bytes_per_request)))
    return concurrent, queue


def engine_request_slots(plan: MemoryPlan, host_free_bytes: int, max_batch: int) -> int:
    """Requests in flight with the engine, which admits replies by cache memory itself: as many as
    their bodies and largest media items fit in 80% of the host memory, at most `max_batch`."""
    host_slot = plan.body_bytes_per_request + plan.largest_item_bytes
    return max(1, min(max_batch, int(0.8 * host_free_bytes) // max(1, host_slot)))


def fit_warnings(plan: MemoryPlan, max_concurrent: int, max_queue: int, host_free_bytes: int | None,
                 device_free_bytes: int | None) -> list[str]:
    """What does not fit (for values given on the command line)."""
    warnings = []
    device_slot, host_slot = plan.slot_bytes()
    if host_free_bytes is not None:
        host_needed = max_concurrent * host_slot + max_queue * plan.body_bytes_per_request
        if host_needed > host_free_bytes:
            warnings.append(f"{max_concurrent} running and {max_queue} waiting requests may need "
                            f"{host_needed / GIB:.1f} GiB of host memory, {host_free_bytes / GIB:.1f} GiB is free; "
                            "lower --max-concurrent / --max-queue / --max-body-mb or the media limits")
    if plan.on_device and device_free_bytes is not None and max_concurrent * device_slot > device_free_bytes:
        warnings.append(f"{max_concurrent} generations at full context may need "
                        f"{max_concurrent * device_slot / GIB:.1f} GiB of GPU memory for their KV caches, "
                        f"{device_free_bytes / GIB:.1f} GiB is free; lower --max-concurrent or --max-tokens-limit")
    return warnings


def host_free_bytes() -> int | None:
    """Memory this process can still use: MemAvailable, capped by a container's cgroup limit."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cgroup / "memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(0, available)


def device_free_bytes(device) -> int | None:
    if getattr(device, "type", "cpu") != "cuda":
        return None
    import torch

    return int(torch.cuda.mem_get_info(device)[0])
