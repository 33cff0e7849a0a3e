"""Wall time of a fixed run against its clip count and against Ray workers on this machine.

    python benchmarks/scaling.py [--base-clips 16] [--threads 1] [--steps 20] [--second-attack]
                                 [--batch-size 8] [--skip-ray] [--keep] [--timeout 3600]

Issue 12, "scaling". One config, built here as TOML text in a temporary folder: dataset
``m21-styles``, model ``style-cnn``, defense ``none``, attack ``pgd`` (L-inf, eps 0.002,
``--steps`` steps; ``--second-attack`` adds ``fgsm`` at the same eps), ``device = "cpu"``,
``fad_encoder = ""`` (FAD would dominate a small run) and ``allow_training = false`` (a
missing checkpoint fails the run instead of training; the script also refuses to start when
the cache holds no ``m21-styles`` dataset or ``style-cnn`` weights).

Each measurement is one ``musicbench run CONFIG --out FRESH_FOLDER`` in a subprocess, the
command a user types, with ``OMP_NUM_THREADS=--threads``, timed with ``time.perf_counter``
from spawn to exit and required to exit 0. The wall time therefore includes process start-up,
imports, plugin discovery, planning, loading the cached dataset and model and writing the
store and leaderboard -- not only the cells -- and, under Ray, starting a local cluster and its
worker processes (tens of seconds), which each load the dataset and model again.

(a) clips: ``samples`` = 1x, 2x and 4x ``--base-clips``, local executor; a least-squares line
    ``wall = fixed + slope * clips`` gives the seconds per clip and the fixed cost.
(b) Ray workers: ``--executor ray`` at 4x ``--base-clips`` clips, ``ray_workers`` = 1 and 2,
    ``ray_local_cpus = 2``, ``ray_cpus_per_cell = 1``, ``--shard-clips`` half the clips
    (rounded up to whole batches of ``--batch-size``), so one cell's clips spread over both
    workers; prints the speed-up of 2 workers over 1.

Both Ray runs' records are then compared with the local run at the same clip count (every
clip's predictions, success, queries, steps and metrics; every cell figure with its interval;
the runner's flags), timings, load average and CPU count left out: the executor and the
sharding must not change a figure. Load averages (``uptime``) before and after and
``os.cpu_count()`` are printed: on a shared machine read the times as upper bounds. Exit 0
only when every run exited 0 and the figures are identical.

A Ray run's local cluster is stopped by ``musicbench run`` itself; the script runs each
subprocess in a session of its own and, whatever happens (an error, a timeout, Ctrl-C), ends
that session's processes -- only those -- before it goes on, and gives Ray a temporary folder of
its own (``RAY_TMPDIR``) so it never joins another cluster on the machine.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCALES = (1, 2, 4)
RAY_WORKERS = (1, 2)
EPS = 0.002


# ---- pure helpers (tests/test_scaling.py) ----------------------------------------------------

def config_text(samples: int, *, steps: int = 20, second_attack: bool = False,
                batch_size: int = 8, ray_workers: int | None = None) -> str:
    """The run's TOML: ``samples`` clips of m21-styles on style-cnn, no defense, PGD (and FGSM
    with ``second_attack``), CPU, no FAD, no training; ``ray_workers`` adds the Ray keys."""
    if samples < 1 or steps < 1 or batch_size < 1:
        raise ValueError(f"samples, steps and batch_size must be >= 1, got {samples}, {steps}, "
                         f"{batch_size}")
    ray = ""
    if ray_workers is not None:
        if ray_workers < 1:
            raise ValueError(f"ray_workers must be >= 1, got {ray_workers}")
        ray = (f"ray_workers = {ray_workers}\nray_local_cpus = 2\nray_cpus_per_cell = 1\n"
               "ray_gpus_per_cell = 0\n")
    fgsm = f'\n[[attacks]]\nname = "fgsm"\neps = {EPS}\n' if second_attack else ""
    return f"""[run]
name = "scaling"
seed = 0
device = "cpu"
samples = {samples}
batch_size = {batch_size}
fad_encoder = ""
allow_training = false
{ray}
[[datasets]]
name = "m21-styles"

[[models]]
name = "style-cnn"
datasets = ["m21-styles"]

[[defenses]]
name = "none"

[[attacks]]
name = "pgd"
eps = {EPS}
steps = {steps}
{fgsm}"""


def spread_shard(clips: int, batch_size: int, workers: int = 2) -> int:
    """``shard_clips`` that splits a cell of ``clips`` clips into ``workers`` shards (the last
    one possibly shorter) made of whole batches, as the harness rounds them."""
    per = math.ceil(clips / workers)
    shard = batch_size * math.ceil(per / batch_size)
    if math.ceil(clips / shard) < workers:
        raise ValueError(f"{clips} clips in batches of {batch_size} cannot be split over "
                         f"{workers} workers: use more clips or a smaller --batch-size")
    return shard


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares ``y = fixed + slope * x``: (fixed, slope, r2); r2 is 1.0 when every y is
    equal and the line goes through them."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"need two or more (x, y) pairs of equal length, got {len(xs)}, "
                         f"{len(ys)}")
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError(f"all x equal ({xs[0]}): no slope to fit")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    fixed = my - slope * mx
    ss_res = sum((y - fixed - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return fixed, slope, 1.0 - ss_res / ss_tot if ss_tot else 1.0


def differences(a: dict[tuple, dict], b: dict[tuple, dict], limit: int = 5) -> list[str]:
    """Where two runs' comparable records (:func:`comparable`) differ: cell by cell, field by
    field, at most ``limit`` lines; empty when identical."""
    out = []
    for cell in sorted(set(a) | set(b)):
        if cell not in a or cell not in b:
            out.append(f"{'/'.join(cell)}: only in {'the first' if cell in a else 'the second'}")
            continue
        for name in sorted(set(a[cell]) | set(b[cell])):
            if a[cell].get(name) != b[cell].get(name):
                out.append(f"{'/'.join(cell)}: {name} differs")
    return out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ---- reading a run -------------------------------------------------------------------------

def read_cells(out: Path) -> list[Any]:
    """Every cell record of run folder ``out`` (read once per run: its summary and its
    comparison with another run are both derived from these)."""
    from musicbench.store import Store

    store = Store(out / "results.sqlite", readonly=True)
    try:
        return store.cells()
    finally:
        store.close()


def comparable(cells: list[Any]) -> dict[tuple, dict]:
    """Cells by their labels: each key and
    :meth:`~musicbench.store.CellRecord.comparable` (every clip and every cell figure with its
    interval, the runner's info and flags; wall times, load and CPU count left out)."""
    return {tuple(r.names): {"key": r.key} | r.comparable() for r in cells}


def cell_summary(cells: list[Any]) -> tuple[int, int, float]:
    """(cells ok, cells, sum of the cells' own seconds as the store records them)."""
    return (sum(r.status == "ok" for r in cells), len(cells), sum(r.seconds for r in cells))


# ---- running -------------------------------------------------------------------------------

@dataclass
class Measurement:
    setting: str
    clips: int
    wall: float
    out: Path
    load_before: float
    cells_ok: int = 0
    cells: int = 0
    cell_seconds: float = 0.0
    command: list[str] = field(default_factory=list)
    records: list[Any] = field(default_factory=list, repr=False)  # the run's cells


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True,
                              check=False).stdout.strip()
    except OSError:
        one, five, fifteen = os.getloadavg()
        return f"load average: {one:.2f}, {five:.2f}, {fifteen:.2f}"


def session_members(sid: int) -> list[int]:
    """Pids of the live (not zombie) processes in session ``sid`` (Linux /proc; empty
    elsewhere)."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "
        if (len(fields) > 3 and fields[0] != "Z" and int(fields[3]) == sid
                and int(entry.name) != os.getpid()):
            pids.append(int(entry.name))
    return pids


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def end_session(proc: subprocess.Popen, settle: float = 5.0) -> list[str]:
    """End what is left of the session ``proc`` leads (it and every process it started, e.g.
    a Ray cluster): after ``settle`` seconds for it to wind down by itself, SIGTERM, then
    SIGKILL after 10 s. Returns "pid (name)" of each process that had to be signalled."""
    deadline = time.monotonic() + (settle if proc.poll() is not None else 0.0)
    while session_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    running = proc.poll() is None
    left = sorted(set(session_members(proc.pid)) | ({proc.pid} if running else set()))
    named = [f"{pid} ({process_name(pid)})" for pid in left]
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        pids = set(session_members(proc.pid)) | ({proc.pid} if proc.poll() is None else set())
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc.poll() is not None and not session_members(proc.pid):
                break
            time.sleep(0.2)
    proc.wait()
    return named


def run_once(setting: str, clips: int, config: Path, out: Path, extra: list[str],
             env: dict[str, str], timeout: float) -> Measurement:
    """``musicbench run config --out out [extra]`` in a session of its own, timed."""
    command = [shutil.which("musicbench") or "musicbench", "run", str(config), "--out", str(out),
               *extra]
    log = out.with_suffix(".log")
    load_before = os.getloadavg()[0]
    print(f"  {setting}, {clips} clips: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    with log.open("w") as sink:
        t0 = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            wall = time.perf_counter() - t0
        except subprocess.TimeoutExpired:
            rc, wall = None, time.perf_counter() - t0
        finally:
            left = end_session(proc)
    if left:
        print(f"  ended {len(left)} process(es) this run left behind: {', '.join(left)}",
              file=sys.stderr)
    if rc != 0:
        tail = log.read_text(errors="replace")[-3000:]
        hint = ""
        if "NotTrainedError" in tail or "musicbench train" in tail:
            hint = ("\nstyle-cnn's weights are not in the cache and this benchmark does not "
                    "train (allow_training = false): run `musicbench train style-cnn` first.")
        what = f"timed out after {timeout:.0f} s" if rc is None else f"exited {rc}"
        raise SystemExit(f"{setting} ({clips} clips) {what}; log {log}:\n{tail}{hint}")
    m = Measurement(setting, clips, wall, out, load_before, command=command,
                    records=read_cells(out))
    m.cells_ok, m.cells, m.cell_seconds = cell_summary(m.records)
    print(f"    {wall:.1f} s", file=sys.stderr, flush=True)
    return m


def check_cache() -> Path:
    """The cache folder, once it is known to hold the dataset and the weights (else exit)."""
    from musicbench.cache import cache_dir

    home = cache_dir()
    missing = []
    if not any((home / "datasets").glob("m21-styles-*")):
        missing.append("the m21-styles dataset (render it with a run of the embedded default, "
                       "`musicbench run --quick`)")
    if not any((home / "models").glob("style-cnn-*.safetensors")):
        missing.append("style-cnn's weights (`musicbench train style-cnn`)")
    if missing:
        raise SystemExit(f"the cache {home} lacks " + " and ".join(missing) + "; this benchmark "
                         "times cached runs and neither renders nor trains: build them first "
                         "(or point MUSICBENCH_HOME at a cache that has them).")
    return home


def rows_of(ms: list[Measurement]) -> list[list[str]]:
    return [[m.setting, str(m.clips), f"{m.wall:.1f}", f"{m.wall / m.clips:.2f}",
             f"{m.cells_ok} of {m.cells} ok" if m.cells_ok != m.cells else str(m.cells),
             f"{m.cell_seconds:.1f}", f"{m.load_before:.2f}"] for m in ms]


HEADER = ["setting", "clips", "wall s", "wall s per clip", "cells", "cells' own s",
          "load (1 min) before"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-clips", type=int, default=16,
                        help="clips of the 1x run (2x and 4x follow; Ray runs at 4x)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run")
    parser.add_argument("--steps", type=int, default=20, help="PGD steps (20 is the figure; "
                        "fewer only for a smoke test)")
    parser.add_argument("--second-attack", action="store_true", help="add FGSM (a second cell)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="[run] batch_size; Ray shards are whole batches")
    parser.add_argument("--skip-ray", action="store_true", help="clip scaling only")
    parser.add_argument("--keep", action="store_true", help="keep the output folders")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    args = parser.parse_args()
    if args.base_clips < 1 or args.threads < 1:
        parser.error("--base-clips and --threads must be >= 1")

    home = check_cache()
    ray_clips = SCALES[-1] * args.base_clips
    shard = None
    if not args.skip_ray:
        try:
            import ray  # noqa: F401
        except ImportError:
            parser.error('Ray is not installed: pip install "musicbench[ray]", or --skip-ray')
        try:
            shard = spread_shard(ray_clips, args.batch_size)
        except ValueError as exc:
            parser.error(str(exc))

    root = Path(tempfile.mkdtemp(prefix="mb-scaling-"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "RAY_TMPDIR": str(root / "ray"),
           "RAY_USAGE_STATS_ENABLED": "0", "MUSICBENCH_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    (root / "ray").mkdir()
    before = uptime()
    attacks = "pgd + fgsm" if args.second_attack else "pgd"
    print(f"scaling: m21-styles / style-cnn / none / {attacks} (eps {EPS}, PGD {args.steps} "
          f"steps), cpu, batch {args.batch_size}, no FAD, OMP_NUM_THREADS={args.threads}, "
          f"os.cpu_count() {os.cpu_count()}, python {sys.version.split()[0]}")
    print(f"before: {before}")
    print(f"folder: {root}", file=sys.stderr)

    local: list[Measurement] = []
    ray_runs: list[Measurement] = []
    same: dict[str, list[str]] = {}
    finished = False
    try:
        print("(a) clips, local executor:", file=sys.stderr)
        for scale in SCALES:
            clips = scale * args.base_clips
            config = root / f"local-{clips}.toml"
            config.write_text(config_text(clips, steps=args.steps,
                                          second_attack=args.second_attack,
                                          batch_size=args.batch_size))
            local.append(run_once(f"local {scale}x", clips, config, root / f"local-{clips}", [],
                                  env, args.timeout))
        if not args.skip_ray:
            print("(b) Ray workers:", file=sys.stderr)
            for workers in RAY_WORKERS:
                config = root / f"ray-{workers}.toml"
                config.write_text(config_text(ray_clips, steps=args.steps,
                                              second_attack=args.second_attack,
                                              batch_size=args.batch_size, ray_workers=workers))
                ray_runs.append(run_once(
                    f"ray, {workers} worker{'s' if workers > 1 else ''}", ray_clips, config,
                    root / f"ray-{workers}", ["--executor", "ray", "--shard-clips", str(shard)],
                    env, args.timeout))
            reference = comparable(local[-1].records)
            for m in ray_runs:
                same[m.setting] = differences(reference, comparable(m.records))
        finished = True
    finally:
        after = uptime()
        if finished and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        elif not finished:
            print(f"stopped; the configs, logs and runs so far are kept in {root}",
                  file=sys.stderr)

    print()
    print("(a) clips, local executor")
    print()
    print(markdown_table(HEADER, rows_of(local)))
    fixed, slope, r2 = fit_line([m.clips for m in local], [m.wall for m in local])
    print()
    print(f"least squares wall = fixed + slope * clips: slope {slope:.3f} s per clip, fixed "
          f"{fixed:.1f} s (r2 {r2:.3f}); at {args.base_clips} clips the fixed cost is "
          f"{fixed / local[0].wall:.0%} of the wall time")
    if ray_runs:
        print()
        print(f"(b) Ray workers, local cluster (ray_local_cpus 2, ray_cpus_per_cell 1), "
              f"{ray_clips} clips, --shard-clips {shard} ({math.ceil(ray_clips / shard)} shards "
              "per cell)")
        print()
        print(markdown_table(HEADER, rows_of(ray_runs)))
        one, two = ray_runs
        print()
        print(f"speed-up of 2 workers over 1: {one.wall / two.wall:.2f}x wall "
              f"({one.wall:.1f} s -> {two.wall:.1f} s); local executor at the same clips: "
              f"{local[-1].wall:.1f} s")
        print(f"Ray's wall time includes starting a local cluster and its worker processes, "
              f"each loading the dataset and model again (1 worker: {one.wall - local[-1].wall:+.1f}"
              f" s against the local executor at the same clips): on a small run that start-up "
              "is much of the figure, and with 2 workers two processes start and load.")
    print()
    print("Every wall time includes process start-up, imports, planning and loading the cached "
          "dataset and model (the real `musicbench run` path), not only the cells; "
          "'cells' own s' is the sum of the cells' compute as the store records it (under Ray "
          "summed over workers, so it can exceed the wall time).")
    for setting, diffs in same.items():
        print()
        print(f"figures of '{setting}' against 'local {SCALES[-1]}x' ({ray_clips} clips; every "
              "clip, every cell figure and interval, flags; timings left out): "
              + ("identical" if not diffs else "DIFFERENT:\n  " + "\n  ".join(diffs)))
    print(f"after: {after}")
    busy = max(m.load_before for m in local + ray_runs)
    if busy >= 0.5 * (os.cpu_count() or 1):
        print(f"note: the machine was busy (1-minute load up to {busy:.2f} on "
              f"{os.cpu_count()} CPUs): read these times as upper bounds, and the speed-up as "
              "what was left over, not as a scaling figure.")
    if args.keep:
        print(f"kept: {root}")
    if any(same.values()):
        raise SystemExit("the Ray runs' figures differ from the local run's (above)")


if __name__ == "__main__":
    main()
