"""What :func:`musicbench.defense_checks.measure` finds on every built-in preprocessor and on
two dishonest ones: the figures behind its thresholds (docs/defenses.md, "How a defense is
attacked").

Each defense is bound at 16 kHz and measured as a run measures it: on the probe signal and on
the first two test clips of ``m21-styles`` (``musicbench.planner.measurement_clips``). Printed
per defense: declared and measured flags; the finite-difference ratio (median over the
probed samples of the slope along the gradient over the autograd slope) at each step from
1e-4 to the attack's radius 0.002, the input farthest from 1; the share of probes going the
wrong way; the share of input samples with an exactly zero gradient; where it is attacked with
BPDA, the surrogate's fidelity ``‖f(x) − g(x)‖ / ‖f(x) − x‖`` and error ``‖f(x) − g(x)‖ /
‖f(x)‖``; what the harness attacks it with; mismatches and warnings.

``--before REV`` also runs the check as it was at git revision REV (its single step, the
ratio it reported) for comparison. Athalye, Carlini & Wagner, ICML 2018; Tramèr et al.,
NeurIPS 2020. CPU, one thread, about a minute::

    OMP_NUM_THREADS=1 python benchmarks/masking_checks.py [--before 669bacb]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from musicbench.cache import cache_dir
from musicbench.defense_checks import measure
from musicbench.planner import measurement_clips
from musicbench.plugins import get_plugins
from musicbench.workspace import Workspace

ROOT = Path(__file__).resolve().parent.parent
VARIANTS: list[tuple[str, dict]] = [
    ("none", {}), ("lowpass", {}), ("resample", {}), ("resample", {"random_rate": [6000, 12000]}),
    ("quantize", {}), ("mp3", {}), ("mp3", {"bitrate_kbps": 8}), ("noise", {}),
    ("time-shift", {}), ("time-shift", {"mode": "crop"}), ("denoise-spectral", {}),
    ("denoise-spectral", {"mask": "hard"}), ("denoise-unet", {}),
]


def _old_measure(rev: str):
    """``measure`` as defined in bench/defense_checks.py at git revision ``rev``."""
    source = subprocess.run(["git", "show", f"{rev}:bench/defense_checks.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_defense_checks.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_defense_checks", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.measure


def _toys() -> list[tuple[str, object]]:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_masking_evasion import SoftShatter, SteepStaircase

    return [("steep-staircase (dishonest)", SteepStaircase()),
            ("soft-shatter (dishonest)", SoftShatter())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", metavar="REV", help="also run the check of revision REV")
    parser.add_argument("--dataset", default="m21-styles")
    args = parser.parse_args()
    ws = Workspace(get_plugins(), cache_dir=cache_dir(), device=torch.device("cpu"),
                   allow_training=False)
    clips = measurement_clips(ws.dataset(args.dataset, {}))
    rate = 16_000
    old = _old_measure(args.before) if args.before else None
    defenses = [(name + "".join(f" {k}={v}" for k, v in params.items()),
                 ws.defense(name, params, rate)) for name, params in VARIANTS]
    for label, toy in _toys():
        toy.bind(rate)
        defenses.append((label, toy))
    for label, defense in defenses:
        start = time.perf_counter()
        b = measure(defense, rate, ws.device, clips)
        seconds = time.perf_counter() - start
        how = "+".join(k for k, on in (("eot", b.attack_randomized), ("bpda", b.attack_with_bpda))
                       if on) or "plain gradients"
        print(f"{label}: declared randomized={b.declared_randomized} "
              f"differentiable={b.declared_differentiable}; measured randomized={b.randomized} "
              f"differentiable={b.differentiable}; attacked with {how} ({seconds:.1f} s)")
        if b.gradient_fd_ratios:
            ratios = ", ".join(f"{r:.3f} at {h}" for h, r in b.gradient_fd_ratios.items())
            print(f"    finite differences / autograd: {ratios}; sign flips "
                  f"{b.gradient_sign_flips:.0%}")
        if b.zero_gradient_fraction is not None:
            print(f"    zero gradient on {b.zero_gradient_fraction:.1%} of the samples")
        if b.surrogate_fidelity is not None:
            print(f"    BPDA surrogate: ‖f−g‖/‖f−x‖ = {b.surrogate_fidelity:.3f}, "
                  f"‖f−g‖/‖f‖ = {b.surrogate_error:.3f}")
        for text in b.mismatches():
            print(f"    MISMATCH: {text}")
        for text in b.warnings():
            print(f"    WARNING: {text}")
        if old is not None:
            before = old(defense, rate, ws.device, clips)
            ratio = before.gradient_fd_ratio
            print(f"    before ({args.before}): differentiable={before.differentiable}, ratio "
                  f"{'none' if ratio is None else f'{ratio:.3f}'}, mismatches "
                  f"{len(before.mismatches())}")


if __name__ == "__main__":
    main()
