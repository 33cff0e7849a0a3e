"""The README's first command, timed as a newcomer runs it: `musicbench run` on a fresh cache,
then again on the warm cache (issue 22's targets: warm <= 45 s, fresh <= 5 min, peak <= 2 GB,
the board unchanged).

    python benchmarks/first_run.py [--musicnn-wheel PATH] [--keep DIR]

Runs the installed ``musicbench`` command twice in subprocesses with ``MUSICBENCH_HOME`` set
to an empty temporary folder (the musicnn wheel, which the first run would fetch with pip, is
handed over with ``MUSICBENCH_MUSICNN_WHEEL`` where the machine is offline): fresh, then warm
into a new ``--out``. Prints each run's wall time, the children's peak resident set (the
kernel's count, ``getrusage``), the cell lines the run printed, and whether each run's cells
are the published board's (``leaderboards/runs/default.sqlite``): the same keys and the same
records, wall times aside.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PUBLISHED = REPO / "leaderboards" / "runs" / "default.sqlite"


def timed_run(home: Path, out: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS of this child in GiB, its stderr) of `musicbench run`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    done = subprocess.run(["musicbench", "run", "--out", str(out)], env=env | {
        "MUSICBENCH_HOME": str(home)}, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if done.returncode != 0:
        sys.exit(f"musicbench run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    # ru_maxrss is the largest child so far: a later, smaller run reports the earlier peak
    return wall, max(peak, before) / 2**20, done.stderr


def same_as_published(out: Path) -> str:
    from musicbench.leaderboard import planned_run

    mine, _ = planned_run(out)
    published, _ = planned_run(PUBLISHED)
    keys = {r.key for r in mine}
    theirs = {r.key: r for r in published}
    if keys != set(theirs):
        return f"other cells than the published board ({len(keys - set(theirs))} new keys)"
    differ = [r.names[3] for r in mine if r.comparable() != theirs[r.key].comparable()]
    return ("the published board's cells, record for record" if not differ else
            f"the published board's keys, but records differ in: {', '.join(differ)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--musicnn-wheel", type=Path,
                        default=Path.home() / ".cache/musicbench/musicnn/"
                        "musicnn-0.1.0-py3-none-any.whl")
    parser.add_argument("--keep", type=Path, help="keep the home and runs in this folder")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="musicbench-first-run-"))
    home = root / "home"
    home.mkdir(parents=True, exist_ok=False)
    env = dict(os.environ)
    if args.musicnn_wheel.is_file():
        env["MUSICBENCH_MUSICNN_WHEEL"] = str(args.musicnn_wheel)
    for name in ("fresh", "warm"):
        wall, peak, log = timed_run(home, root / name, env)
        cells = [line.strip() for line in log.splitlines()
                 if re.match(r"\s*(cell .*: done in|clips: .*: done in|m21-styles: )", line)]
        print(f"{name}: {wall:.0f} s wall ({wall / 60:.1f} min), peak RSS {peak:.2f} GiB "
              f"(largest child so far)")
        for line in cells:
            print(f"    {line}")
        if PUBLISHED.is_file():
            print(f"    cells: {same_as_published(root / name)}")
    print(f"files in {root}")


if __name__ == "__main__":
    main()
