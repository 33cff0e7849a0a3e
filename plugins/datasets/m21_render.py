"""Rendering helpers shared by the embedded music21 datasets (``m21-styles``, ``m21-covers``):
one coverage rule, one pitch fold, one stable seed from a name, one result record and one
process pool, so the two datasets cannot drift apart in how a work becomes audio."""

from __future__ import annotations

import concurrent.futures
import ctypes
import hashlib
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PITCH_RANGE = (24.0, 102.0)  # MIDI; notes outside are folded in by octaves
MIN_COVERAGE = 0.6  # fraction of a clip during which at least one note must sound
FRAME_RATE = 100  # Hz, for the coverage grid


@dataclass
class WorkResult:
    work_id: str
    reason: str | None  # None = usable
    clips: np.ndarray | None = None  # int16 [k, clip_samples]
    clip_meta: list[dict[str, Any]] = field(default_factory=list)
    work_meta: dict[str, Any] = field(default_factory=dict)


def stable_int(text: str) -> int:
    """A 64-bit integer from ``text`` that is the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def fold_pitch(pitch: np.ndarray) -> np.ndarray:
    """Move pitches outside ``PITCH_RANGE`` into it by whole octaves."""
    lo, hi = PITCH_RANGE
    up = np.ceil(np.maximum(lo - pitch, 0.0) / 12.0)
    down = np.ceil(np.maximum(pitch - hi, 0.0) / 12.0)
    return pitch + 12.0 * (up - down)


def coverage(onset: np.ndarray, end: np.ndarray, n_frames: int) -> np.ndarray:
    """``bool[n_frames]``: whether any note sounds in each ``1/FRAME_RATE`` s frame."""
    starts = np.clip(np.floor(onset * FRAME_RATE).astype(np.int64), 0, n_frames)
    stops = np.clip(np.ceil(end * FRAME_RATE).astype(np.int64), 0, n_frames)
    delta = np.zeros(n_frames + 1, dtype=np.int64)
    np.add.at(delta, starts, 1)
    np.add.at(delta, stops, -1)
    return np.cumsum(delta[:-1]) > 0


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_SECONDS = 1.0


def _worker_init(parent_pid: int) -> None:
    """First thing every render worker runs: make it die with ``parent_pid``, however the
    parent dies (``kill -9`` included), so no worker or resource tracker outlives a build.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, the kernel kills the worker when the thread
    that spawned it ends (:class:`process_map` is used from the thread that builds). Then,
    for the parent dying before that was armed and for systems without it, the worker checks
    that its parent is still ``parent_pid`` now and once a second from a daemon thread (an
    orphan is re-parented, so ``getppid()`` changes)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watcher below still works
            pass
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                     name="musicbench-parent-watch").start()


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(PARENT_POLL_SECONDS)
        if os.getppid() != parent_pid:
            os._exit(1)


class process_map:
    """Context manager yielding an ordered ``map(fn, items) -> list``: in-process when one
    worker suffices, else a spawn-based process pool (spawn: safe after torch is imported)
    whose workers die with this process (:func:`_worker_init`)."""

    def __init__(self, workers: int, n_jobs: int):
        self.n = max(1, min(int(workers), n_jobs, os.cpu_count() or 1))
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None

    def __enter__(self):
        if self.n > 1:
            self.pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.n, mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init, initargs=(os.getpid(),),
            )
        return self._map

    def _map(self, fn, items):
        if self.pool is not None:
            try:
                return list(self.pool.map(fn, items))
            except concurrent.futures.process.BrokenProcessPool:
                # Typically a script without an `if __name__ == "__main__":` guard, which
                # spawned workers re-execute. Same results serially, just slower.
                warnings.warn(
                    "m21-styles worker processes failed to start (is the calling script missing "
                    "an `if __name__ == \"__main__\":` guard?); rendering in this process",
                    stacklevel=3,
                )
                self.pool.shutdown(cancel_futures=True)
                self.pool = None
        return [fn(x) for x in items]

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
