"""Paired comparison of two attacks' success on the same clips of a stored run.

Two cells of one run that share dataset, model and defense attack the same clips (the sample
draw depends only on the run seed), so "A beats B" is a paired question: per clip, did A
succeed where B did not? Printed per pair of attacks, over the clips attacked by both:

- ASR of each, and the difference A - B with its 95% percentile-bootstrap interval over clips
  (the same bootstrap as the leaderboard's CIs, :func:`musicbench.metrics.bootstrap_ci`);
- the discordant clips (A only, B only) and the exact two-sided McNemar p-value (a binomial
  test on the discordant pairs), which is the test for a paired difference of proportions
  when the pairs are few.

    python benchmarks/paired_asr.py runs/maia --model style-cnn maia-bb nes zoo
    (A = the first attack label, compared with each of the others)

Reads the store only; nothing is run.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from musicbench.metrics import bootstrap_ci
from musicbench.store import CellRecord, Store


def paired(a: CellRecord, b: CellRecord) -> dict[str, float]:
    """Paired success statistics of cells ``a`` and ``b`` over the clips attacked by both."""
    sa = {s.sample_id: s.success for s in a.samples if s.attacked}
    sb = {s.sample_id: s.success for s in b.samples if s.attacked}
    ids = sorted(sa.keys() & sb.keys())
    xa = np.array([sa[i] for i in ids], dtype=np.float64)
    xb = np.array([sb[i] for i in ids], dtype=np.float64)
    diff = xa - xb
    only_a, only_b = int(((xa == 1) & (xb == 0)).sum()), int(((xa == 0) & (xb == 1)).sum())
    discordant = only_a + only_b
    p = binomtest(only_a, discordant, 0.5).pvalue if discordant else math.nan
    low, high = bootstrap_ci(diff)
    return {"n": len(ids), "asr_a": xa.mean() if ids else math.nan,
            "asr_b": xb.mean() if ids else math.nan, "diff": diff.mean() if ids else math.nan,
            "low": low, "high": high, "only_a": only_a, "only_b": only_b, "p": p}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a run's output folder (with results.sqlite)")
    parser.add_argument("attacks", nargs="+", help="attack labels: A, then the ones to compare")
    parser.add_argument("--model", required=True, help="model label")
    parser.add_argument("--defense", default="none")
    args = parser.parse_args()
    if len(args.attacks) < 2:
        parser.error("name at least two attack labels")
    db = args.out / "results.sqlite"
    if not db.exists():
        parser.error(f"no results.sqlite in {args.out}")
    store = Store(db)
    try:
        cells = {}
        for r in store.cells():
            _, model, defense, attack = r.names
            if model == args.model and defense == args.defense and r.status == "ok":
                cells[attack] = r
    finally:
        store.close()
    missing = [a for a in args.attacks if a not in cells]
    if missing:
        parser.error(f"no finished cell for {missing} on model '{args.model}', defense "
                     f"'{args.defense}'; finished: {sorted(cells)}")
    first = args.attacks[0]
    print(f"{args.out} / {args.model} / {args.defense}: {first} against each; paired over the "
          "clips both attacked; 95% bootstrap CI of the ASR difference; exact McNemar p")
    for other in args.attacks[1:]:
        s = paired(cells[first], cells[other])
        print(f"  {first} vs {other}: n {s['n']}, ASR {100 * s['asr_a']:.1f} vs "
              f"{100 * s['asr_b']:.1f}, difference {100 * s['diff']:+.1f} "
              f"[{100 * s['low']:+.1f}, {100 * s['high']:+.1f}], discordant "
              f"{s['only_a']} vs {s['only_b']}, p = {s['p']:.3g}")


if __name__ == "__main__":
    main()
