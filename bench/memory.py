"""Peak memory of a piece of work: resident set size sampled in a thread, CUDA peak via torch."""

from __future__ import annotations

import ctypes
import functools
import sys
import threading
from types import TracebackType

import torch


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import resource

        return pages * resource.getpagesize()
    except (OSError, ValueError, ImportError):
        return 0


class PeakMemory:
    """``with PeakMemory(device) as pm: ...; pm.peak_mb`` (CUDA: allocator peak; else RSS)."""

    def __init__(self, device: torch.device, interval: float = 0.05):
        self.device = device
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(
        self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, _rss_bytes())

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


@functools.cache  # looked up once per process, not once per batch
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl or another libc: its own policy stands
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def trim() -> None:
    """Return the free pages inside glibc's heap to the OS (the runner calls it after every
    batch and cell: freed batch tensors otherwise keep the process growing by ~35 MB a batch,
    0.9 GB over the default run's FGSM cell). Costs milliseconds. A fixed low mmap threshold (``mallopt``) would
    return every batch tensor at once but made PGD 1.6-1.9x slower here (each step's
    tensors page-faulted anew): docs/benchmarks.md."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
