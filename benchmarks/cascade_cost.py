"""What the survivor cascade saves: one row of leaderboards/configs/standard.toml (style-cnn,
defense `none`, m21-styles) run with ``[run] cascade = true`` and ``false``, each cell's attack
seconds and its clips, and the ratio of the row's total to its first attack's cost.

Target (issue 21, docs/protocol.md): with the cascade, the whole ensemble costs at most 1.3x
the first attack on an undefended model (AutoAttack's point: the later attacks only see what
the earlier ones left). Both worst cases are printed: they agree up to the random starts
(an attack draws per batch, and a cascade hands it fewer clips per batch).

    python benchmarks/cascade_cost.py [--samples 32] [--out /tmp/cascade-cost]

Runs through the harness (``musicbench run`` on a generated config), with the sanity gates
off (the undefended row has none anyway) and no FAD, on the device torch picks. Seconds are
attack seconds (``CellRecord.attack_seconds``), which exclude loading and clean scoring; run
on an idle machine (the load average is printed).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path

from musicbench.leaderboard import _summaries, cell_row
from musicbench.plugins import PluginSystem
from musicbench.session import RunOptions, execute

STANDARD = Path(__file__).parents[1] / "leaderboards" / "configs" / "standard.toml"


def row_config(samples: int, cascade: bool) -> str:
    """standard.toml's [[attacks]] on the style-cnn / none row, at ``samples`` clips."""
    attacks = STANDARD.read_text(encoding="utf-8").split("[[attacks]]", 1)[1]
    tomllib.loads("[[attacks]]" + attacks)  # the config's own entries, unchanged
    return (f'[run]\nname = "cascade-cost"\nseed = 0\nsamples = {samples}\nbatch_size = 32\n'
            f'fad_encoder = ""\nsanity = false\ncascade = {str(cascade).lower()}\n\n'
            '[[datasets]]\nname = "m21-styles"\n\n[[models]]\nname = "style-cnn"\n\n'
            '[[defenses]]\nname = "none"\n\n[[attacks]]' + attacks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("/tmp/cascade-cost"))
    args = parser.parse_args()
    plugins = PluginSystem()
    worst: dict[bool, tuple[int, int]] = {}
    for cascade in (False, True):
        folder = args.out / ("cascade" if cascade else "independent")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "run.toml").write_text(row_config(args.samples, cascade))
        outcome = execute(RunOptions(config=folder / "run.toml", out=folder / "out"), plugins)
        records = outcome.records
        print(f"\ncascade = {str(cascade).lower()}: {args.samples} clips, load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"{'attack':<12} {'n att':>5} {'n ok':>5} {'attack s':>9}")
        for r in records:
            print(f"{r.names[3]:<12} {r.info.n_attacked:>5} {r.info.n_success:>5} "
                  f"{r.attack_seconds:>9.1f}")
        total = sum(r.attack_seconds for r in records)
        first = records[0].attack_seconds
        print(f"total {total:.1f} s = {total / first:.2f}x the first attack ({first:.1f} s)")
        rows = [cell_row(r) for r in records]
        (summary,), _, _ = _summaries(records, rows)
        (case,) = summary.worst_case
        worst[cascade] = (case.survivors, case.n)
        print(f"worst case: {case.survivors}/{case.n} clips survive every attack")
    # Not identical by construction: an attack's random draws are per batch, and a cascade
    # hands it fewer clips per batch, so a clip's random start differs between the two runs.
    print(f"\nworst case without / with the cascade: {worst[False][0]}/{worst[False][1]} vs "
          f"{worst[True][0]}/{worst[True][1]} clips")

if __name__ == "__main__":
    main()
