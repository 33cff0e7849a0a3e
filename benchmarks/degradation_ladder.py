"""Degradation ladder: do perceptual metrics order degradations of known severity?

PAMT (arXiv 2509.04985) reports Spearman rho = 0.65 between its distance and human ratings. We
have no listener ratings, so this is a **proxy, not a listening test**: each clip is degraded
along ladders whose order of severity is known by construction, and each metric's distance
between the clean and the degraded clip is ranked against that order. A metric that cannot
order these is unlikely to agree with listeners; one that can may still disagree with them.
The paper's 0.65 is against people and is not comparable with these figures.

Ladders (mild -> severe), every rung applied to the same clips:

- ``masked-noise``: noise shaped to the clip's own masking threshold (PAMT's psychoacoustic
  model, all bands, the whole clip) at -20, -10, 0, +10, +20 dB relative to the threshold:
  inaudible below 0 dB in the model, increasingly audible above;
- ``mp3``: the ``mp3`` defense's real codec at 128, 64, 32, 16, 8 kbps;
- ``lowpass``: the ``lowpass`` defense at 6, 4, 2, 1, 0.5 kHz;
- ``inpaint``: 1, 2, 4, 8 gaps of the inpainter's own length (GACELA: 0.37 s) re-synthesised,
  nested (each rung's gaps contain the previous rung's), in slots spread over the clip.

Within a ladder the order is easy: any distance that grows with the amount of change orders
it (LSD and SNR do, perfectly, on our clips). So a second test asks what only a perceptual
metric should get right, **equal-energy audibility** (a two-alternative forced choice): at
each level (-20, -10, 0 dB re threshold) the clip gets masked noise, and separately white noise
with exactly the same energy (the same SNR). Psychoacoustics (the basis of every perceptual
audio coder) says the noise shaped under the masking threshold is the less audible one; a
metric "chooses right" on a clip when its distance to the masked version is the smaller. SNR
cannot choose (a tie by construction), which is the point of the test. The table gives the
share of clips chosen right with an exact (Clopper-Pearson) interval and the ties; FAD, a set
figure, chooses once per level over all clips.

Per metric and ladder: for every clip, Spearman's rho between the rung index and the metric's
distance (SNR is read as -SNR, since higher SNR means closer); the table gives the mean over
clips with a 95% bootstrap interval (clips resampled, 2000 draws, seeded) and how many clips
the metric orders perfectly (rho = 1). FAD is a set-level figure (one value per rung over all
clips), so its rho is over the rungs alone (n = rungs), without an interval. "Pooled" is the
mean of the per-ladder means: the ladders have no order between them (is 16 kbps MP3 worse
than noise 10 dB over threshold?), so no rho across ladders exists to report.

Clips come from the **valid** split (never test clips). Reads no run store; runs on CPU::

    python benchmarks/degradation_ladder.py [--clips 16] [--seed 0]
        [--metrics lsd,snr,pamt-distance] [--fad-encoder musicnn] [--inpainter gacela]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

Degrade = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
EQUAL_ENERGY_LEVELS_DB = (-20.0, -10.0, 0.0)


@dataclass(frozen=True)
class Rung:
    family: str
    index: int  # 0 = mildest
    label: str
    apply: Degrade


def masked_noise_rungs(sample_rate: int, levels_db: Sequence[float] = (-20, -10, 0, 10, 20)
                       ) -> list[Rung]:
    from musicbench_plugins.defenses.pamt_psychoacoustic import (
        MaskingModel,
        Perturbation,
        shaped_noise,
    )

    model = MaskingModel(sample_rate=sample_rate)

    def at(level: float) -> Degrade:
        def apply(audio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            b, t = audio.shape
            p = Perturbation(level_db=torch.full((b,), float(level)),
                             bands=torch.ones(b, model.n_bands, dtype=torch.bool),
                             start=torch.zeros(b), length=torch.full((b,), t / sample_rate),
                             duration=t / sample_rate)
            return (audio + shaped_noise(audio, p, model, generator)).clamp(-1, 1)
        return apply

    return [Rung("masked-noise", i, f"{level:+g} dB re threshold", at(level))
            for i, level in enumerate(levels_db)]


def preprocessor_rungs(ws: Any, family: str, name: str, key: str, values: Sequence[Any],
                       sample_rate: int, unit: str) -> list[Rung]:
    """Rungs that run a registered preprocessing defense at each parameter value."""
    rungs = []
    for i, value in enumerate(values):
        defense = ws.defense(name, {key: value}, sample_rate)

        def apply(audio: torch.Tensor, generator: torch.Generator, d: Any = defense
                  ) -> torch.Tensor:
            with torch.no_grad():
                return d.forward(audio, generator).clamp(-1, 1)
        rungs.append(Rung(family, i, f"{value:g} {unit}", apply))
    return rungs


def inpaint_rungs(inpainter: Any, length: int, sample_rate: int,
                  gaps: Sequence[int] = (1, 2, 4, 8), seed: int = 0) -> list[Rung]:
    """Nested gap sets: ``max(gaps)`` slots spread over the clip, each with a gap of the
    inpainter's length centred in it; rung k fills the first ``gaps[k]`` slots of one seeded
    order, so every rung's gaps contain the previous rung's."""
    slots = max(gaps)
    gap = round((inpainter.gap_seconds or 0.37) * sample_rate)
    slot = length // slots
    if gap >= slot:
        raise ValueError(f"{slots} gaps of {gap} samples do not fit apart in {length} samples")
    order = torch.randperm(slots, generator=torch.Generator().manual_seed(seed)).tolist()

    def with_gaps(k: int) -> Degrade:
        def apply(audio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            mask = torch.zeros_like(audio, dtype=torch.bool)
            for s in order[:k]:
                start = s * slot + (slot - gap) // 2
                mask[:, start:start + gap] = True
            z = inpainter.sample_latent(audio.shape[0], generator).to(audio.device)
            with torch.no_grad():
                return inpainter.inpaint(audio, mask, z).clamp(-1, 1)
        return apply

    return [Rung("inpaint", i, f"{k} gap(s), {k * gap / sample_rate:.2f} s", with_gaps(k))
            for i, k in enumerate(gaps)]


def equal_energy_pair(audio: torch.Tensor, level_db: float, sample_rate: int,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masked, white)`` versions of ``audio[B, T]``: masked noise at ``level_db`` re the
    clip's threshold, and white Gaussian noise scaled per clip to the same energy as the
    masked noise actually added (after clamping to [-1, 1]; the white version is clamped too,
    which can only remove energy from it)."""
    (rung,) = masked_noise_rungs(sample_rate, (level_db,))
    masked = rung.apply(audio, generator)
    added = (masked - audio).double()
    white = torch.randn(audio.shape, generator=generator, dtype=torch.float64)
    scale = added.norm(dim=1, keepdim=True) / white.norm(dim=1, keepdim=True)
    return masked, (audio.double() + white * scale).clamp(-1, 1).float()


@dataclass
class Choice:
    """Equal-energy audibility for one metric and level: ``right`` clips where the masked
    version is the closer, ``ties`` where the two distances are equal, of ``n``."""

    right: int
    ties: int
    n: int


def choose(clean: torch.Tensor, sample_rate: int, levels_db: Sequence[float],
           metrics: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
           set_metrics: dict[str, Callable[[torch.Tensor, torch.Tensor], float]],
           seed: int = 0, batch: int = 8, rel_tie: float = 1e-6
           ) -> dict[str, dict[float, Choice]]:
    """The equal-energy test of ``clean[N, T]`` at each level, per metric (distances, larger
    = further, as in :func:`evaluate`); a set metric chooses once over all clips (n = 1)."""
    out: dict[str, dict[float, Choice]] = {m: {} for m in [*metrics, *set_metrics]}
    n = clean.shape[0]
    for level in levels_db:
        generator = torch.Generator().manual_seed(seed * 1000 + hash_rung("equal", int(level)))
        pairs = [equal_energy_pair(clean[i:i + batch], level, sample_rate, generator)
                 for i in range(0, n, batch)]
        masked = torch.cat([m for m, _ in pairs])
        white = torch.cat([w for _, w in pairs])
        for name, fn in metrics.items():
            dm, dw = _batched(fn, clean, masked, batch), _batched(fn, clean, white, batch)
            tie = (dm - dw).abs() <= rel_tie * torch.maximum(dm.abs(), dw.abs()).clamp_min(1e-12)
            out[name][level] = Choice(int(((dm < dw) & ~tie).sum()), int(tie.sum()), n)
        for name, fn in set_metrics.items():
            dm, dw = fn(clean, masked), fn(clean, white)
            tie = abs(dm - dw) <= rel_tie * max(abs(dm), abs(dw), 1e-12)
            out[name][level] = Choice(int(dm < dw and not tie), int(tie), 1)
    return out


def render_choices(choices: dict[str, dict[float, Choice]]) -> str:
    from musicbench.metrics import clopper_pearson

    levels = sorted({lv for by_level in choices.values() for lv in by_level})
    lines = ["Equal-energy audibility: % of clips whose masked-noise version the metric puts "
             "closer than white noise of the same energy [exact 95% CI] (right/n; ties). "
             "Right = the masked one (below or at the masking threshold) is closer.", "",
             "| metric | " + " | ".join(f"{lv:+g} dB re threshold" for lv in levels) + " |",
             "|---|" + "---|" * len(levels)]
    for name, by_level in choices.items():
        cells = []
        for lv in levels:
            c = by_level[lv]
            if c.n == 1:  # a set-level metric: one choice over all clips
                cells.append("tie" if c.ties else ("right" if c.right else "wrong"))
                continue
            lo, hi = clopper_pearson(c.right, c.n)
            cells.append(f"{100 * c.right / c.n:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] "
                         f"({c.right}/{c.n}; ties {c.ties})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _batched(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], clean: torch.Tensor,
             degraded: torch.Tensor, batch: int) -> torch.Tensor:
    """``fn(clean, degraded)`` over ``batch`` clips at a time: ``[N]`` float64 on the CPU."""
    return torch.cat([fn(clean[i:i + batch], degraded[i:i + batch]).double().cpu()
                      for i in range(0, clean.shape[0], batch)])


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (average ranks for ties); NaN when either side is constant."""
    from scipy.stats import spearmanr

    if len(set(np.round(y, 12))) < 2:
        return math.nan
    return float(spearmanr(x, y).statistic)


def bootstrap_mean(values: Sequence[float], draws: int = 2000, seed: int = 0
                   ) -> tuple[float, float, float]:
    """Mean and its 95% percentile-bootstrap interval (NaNs dropped)."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(draws, len(v)))].mean(1)
    return float(v.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


@dataclass
class LadderResult:
    """``per_clip[metric][family]``: rho per clip; ``set_level[metric][family]``: (rho, values
    per rung); ``values[metric][family]``: mean distance per rung (for the table)."""

    clips: int
    per_clip: dict[str, dict[str, list[float]]]
    set_level: dict[str, dict[str, tuple[float, list[float]]]]
    values: dict[str, dict[str, list[float]]]
    rungs: dict[str, list[str]]


def evaluate(clean: torch.Tensor, sample_rate: int, rungs: Sequence[Rung],
             metrics: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
             set_metrics: dict[str, Callable[[torch.Tensor, torch.Tensor], float]],
             seed: int = 0, batch: int = 8) -> LadderResult:
    """Degrade ``clean[N, T]`` along every rung and score each metric.

    ``metrics``: name -> ``(clean[B, T], degraded[B, T]) -> distance[B]`` (larger = further;
    callers negate similarity-like metrics such as SNR); ``set_metrics``: name ->
    ``(clean[N, T], degraded[N, T]) -> distance``. Every rung of a clip draws from one
    generator seeded by (seed, rung), so the runs repeat exactly."""
    families: dict[str, list[Rung]] = {}
    for rung in rungs:
        families.setdefault(rung.family, []).append(rung)
    per_clip: dict[str, dict[str, list[float]]] = {m: {} for m in metrics}
    values: dict[str, dict[str, list[float]]] = {m: {} for m in [*metrics, *set_metrics]}
    set_level: dict[str, dict[str, tuple[float, list[float]]]] = {m: {} for m in set_metrics}
    n = clean.shape[0]
    for family, ladder in families.items():
        ladder = sorted(ladder, key=lambda r: r.index)
        dist = {m: np.zeros((n, len(ladder))) for m in metrics}
        set_values = {m: [] for m in set_metrics}
        for j, rung in enumerate(ladder):
            generator = torch.Generator().manual_seed(seed * 1000 + hash_rung(family, j))
            degraded = torch.cat([rung.apply(clean[i:i + batch], generator)
                                  for i in range(0, n, batch)])
            for name, fn in metrics.items():
                dist[name][:, j] = _batched(fn, clean, degraded, batch).numpy()
            for name, fn in set_metrics.items():
                set_values[name].append(float(fn(clean, degraded)))
        ranks = list(range(len(ladder)))
        for name in metrics:
            per_clip[name][family] = [spearman(ranks, dist[name][i]) for i in range(n)]
            values[name][family] = dist[name].mean(0).tolist()
        for name in set_metrics:
            set_level[name][family] = (spearman(ranks, set_values[name]), set_values[name])
            values[name][family] = set_values[name]
    return LadderResult(n, per_clip, set_level, values,
                        {f: [r.label for r in sorted(rs, key=lambda r: r.index)]
                         for f, rs in families.items()})


def hash_rung(family: str, index: int) -> int:
    """A stable small integer per (family, rung) (Python's ``hash`` of a str is salted)."""
    import zlib

    return zlib.crc32(f"{family}/{index}".encode()) % 1000


def _mean_of(values: Sequence[float]) -> str:
    """The mean of the defined values, or a dash when none is (a constant metric)."""
    defined = [v for v in values if not math.isnan(v)]
    return f"{sum(defined) / len(defined):+.2f}" if defined else "—"


def render(result: LadderResult) -> str:
    families = list(result.rungs)
    lines = [(f"{result.clips} valid clips. Spearman rho of each metric's distance against "
              "the known severity order, per ladder: mean over clips [95% bootstrap CI] "
              "(clips ordered perfectly); FAD over the rungs (n = rungs). A proxy, not a "
              "listening test."), "",
             "| metric | " + " | ".join(families) + " | pooled (mean of ladders) |",
             "|---|" + "---|" * (len(families) + 1)]
    for name, by_family in result.per_clip.items():
        cells, means = [], []
        for family in families:
            rhos = by_family[family]
            mean, lo, hi = bootstrap_mean(rhos)
            perfect = sum(1 for r in rhos if not math.isnan(r) and r > 1 - 1e-9)
            cells.append(f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}] ({perfect}/{len(rhos)})")
            means.append(mean)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_mean_of(means)} |")
    for name, by_family in result.set_level.items():
        rhos = [by_family[f][0] for f in families]
        cells = [f"{r:+.2f} (n={len(result.rungs[f])})" for r, f in zip(rhos, families,
                                                                        strict=True)]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_mean_of(rhos)} |")
    lines += ["", "Mean distance per rung (mild -> severe):", ""]
    for family in families:
        lines.append(f"- **{family}** ({'; '.join(result.rungs[family])}): " + "; ".join(
            f"{name} " + ", ".join(f"{v:.3g}" for v in by_family[family])
            for name, by_family in result.values.items() if family in by_family))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", default="m21-styles")
    parser.add_argument("--metrics", default="lsd,snr,pamt-distance",
                        help="per-clip metric plugins, comma-separated")
    parser.add_argument("--fad-encoder", default="musicnn", help="'' to leave FAD out")
    parser.add_argument("--inpainter", default="gacela")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from musicbench.cache import cache_dir
    from musicbench.interfaces import CellAudio
    from musicbench.plugins import PluginSystem
    from musicbench.workspace import Workspace

    ws = Workspace(PluginSystem(), cache_dir=cache_dir(), device=torch.device("cpu"),
                   seed=args.seed)
    dataset = ws.dataset(args.dataset, {})
    examples = list(dataset.examples("valid"))
    pick = torch.randperm(len(examples), generator=torch.Generator().manual_seed(args.seed))
    clean = torch.stack([examples[i].audio for i in pick[:args.clips].tolist()]).float()
    rate = dataset.sample_rate
    rungs = (masked_noise_rungs(rate)
             + preprocessor_rungs(ws, "mp3", "mp3", "bitrate_kbps", (128, 64, 32, 16, 8), rate,
                                  "kbps")
             + preprocessor_rungs(ws, "lowpass", "lowpass", "cutoff_hz",
                                  (6000, 4000, 2000, 1000, 500), rate, "Hz")
             + inpaint_rungs(ws.inpainter(args.inpainter, {}), clean.shape[1], rate,
                             seed=args.seed))
    metrics: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
    for name in [m for m in args.metrics.split(",") if m]:
        metric = ws.metric(name)
        sign = -1.0 if metric.higher_is_better else 1.0  # SNR: closer is higher
        label = f"-{name}" if sign < 0 else name
        metrics[label] = (lambda a, b, m=metric, s=sign: s * m.compute(a, b, rate).double())
    set_metrics = {}
    if args.fad_encoder:
        fad = ws.make("metric", "fad")

        def fad_distance(a: torch.Tensor, b: torch.Tensor) -> float:
            n = a.shape[0]
            cell = CellAudio(dataset=args.dataset, dataset_fingerprint=dataset.fingerprint(),
                             model="", task="classification", sample_rate=rate,
                             ids=[str(i) for i in range(n)], clean=a, adv=b,
                             attacked=torch.ones(n, dtype=torch.bool),
                             success=torch.ones(n, dtype=torch.bool),
                             targets=torch.zeros(n, dtype=torch.long),
                             fad_encoder=args.fad_encoder)
            return fad.compute(cell, ws.ctx).values["fad"]
        set_metrics["fad"] = fad_distance
    result = evaluate(clean, rate, rungs, metrics, set_metrics, seed=args.seed)
    print(render(result), end="")
    print()
    print(render_choices(choose(clean, rate, EQUAL_ENERGY_LEVELS_DB, metrics, set_metrics,
                                seed=args.seed)), end="")


if __name__ == "__main__":
    main()
