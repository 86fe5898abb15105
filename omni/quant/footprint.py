"""How much memory a loaded model's weights take, and how much the process peaked at.

Host peaks come from /proc/self/status (Linux): VmHWM, the resident-set high-water mark, counts
the pages of memory-mapped checkpoint files that loading touched while they are mapped (page cache
the kernel may drop at any time); RssAnon counts only the process's own memory (tensors, Python). A
`HostMemorySampler` polls RssAnon during a load to find its peak, the figure that says whether the
full-precision weights were ever held.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import nn

from omni.quant.linear import QuantLinear

MIB = 2**20


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # the file gives kB
    except OSError:
        return None
    return None


def host_peak_bytes() -> int | None:
    """The process's resident-set high-water mark (VmHWM), mapped file pages included."""
    return _status_bytes("VmHWM")


def host_anon_bytes() -> int | None:
    """The process's own resident memory now (RssAnon), without mapped files."""
    return _status_bytes("RssAnon")


def device_peak_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


class HostMemorySampler:
    """Polls RssAnon every `interval_s` on a thread while active; `peak_bytes` is the highest seen.
    Allocations shorter than the interval can slip between two polls."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.peak_bytes = host_anon_bytes() or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_bytes = max(self.peak_bytes, host_anon_bytes() or 0)

    def __enter__(self) -> HostMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, host_anon_bytes() or 0)


@dataclass(frozen=True)
class WeightBytes:
    total: int  # every parameter and buffer of the module, each storage once
    quantized_linears: int  # the QuantLinears' packed weights, scales and permutations (0 unquantized)
    decoder_linears: int  # the decoder linears' weights as held: packed bytes, or the float weight bytes
    decoder_linears_bf16: int  # the same linears' weights in bf16: the baseline of the ratios

    def as_dict(self) -> dict[str, int]:
        return {"total": self.total, "quantized_linears": self.quantized_linears,
                "decoder_linears": self.decoder_linears, "decoder_linears_bf16": self.decoder_linears_bf16}


def weight_bytes(module: nn.Module, decoder_linear_paths: list[str]) -> WeightBytes:
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in list(module.parameters()) + [b for b in module.buffers() if b is not None]:
        key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if key in seen:
            continue
        seen.add(key)
        total += tensor.untyped_storage().nbytes()
    quantized = decoder = bf16 = 0
    for path in decoder_linear_paths:
        layer = module.get_submodule(path)
        bf16 += 2 * layer.in_features * layer.out_features
        if isinstance(layer, QuantLinear):
            quantized += layer.weight_bytes
            decoder += layer.weight_bytes
        else:
            decoder += layer.weight.numel() * layer.weight.element_size()
    return WeightBytes(total, quantized, decoder, bf16)
