"""Our PGD and C&W against torchattacks, IBM ART and Foolbox 3 on the same model, clips and steps.

docs/benchmarks.md records that the design asks that our PGD and C&W be at least as fast as the peer libraries with
the same success within CI. ``benchmarks/torchattacks_compare.py`` checks torchattacks; this
script adds IBM ART (``adversarial-robustness-toolbox``: ``PyTorchClassifier`` +
``ProjectedGradientDescent`` / ``CarliniL2Method``) and Foolbox 3 (``fb.PyTorchModel`` +
``LinfPGD`` / ``L2CarliniWagnerAttack``) in one run, and prints markdown tables: per attack and
library the wall time to finish the batch, the ASR with an exact Clopper–Pearson 95% interval
(``musicbench.metrics.clopper_pearson``), the median L2 of the fooled clips, and the forward
and backward network passes per clip (hooks on the network); then per peer the ratios ours /
peer and, since every library attacks the same clips, the discordant clips and the exact
McNemar p (``musicbench.stats.mcnemar_exact_p``).

    python benchmarks/peer_compare.py [--model style-cnn|tiny] [--batch 16] [--pgd-steps 20]
        [--cw-steps 50] [--cw-c 0.1] [--threads 1] [--repeats 1]
        [--peers torchattacks art foolbox]

None of the peers is a dependency of musicbench, and each is optional: one that does not import
is reported and skipped. Install them into a throwaway environment that reuses our torch
(``python -m venv --system-site-packages /tmp/peer-venv``, then ``pip install --no-deps`` each
wheel and the few small packages its import needs: docs/benchmarks.md lists them) and run this
script with that environment's python.

Model and clips come from ``torchattacks_compare.load`` (the trained ``style-cnn`` when its
checkpoint is cached, else the random-weight tiny model; the header line says which),
and every returned waveform is scored by the same ``Scorer`` (``torchattacks_compare.measure``,
which also asserts that the network is still in eval mode, with unchanged parameter dtypes, and
that the clips are in [-1, 1]). Every attack is untargeted (``targeted=False``) with
confidence / κ = ``--kappa`` (0) and one C&W binary-search step, so each library takes at most
``--cw-steps`` optimiser steps per clip.

How each library's conventions map onto ours (waveforms in [-1, 1]; see :func:`in_range`):

- **torchattacks** works in [0, 1]: it attacks ``x01 -> model(2 x01 - 1)``, every radius and
  step size is halved, and its C&W ``c`` is ours / 4 (``‖x̂01 - x01‖² = ‖x̂ - x‖² / 4``, so its
  objective is ours / 4). Its C&W optimises the same ``w`` (``x = tanh(w)``) with Adam: the
  learning rate is unchanged. Its C&W stops the whole batch when the summed cost rises at a
  check (it cannot be turned off).
- **ART** takes ``clip_values``: we give it ``(-1, 1)``, so ``eps``, ``eps_step`` and ``c``
  are ours unchanged, and its tanh map is ours (``x = tanh(w)``). PGD: ``norm=inf``,
  ``num_random_init=1`` (one uniform start in the ball, from numpy's global generator, which
  ``measure`` seeds), ``batch_size`` = the batch (ART's default is 32 for PGD and **1** for
  C&W). ART's C&W is not Adam: each iteration is a gradient step in tanh space with a line
  search (up to ``max_halving`` = 5 halvings and ``max_doubling`` = 5 doublings of a per-clip
  learning rate carried over iterations), so its learning rate (``--art-cw-lr``, default ART's
  0.01) has no Adam equivalent and each iteration costs several forward passes and two class
  gradients (one backward pass per distinct label in the batch each). ``max_iter`` =
  ``--cw-steps`` iterations; it has no early abort. Both ART attacks end with two extra
  prediction passes, clean and adversarial (the success rate they log, computed whatever the
  log level).
- **Foolbox 3** takes ``bounds``; it does *not* need [0, 1]. We give it ``(-1, 1)``, so the
  radius (``epsilons``), ``abs_stepsize`` and ``initial_const`` are ours unchanged, and its
  C&W optimises ``w = atanh(0.999999 x) + δ`` with Adam at the same learning rate
  (``stepsize``) and the same objective (its distance is taken from ``0.999999 x``, a
  difference of ~1e-6 of the clip's norm). PGD: ``LinfPGD(abs_stepsize, steps,
  random_start=True)`` (uniform start, from torch's global generator); we score its
  ``clipped`` output. Its C&W early abort is batch-level (the summed loss must drop by 0.01%
  every ``ceil(steps / 10)`` steps); ``--cw-no-abort`` turns it off with ours. Both attacks end
  with one re-scoring pass. Its C&W returns an all-zero clip (its initial "best") for a clip it
  never fooled; we return the clean clip there instead, as ours and ART do, and say how many.
- **ours**: PGD and C&W through ``Attack.__call__``, which re-scores every returned clip (one
  pass, counted); PGD stops each clip at its first successful step, C&W aborts each clip early
  by the paper's rule (``--cw-no-abort`` turns it off).

Before timing, every library's two attacks run once, untimed, on the first clip, so one-time
costs are not charged to whoever runs first: torch's first ``torch.optim.Adam`` (torchattacks'
C&W) imports ``torch._dynamo``, 1.5–2.5 s on this machine, more than a tiny model's whole
attack. ``--repeats`` > 1 reports the best of several timed runs.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from musicbench.checkpoints import state_digest
from musicbench.metrics import clopper_pearson
from musicbench.stats import mcnemar_exact_p
from musicbench_plugins.attacks.cw import CW, CWParams
from musicbench_plugins.attacks.pgd import PGD, PGDParams

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling torchattacks_compare
from torchattacks_compare import (
    Measurement,
    PassCounter,
    Waveform01,
    WaveformNet,
    comparison_parser,
    from01,
    load,
    measure,
    ours,
    to01,
)

PEERS = ("torchattacks", "art", "foolbox")
OUR_RANGE = (-1.0, 1.0)


@dataclass(frozen=True)
class Settings:
    """One comparison in our convention (waveforms in [-1, 1]): PGD's L-inf radius ``eps``,
    ``step_size`` and ``pgd_steps``; C&W's constant ``cw_c``, Adam ``cw_lr``, ``cw_steps`` (one
    binary-search step) and confidence ``kappa`` (a logit margin, the same in every range)."""

    eps: float = 0.002
    step_size: float = 0.00025
    pgd_steps: int = 20
    cw_c: float = 0.1
    cw_lr: float = 3e-4
    cw_steps: int = 50
    kappa: float = 0.0


def in_range(s: Settings, bounds: tuple[float, float]) -> Settings:
    """``s`` for a library that sees each clip mapped affinely from [-1, 1] onto ``bounds``
    ``(lo, hi)``: distances scale by ``r = (hi - lo) / 2``, so radii and step sizes are
    multiplied by ``r`` and C&W's ``c`` by ``r²`` (its squared distance term scales by ``r²``;
    the margin term does not: the whole objective is ours times ``r²``, same minimiser). The
    Adam learning rate acts on ``w`` with ``x = tanh(w)`` in every range, so it is unchanged;
    steps and κ are unchanged."""
    lo, hi = bounds
    if not hi > lo:
        raise ValueError(f"bounds must be (lo, hi) with hi > lo, got {bounds}")
    r = (hi - lo) / (OUR_RANGE[1] - OUR_RANGE[0])
    return replace(s, eps=s.eps * r, step_size=s.step_size * r, cw_c=s.cw_c * r * r)


def torchattacks_kwargs(s: Settings) -> tuple[dict, dict]:
    """Keyword arguments of ``torchattacks.PGD`` and ``torchattacks.CW`` (inputs in [0, 1])."""
    t = in_range(s, (0.0, 1.0))
    return ({"eps": t.eps, "alpha": t.step_size, "steps": t.pgd_steps, "random_start": True},
            {"c": t.cw_c, "kappa": t.kappa, "steps": t.cw_steps, "lr": t.cw_lr})


def art_kwargs(s: Settings, batch: int, cw_lr: float) -> tuple[dict, dict]:
    """Keyword arguments of ART's ``ProjectedGradientDescent`` and ``CarliniL2Method`` for a
    ``PyTorchClassifier`` with ``clip_values=(-1, 1)`` (our range: nothing rescaled). ``cw_lr``
    is ART's line-search learning rate, not an Adam rate (see the module docstring)."""
    t = in_range(s, OUR_RANGE)
    return ({"norm": np.inf, "eps": t.eps, "eps_step": t.step_size, "max_iter": t.pgd_steps,
             "targeted": False, "num_random_init": 1, "batch_size": batch, "verbose": False},
            {"confidence": t.kappa, "targeted": False, "learning_rate": cw_lr,
             "binary_search_steps": 1, "max_iter": t.cw_steps, "initial_const": t.cw_c,
             "batch_size": batch, "verbose": False})


def foolbox_kwargs(s: Settings, abort_early: bool) -> tuple[dict, float, dict]:
    """``(LinfPGD kwargs, its epsilon, L2CarliniWagnerAttack kwargs)`` for a ``PyTorchModel``
    with ``bounds=(-1, 1)`` (our range: nothing rescaled)."""
    t = in_range(s, OUR_RANGE)
    return ({"abs_stepsize": t.step_size, "steps": t.pgd_steps, "random_start": True}, t.eps,
            {"binary_search_steps": 1, "steps": t.cw_steps, "stepsize": t.cw_lr,
             "confidence": t.kappa, "initial_const": t.cw_c, "abort_early": abort_early})


def nothing_found_to_clean(adv: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Foolbox's C&W returns an all-zero clip where it found no adversarial; put the clean
    clip ``x[B, T]`` there (what ours and ART return). Returns ``(adv[B, T], how many)``."""
    never = (adv == 0).all(dim=1) & (x != 0).any(dim=1)
    return torch.where(never.unsqueeze(1), x, adv), int(never.sum())


# One attack of one library: a title key ("pgd" / "cw") -> fn() returning adv[B, T] in [-1, 1].
Runs = dict[str, Callable[[], torch.Tensor]]


def our_runs(model, x: torch.Tensor, y: torch.Tensor, s: Settings, args) -> Runs:
    pgd = PGD(PGDParams(eps=s.eps, steps=s.pgd_steps, step_size=s.step_size))
    cw = CW(CWParams(initial_const=s.cw_c, learning_rate=s.cw_lr, steps=s.cw_steps,
                     binary_search_steps=1, kappa=s.kappa, abort_early=not args.cw_no_abort))
    return {"pgd": ours(pgd, model, x, y, args.seed), "cw": ours(cw, model, x, y, args.seed)}


def torchattacks_runs(model, x: torch.Tensor, y: torch.Tensor, s: Settings, args) -> Runs:
    import torchattacks

    wrapped = Waveform01(model).eval()
    pgd_kw, cw_kw = torchattacks_kwargs(s)
    pgd, cw = torchattacks.PGD(wrapped, **pgd_kw), torchattacks.CW(wrapped, **cw_kw)
    for attack in (pgd, cw):
        attack.set_model_training_mode(model_training=False)  # booleans: see torchattacks_compare
    x01 = to01(x)
    return {"pgd": lambda: from01(pgd(x01, y)), "cw": lambda: from01(cw(x01, y))}


def art_runs(model, x: torch.Tensor, y: torch.Tensor, s: Settings, args) -> Runs:
    from art.attacks.evasion import CarliniL2Method, ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(model=WaveformNet(model).eval(), loss=torch.nn.CrossEntropyLoss(),
                            input_shape=tuple(x.shape[1:]), nb_classes=len(model.labels),
                            clip_values=OUR_RANGE, device_type="cpu")
    pgd_kw, cw_kw = art_kwargs(s, x.shape[0], args.art_cw_lr)
    pgd, cw = ProjectedGradientDescent(clf, **pgd_kw), CarliniL2Method(clf, **cw_kw)
    xn, yn = x.numpy(), y.numpy()
    return {"pgd": lambda: torch.from_numpy(pgd.generate(xn, yn)),
            "cw": lambda: torch.from_numpy(cw.generate(xn, yn))}


def foolbox_runs(model, x: torch.Tensor, y: torch.Tensor, s: Settings, args) -> Runs:
    import foolbox as fb

    fmodel = fb.PyTorchModel(WaveformNet(model).eval(), bounds=OUR_RANGE, device=x.device)
    pgd_kw, eps, cw_kw = foolbox_kwargs(s, abort_early=not args.cw_no_abort)
    pgd, cw = fb.attacks.LinfPGD(**pgd_kw), fb.attacks.L2CarliniWagnerAttack(**cw_kw)

    def run_cw() -> torch.Tensor:
        raw, _, _ = cw(fmodel, x, y, epsilons=None)
        adv, never = nothing_found_to_clean(raw, x)
        if never:
            print(f"  (foolbox C&W found nothing for {never} of {len(x)} clip(s): "
                  "clean clip returned)")
        return adv

    return {"pgd": lambda: pgd(fmodel, x, y, epsilons=eps)[1], "cw": run_cw}


BUILDERS = {"musicbench": our_runs, "torchattacks": torchattacks_runs, "art": art_runs,
            "foolbox": foolbox_runs}


def peer_version(name: str) -> str | None:
    """The peer's version, or None (with a printed line) when it does not import."""
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        print(f"{name} is not importable ({err}): skipped")
        return None
    return getattr(module, "__version__", "?")


def fmt_ci(m: Measurement, n: int) -> str:
    lo, hi = clopper_pearson(m.k, n)
    return f"{m.k}/{n} = {m.k / n:.3f} [{lo:.3f}, {hi:.3f}]"


def fmt(v: float, spec: str) -> str:
    return "–" if math.isnan(v) else format(v, spec)


def main() -> None:
    parser = comparison_parser(
        __doc__.splitlines()[0], cw_c_help="our c (rescaled per library)",
        cw_lr_help="Adam's (ours, torchattacks, Foolbox)",
        no_abort_help="our and Foolbox's C&W without early abort")
    parser.add_argument("--art-cw-lr", type=float, default=0.01,
                        help="ART's C&W line-search learning rate (not Adam; ART's default)")
    parser.add_argument("--kappa", type=float, default=0.0, help="C&W confidence")
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    s = Settings(eps=args.eps, step_size=2.5 * args.eps / args.pgd_steps,
                 pgd_steps=args.pgd_steps, cw_c=args.cw_c, cw_lr=args.cw_lr,
                 cw_steps=args.cw_steps, kappa=args.kappa)

    versions = {name: v for name in args.peers if (v := peer_version(name)) is not None}
    model, x, y, what = load(args.model, args.batch, args.seed)
    n = x.shape[0]
    counter = PassCounter(model)
    labels = ["musicbench", *versions]
    # Warm-up, untimed, on the first clip: one-time costs (lazy imports) are nobody's.
    for label in labels:
        for fn in BUILDERS[label](model, x[:1], y[:1], s, args).values():
            fn()
        assert not model.module().training, f"{label} left the model in train mode (warm-up)"
    runs = {label: BUILDERS[label](model, x, y, s, args) for label in labels}

    abort = "off" if args.cw_no_abort else "on"
    titles = {"pgd": f"PGD L-inf eps {s.eps:g}, step {s.step_size:g}, {s.pgd_steps} steps",
              "cw": f"C&W L2 c {s.cw_c:g}, lr {s.cw_lr:g} (ART {args.art_cw_lr:g}), "
                    f"{s.cw_steps} steps, 1 search step, early abort {abort}"}
    load_start = os.getloadavg()
    libraries = ", ".join([f"torch {torch.__version__}"]
                          + [f"{k} {v}" for k, v in versions.items()])
    print(f"{what} (weights {state_digest(model.module())}); {libraries}; {torch.get_num_threads()} thread(s), best of {args.repeats}; "
          f"load average {load_start[0]:.2f} at the start")
    results: dict[str, dict[str, Measurement]] = {}
    for key, title in titles.items():
        results[key] = {}
        for label, fns in runs.items():
            results[key][label] = measure(label, fns[key], model, x, y, counter,
                                          repeats=args.repeats, seed=args.seed)
            print(f"  done: {title} / {label} ({results[key][label].seconds:.1f} s)",
                  flush=True)

    print("\n| attack | library | time | ASR [95% Clopper–Pearson] | median L2 (fooled) "
          "| passes per clip (fwd / bwd) |")
    print("|---|---|---|---|---|---|")
    for key, title in titles.items():
        for i, (label, m) in enumerate(results[key].items()):
            print(f"| {title if i == 0 else ''} | {label} | {m.seconds:.2f} s | {fmt_ci(m, n)} "
                  f"| {fmt(m.median_l2_fooled, '.4f')} "
                  f"| {m.passes_per_clip:.1f} / {m.backward_per_clip:.1f} |")

    print("\n| attack | peer | time ours / peer | fwd passes ours / peer | ASR ours − peer "
          "| fooled by ours only / peer only | exact McNemar p |")
    print("|---|---|---|---|---|---|---|")
    for key, title in titles.items():
        mine = results[key]["musicbench"]
        for i, (label, m) in enumerate((k, v) for k, v in results[key].items()
                                       if k != "musicbench"):
            only_ours = int((mine.fooled & ~m.fooled).sum())
            only_peer = int((m.fooled & ~mine.fooled).sum())
            print(f"| {title if i == 0 else ''} | {label} | {mine.seconds / m.seconds:.2f} "
                  f"| {mine.passes_per_clip / m.passes_per_clip:.2f} "
                  f"| {(mine.k - m.k) / n:+.3f} | {only_ours} / {only_peer} "
                  f"| {mcnemar_exact_p(only_ours, only_peer):.3g} |")
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
