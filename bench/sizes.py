"""What the benches share about model sizes and devices: the presets they take, the dtype each device
runs in, and the note every bench prints at `3b-wide`."""

from __future__ import annotations

import torch

PRESET_CHOICES = ["tiny", "small", "3b-wide", "3b", "7b"]

# Printed (and put in the JSON) by every bench run at 3b-wide.
LAYER_NOTE = ("3b-wide has the 3B widths with a few layers per stack: a layer's cost does not depend on how "
              "many layers follow it, so per-layer and per-token ratios carry over to 3b; absolute times "
              "(time to first audio, tokens/s) scale with the depth and do not")


def llm_dtype(device: str) -> str:
    """bf16 on CUDA (how the published models are run), fp32 on the CPU. The codec is fp32 on both."""
    return "bf16" if device.startswith("cuda") else "fp32"


def torch_dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def synchronize(device: str) -> None:
    """Before reading a clock: CUDA work is asynchronous."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device: str) -> float | None:
    """Peak CUDA memory since the last reset, or None on the CPU (host memory is the process's)."""
    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return None


def size_fields(preset: str, device: str) -> dict:
    fields = {"preset": preset, "device": device, "llm_dtype": llm_dtype(device), "codec_dtype": "fp32"}
    if device.startswith("cuda"):
        fields["gpu"] = torch.cuda.get_device_name()
    if preset == "3b-wide":
        fields["note"] = LAYER_NOTE
    return fields


def load_reference(model_class, path, device: str, with_codec: bool = False):
    """The transformers reference on `device` in the bench's dtype; its codec (token2wav) in fp32 as omni's."""
    model = model_class.from_pretrained(path, dtype=torch_dtype(llm_dtype(device))).eval().to(device)
    if with_codec:
        model.token2wav.float()
    return model
