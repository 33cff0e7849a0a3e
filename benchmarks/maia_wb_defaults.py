"""MAIA-WB's α, blend, r, mask, d and balance chosen on validation clips, never on test clips.

Liu et al., "An Inpainting-Based Approach for Music Adversarial Attacks" (ISMIR 2025, arXiv
2509.04980) publish none of the step size α, the distance d, the number of regions r or how a
box is cut out of a fill; our reading adds the re-inpainting blend w and the gradient balance
(docs/maia.md). This script screens each of them **one at a time** around the current defaults
of :class:`MAIAWBParams` (every other parameter, λ's included, at its default), on clips drawn
with ``--seed`` from each dataset's **valid** split: ``style-cnn`` on ``m21-styles`` and
``cover-net`` on ``m21-covers``' valid queries against its valid references. Clips, attack
calls and the ``lsd`` / ``snr`` metric plugins are those of ``benchmarks/maia_lambda_grid.py``
(the harness's own pieces; ``Attack.__call__`` re-scores success). Every setting gets a fresh
generator with the same seed, so all settings attack the same clips from the same initial
latents: comparisons are paired.

Candidates (:func:`sweeps`): ``alpha`` {0.003, 0.01, 0.03}; ``reinpaint_blend`` {0.1, 0.2, 0.5};
``regions`` r ∈ {1, 2, 3} **at the same region budget**: each region 1/r of the inpainter's gap,
so every r regenerates the same total length (more audio always fools more clips, so r at a
larger budget is a threat model, not a setting to tune: leaderboards/maia_regions.md);
``mask`` {time, tf-box} (a box changes a subset of the same segments: the same budget);
``distance`` {logmag, waveform}; ``balance`` {normalized, raw}.

**Rule** (fixed before running; the criterion of maia_lambda_grid.py): for each parameter, the
value with the highest ASR averaged over the targets (each target weighs the same); ties by the
lower mean LSD of successful clips (averaged over the targets that have any); then the current
default (a change needs a strict gain). The per-parameter winners are then run together once;
if that combination ranks below the current defaults by the same rule, the current defaults
stand. ASR first so that the leaderboard does not understate MAIA-WB; LSD second because the
paper's claim is "higher ASR at lower LSD"; no exchange rate between them. An exact McNemar p
against the default (clips of both targets pooled) is printed beside each value: it is not part
of the rule, it says whether a difference is more than chance on this many clips.

    python benchmarks/maia_wb_defaults.py [--clips 32] [--seed 0] [--targets style-cnn ...]
        [--threads 1]

A screen sized for a shared CPU: one parameter at a time (interactions untested except for the
combined run), 32 clips drawn per target by default. Datasets, weights and gacela come from the
cache (``~/.cache/musicbench``); nothing is trained here.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from musicbench.cache import cache_dir
from musicbench.metrics import clopper_pearson
from musicbench.plugins import get_plugins
from musicbench.stats import mcnemar_exact_p
from musicbench.workspace import Workspace
from musicbench_plugins.attacks.maia_masks import natural_gap_seconds
from musicbench_plugins.attacks.maia_wb import MAIAWBParams

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling maia_lambda_grid
from maia_lambda_grid import TARGETS, Clips, Point, attack_clips, fmt, macro, valid_clips

DEFAULTS = {f.name: f.default for f in fields(MAIAWBParams) if f.default is not MISSING}
"""The current defaults, read from the code (the value each sweep keeps unless beaten)."""


def sweeps(gap: float) -> dict[str, dict[Any, dict[str, Any]]]:
    """parameter -> {value: the maia-wb parameters that set it}; ``gap`` is the inpainter's
    own gap in seconds, shared among r regions so that every r has the same region budget."""
    return {
        "alpha": {a: {"alpha": a} for a in (0.003, 0.01, 0.03)},
        "reinpaint_blend": {w: {"reinpaint_blend": w} for w in (0.1, 0.2, 0.5)},
        "regions": {r: {"regions": r} if r == 1 else {"regions": r, "gap_seconds": gap / r}
                    for r in (1, 2, 3)},
        "mask": {m: {"mask": m} for m in ("time", "tf-box")},
        "distance": {d: {"distance": d} for d in ("logmag", "waveform")},
        "balance": {b: {"balance": b} for b in ("normalized", "raw")},
    }


@dataclass
class Run:
    """One setting on one target's attacked clips: per-clip outcomes, figures, time."""

    hits: list[bool]
    lsd: float  # mean over successful clips (NaN when none)
    snr: float
    seconds: float

    @property
    def point(self) -> Point:
        return Point(len(self.hits), sum(self.hits), self.lsd, self.snr, self.seconds)


def run_setting(ws: Workspace, model_name: str, clips: Clips, params: dict[str, Any], seed: int,
                batch: int) -> Run:
    """``maia-wb`` with ``params`` on every attacked clip, through ``Attack.__call__``."""
    hit, mean, seconds = attack_clips(ws, model_name, clips, params, seed, batch)
    return Run(hit.tolist(), mean["lsd"], mean["snr"], seconds)


def rank_key(runs: list[Run], is_default: bool) -> tuple[float, float, bool]:
    """The rule's order (smaller is better): higher macro ASR, lower macro LSD, the default."""
    points = [r.point for r in runs]
    lsd = macro(points, "lsd")
    return (-macro(points, "asr"), math.inf if math.isnan(lsd) else lsd, not is_default)


def choose(table: dict[Any, list[Run]], default: Any) -> Any:
    """The value of one parameter that the rule (module docstring) picks; ``table`` maps each
    candidate value to its runs, one per target, in the same target order."""
    if default not in table:
        raise ValueError(f"the current default {default!r} is not among the candidates "
                         f"{list(table)}: a sweep must include it")
    return min(table, key=lambda value: rank_key(table[value], value == default))


def versus(runs: list[Run], base: list[Run]) -> tuple[int, int, float]:
    """Clips (pooled over targets) fooled by ``runs`` only, by ``base`` only, and the exact
    McNemar p of that split."""
    only = [(a and not b, b and not a) for r, q in zip(runs, base, strict=True)
            for a, b in zip(r.hits, q.hits, strict=True)]
    gained, lost = sum(g for g, _ in only), sum(lo for _, lo in only)
    return gained, lost, mcnemar_exact_p(gained, lost)


def asr_cell(run: Run) -> str:
    k, n = sum(run.hits), len(run.hits)
    lo, hi = clopper_pearson(k, n)
    return f"{k}/{n} = {fmt(k / n if n else math.nan, 3)} [{fmt(lo, 3)}, {fmt(hi, 3)}]"


def print_table(parameter: str, table: dict[Any, list[Run]], default: Any,
                targets: list[str]) -> None:
    print(f"\n### {parameter} (current default {default!r})\n")
    head = "".join(f" {t} ASR k/n [exact 95%] | LSD ↓ | SNR dB | s/clip |" for t in targets)
    print(f"| value |{head} mean ASR | mean LSD | vs default: +/− clips, McNemar p |")
    print("|---" * (4 + 4 * len(targets)) + "|")
    for value, runs in table.items():
        cells = "".join(f" {asr_cell(r)} | {fmt(r.lsd, 3)} | {fmt(r.snr, 1)} "
                        f"| {r.seconds / max(1, len(r.hits)):.2f} |" for r in runs)
        points = [r.point for r in runs]
        gained, lost, p = versus(runs, table[default])
        tag = " (default)" if value == default else ""
        print(f"| {value!r}{tag} |{cells} {fmt(macro(points, 'asr'), 3)} "
              f"| {fmt(macro(points, 'lsd'), 3)} | +{gained} / −{lost}, p {p:.2g} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32, help="valid clips drawn per target")
    parser.add_argument("--seed", type=int, default=0, help="clip draw and attack generator")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--targets", nargs="+", default=[m for m, _, _ in TARGETS],
                        choices=[m for m, _, _ in TARGETS])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    ws = Workspace(get_plugins(), cache_dir=cache_dir(), device=torch.device(args.device),
                   allow_training=False, seed=args.seed)
    gap = natural_gap_seconds(ws.attack("maia-wb").inpainter)
    plan = sweeps(gap)
    print(f"maia-wb defaults on valid clips, one parameter at a time around the current "
          f"defaults (a screen: interactions untested except the combined run); seed "
          f"{args.seed}, {args.clips} clips drawn per target; region budget {gap:.3f} s for "
          f"every r; torch {torch.__version__}, {args.threads} thread(s), {args.device}, "
          f"{platform.platform()}")
    print("rule: highest ASR averaged over targets, ties by lower mean LSD of fooled clips, "
          "then the current default")
    chosen_targets = [t for t in TARGETS if t[0] in args.targets]
    clips = {}
    for model_name, dataset_name, pseudo in chosen_targets:
        clips[model_name] = valid_clips(ws, model_name, dataset_name, args.clips, args.seed,
                                        args.batch, pseudo)
        c = clips[model_name]
        print(f"{model_name} / {dataset_name} (valid): {c.drawn} drawn, {len(c.audio)} "
              f"attacked{'; ' + c.note if c.note else ''}")
    cache: dict[tuple[tuple[str, Any], ...], list[Run]] = {}

    def runs_of(params: dict[str, Any]) -> list[Run]:
        """One run per target; a setting is run once however many sweeps contain it."""
        key = tuple(sorted((k, v) for k, v in params.items() if DEFAULTS.get(k) != v))
        if key not in cache:
            cache[key] = [run_setting(ws, m, clips[m], dict(key), args.seed, args.batch)
                          for m, _, _ in chosen_targets]
        return cache[key]

    names = [m for m, _, _ in chosen_targets]
    winners: dict[str, Any] = {}
    for parameter, candidates in plan.items():
        table = {value: runs_of(params) for value, params in candidates.items()}
        print_table(parameter, table, DEFAULTS[parameter], names)
        winners[parameter] = choose(table, DEFAULTS[parameter])
        print(f"\nchosen {parameter} = {winners[parameter]!r}", flush=True)
    changed = {k: v for k, v in winners.items() if v != DEFAULTS[k]}
    chosen = {}
    if changed:
        combined = {k2: v2 for k, v in changed.items() for k2, v2 in plan[k][v].items()}
        table = {"current defaults": runs_of({}), f"winners {combined}": runs_of(combined)}
        print_table("combined", table, "current defaults", names)
        if choose(table, "current defaults") != "current defaults":
            chosen = combined
    print(f"\nchosen defaults: {chosen or 'the current ones'} (current: "
          f"{ {k: DEFAULTS[k] for k in plan} })")
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
