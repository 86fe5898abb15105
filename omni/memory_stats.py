"""Peak memory per stage of a reply (encoders, Thinker prefill and decode, Talker, codec), and the
process's peaks for `omni run --stats`.

What is measured, honestly:
- CUDA: bytes allocated by PyTorch on the device (`torch.cuda.max_memory_allocated`), the counter
  reset when a stage starts. Exact for what PyTorch allocates; the caching allocator's reserve and
  other libraries' memory are not in it.
- CPU: the process's resident-set high-water mark (VmHWM, read through getrusage), reset when a
  stage starts by writing 5 to /proc/self/clear_refs (Linux >= 4.0; it resets only that mark).
  Resident memory counts everything the process holds (weights, caches, Python, and checkpoint pages
  still mapped), not only the stage's tensors: the figure is what the machine needed while the
  stage ran. PyTorch's CPU allocator has no byte counter to read instead. Where clear_refs cannot
  be written, the figure is the resident set at the stage's start or end, whichever is larger, and
  the measure says "approximate" (an allocation freed before the stage ended is missed).

Either counter is process-wide. A stage's window resets it only when no other stage is being
measured; a stage that runs while another one is (the codec workers beside the engine loop) gets the
peak of both, an upper bound for each, and is listed in `Timings.stage_peak_shared`. Because the
windows reset the counters, the process's own peaks are kept here (`MemoryProbe.process_peak_bytes`):
read them from the probe, not from VmHWM or torch.cuda, once replies have run.

Cost: a lock, one counter read and at most one reset per stage window, and no device
synchronisation: 10-30 us a window on this shared 2-core CPU (a tiny-preset decode step takes
milliseconds, a 3b-wide one over 100 ms).
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch

from omni.events import ReplyDone

# The stages a reply's Timings.stage_peak_bytes may name.
STAGES = ("encoders", "thinker_prefill", "thinker_decode", "talker", "codec")
_RUSAGE_UNIT_BYTES = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, kB on Linux


class _CudaCounter:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.measure = f"{device} bytes allocated by PyTorch (max_memory_allocated per stage)"

    def reset(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        return int(torch.cuda.max_memory_allocated(self.device))

    def current(self) -> int:
        return int(torch.cuda.memory_allocated(self.device))


class _HostCounter:
    """The resident-set high-water mark, reset through /proc/self/clear_refs where it can be."""

    def __init__(self) -> None:
        try:
            # opened once: a write per stage is then one system call (< 1 us)
            self._clear_refs: int | None = os.open("/proc/self/clear_refs", os.O_WRONLY)
        except OSError:
            self._clear_refs = None
        self.exact = self._clear_refs is not None
        self.measure = ("host resident set high-water mark (VmHWM, reset per stage)" if self.exact
                        else "host resident set at the stage's start or end (approximate: no /proc/self/clear_refs)")
        self._start = 0

    def reset(self) -> None:
        if self._clear_refs is not None:
            os.write(self._clear_refs, b"5")
        else:
            self._start = self.current()

    def peak(self) -> int:
        if self._clear_refs is not None:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RUSAGE_UNIT_BYTES
        return max(self._start, self.current())

    @staticmethod
    def current() -> int:
        try:
            with open("/proc/self/statm", encoding="ascii") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RUSAGE_UNIT_BYTES


@dataclass
class StagePeaks:
    """One reply's peak memory per stage (the highest of its windows), filled in as it runs, from
    any thread."""

    bytes: dict[str, int] = field(default_factory=dict)
    shared: set[str] = field(default_factory=set)  # stages a window of which overlapped another stage's
    measure: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def note(self, stage: str, peak_bytes: int, shared: bool, measure: str) -> None:
        with self._lock:
            self.bytes[stage] = max(self.bytes.get(stage, 0), peak_bytes)
            if shared:
                self.shared.add(stage)
            self.measure = measure

    def merge(self, other: StagePeaks) -> None:
        with other._lock:
            figures, shared, measure = dict(other.bytes), set(other.shared), other.measure
        for stage, peak in figures.items():
            self.note(stage, peak, stage in shared, measure)

    def stamp(self, done: ReplyDone) -> ReplyDone:
        """`done` with these peaks in its timings."""
        with self._lock:
            timings = replace(done.timings, stage_peak_bytes=dict(self.bytes), memory_measure=self.measure,
                              stage_peak_shared=tuple(sorted(self.shared)))
        return replace(done, timings=timings)


class _Window:
    __slots__ = ("shared",)

    def __init__(self, shared: bool) -> None:
        self.shared = shared


class MemoryProbe:
    """Measures stage windows on one device's counter (one probe per device, shared by every
    engine and session of the process: `probe_for`)."""

    def __init__(self, counter) -> None:
        self._counter = counter
        self.measure: str = counter.measure
        self._lock = threading.Lock()
        self._open: list[_Window] = []
        self._process_peak = 0  # the counter's peaks from before its resets

    @contextmanager
    def measure_stage(self, stage: str, *peaks: StagePeaks) -> Iterator[None]:
        """Measure the block as `stage` for each reply in `peaks` (a batched step: all of them)."""
        window = self._begin()
        try:
            yield
        finally:
            peak, shared = self._end(window)
            for reply_peaks in peaks:
                reply_peaks.note(stage, peak, shared, self.measure)

    def process_peak_bytes(self) -> int:
        """The counter's highest value since the process started (through every stage's reset)."""
        with self._lock:
            self._process_peak = max(self._process_peak, self._counter.peak())
            return self._process_peak

    def _begin(self) -> _Window:
        with self._lock:
            if not self._open:
                self._process_peak = max(self._process_peak, self._counter.peak())
                self._counter.reset()
            shared = bool(self._open)
            for other in self._open:
                other.shared = True
            window = _Window(shared)
            self._open.append(window)
            return window

    def _end(self, window: _Window) -> tuple[int, bool]:
        with self._lock:
            peak = self._counter.peak()
            self._open.remove(window)
            self._process_peak = max(self._process_peak, peak)
            return peak, window.shared


_probes: dict[str, MemoryProbe] = {}
_probes_lock = threading.Lock()


def probe_for(device: torch.device | str) -> MemoryProbe:
    """The process's probe of `device`'s memory: CUDA allocated bytes on a CUDA device, the host
    resident set otherwise."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = str(device) if device.type == "cuda" else "host"
    with _probes_lock:
        probe = _probes.get(key)
        if probe is None:
            probe = _probes[key] = MemoryProbe(_CudaCounter(device) if device.type == "cuda" else _HostCounter())
        return probe


@dataclass(frozen=True)
class ProcessPeaks:
    host_bytes: int  # the resident-set high-water mark (mapped checkpoint pages included)
    device_bytes: int | None  # CUDA: PyTorch's allocated high-water mark; None on a CPU


def process_peaks(device: torch.device | str) -> ProcessPeaks:
    """The process's peak host memory and (on CUDA) peak device memory so far, through the resets
    the stage windows made."""
    device = torch.device(device)
    host = probe_for("cpu").process_peak_bytes()
    return ProcessPeaks(host, probe_for(device).process_peak_bytes() if device.type == "cuda" else None)
