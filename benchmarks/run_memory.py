"""Peak resident memory of a run, phase by phase (issue 12's target: the embedded default
run under 2 GB).

    python benchmarks/run_memory.py [CONFIG] [--out DIR] [--quick] [--threads 1]

Runs ``musicbench run`` in this process (the embedded default config unless CONFIG is given)
into a fresh output folder, samples the process's resident set size every 20 ms, and prints
it at the start and end of every phase: planning (datasets, models, defense measurements),
and per cell its preparation, its attack loop over the clips and its finishing step (cell
metrics, FAD). The peak is the sampled maximum; compare it with ``/usr/bin/time -v``'s
"Maximum resident set size" of the same command for the kernel's own count. The cache must be
warm (datasets and weights built): building them is not what this measures.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class Sampler:
    """The process's RSS every ``interval`` s in a daemon thread; ``peak`` in MB."""

    def __init__(self, interval: float = 0.02):
        self.peak = rss_mb()
        self.rows: list[tuple[float, str, float, float]] = []
        self._t0 = time.perf_counter()
        threading.Thread(target=self._run, args=(interval,), daemon=True).start()

    def _run(self, interval: float) -> None:
        while True:
            self.peak = max(self.peak, rss_mb())
            time.sleep(interval)

    def mark(self, what: str) -> None:
        row = (time.perf_counter() - self._t0, what, rss_mb(), self.peak)
        self.rows.append(row)
        print(f"{row[0]:8.1f} s  {what:<28} rss {row[2]:7.0f} MB  peak so far {row[3]:7.0f} MB",
              file=sys.stderr, flush=True)


def traced(sampler: Sampler, module: Any, name: str, label: str) -> None:
    """Wrap ``module.name`` so that its start and end are marked."""
    inner: Callable = getattr(module, name)

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        sampler.mark(f"{label} ...")
        try:
            return inner(*args, **kwargs)
        finally:
            sampler.mark(f"{label} done")

    setattr(module, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    sampler = Sampler()
    sampler.mark("start")
    import torch

    torch.set_num_threads(args.threads)
    sampler.mark("torch imported")
    from musicbench import runner, session
    from musicbench.plugins import get_plugins

    traced(sampler, session, "plan_cells", "plan")
    traced(sampler, runner, "_prepare", "cell: prepare")
    traced(sampler, runner, "_run_clips", "cell: attack the clips")
    traced(sampler, runner, "_finish", "cell: metrics, FAD")
    out = args.out or Path(tempfile.mkdtemp(prefix="musicbench-memory-"))
    t0 = time.perf_counter()
    outcome = session.execute(session.RunOptions(config=args.config, out=out, quick=args.quick),
                              get_plugins())
    sampler.mark("done")
    print(f"\n{args.config or 'embedded default config'}{' --quick' if args.quick else ''}: "
          f"{outcome.planned} cells ({outcome.planned - len(outcome.failed)} ok), "
          f"{time.perf_counter() - t0:.0f} s, peak RSS {sampler.peak:.0f} MB "
          f"({sampler.peak / 1024:.2f} GiB), {args.threads} thread(s), out {out}")


if __name__ == "__main__":
    main()
