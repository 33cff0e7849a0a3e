"""What the learned denoiser ``denoise-unet`` does on held-out clips, no attack: how much it
lowers Gaussian and random-sign noise at the benchmark's L-inf budgets, what it does to clean
clips, and what it costs ``style-cnn`` in clean accuracy.

Figures:

* SNR gain (dB) = SNR(clean, denoise(noisy)) - SNR(clean, noisy) per clip, mean with a 95%
  bootstrap interval (``musicbench.metrics.bootstrap_ci``), for sign noise (+-eps per sample)
  and Gaussian noise (sigma = eps: the same RMS) at each ``--eps``; noisy audio is clamped to
  [-1, 1]. SNR as the leaderboard defines it (``musicbench.metrics.snr_db``).
* Clean pass-through: SNR(clean, denoise(clean)) in dB (higher = less changed).
* style-cnn's clean accuracy with and without the denoiser in front, exact (Clopper-Pearson)
  intervals, and the paired difference: Newcombe's interval and McNemar's exact test.
* Seconds per 4 s clip of the denoiser on one CPU thread.

Clips are the first ``--clips`` of m21-styles' test split (all 560 by default); noise is drawn
with ``--seed``. The checkpoint with default parameters is trained on first use (``musicbench
train denoise-unet`` does it ahead; ``leaderboards/weights/defenses/`` holds ours). Run:

    OMP_NUM_THREADS=1 python benchmarks/denoise_unet.py [--clips 560] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import torch

from musicbench.cache import cache_dir
from musicbench.metrics import bootstrap_ci, clopper_pearson, snr_db
from musicbench.plugins import get_plugins
from musicbench.stats import mcnemar_exact_p, paired_difference_interval
from musicbench.workspace import Workspace

BATCH = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=560)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.0005, 0.001, 0.002, 0.004])
    parser.add_argument("--model", default="style-cnn")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the machine is shared; one thread avoids contention stalls
    device = torch.device("cpu")
    ws = Workspace(get_plugins(), cache_dir=cache_dir(), device=device)
    ds = ws.dataset("m21-styles", {})
    examples = list(ds.examples("test"))[: args.clips]
    clean = torch.stack([e.audio for e in examples])
    labels = torch.tensor([e.label for e in examples])
    n, t = clean.shape
    defense = ws.defense("denoise-unet", {}, ds.sample_rate)  # bound and loaded
    gen = torch.Generator()

    def denoise(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([defense.forward(x[i : i + BATCH], gen)
                              for i in range(0, x.shape[0], BATCH)])

    print(f"denoise-unet ({defense.checkpoint_key()}), {n} clips of m21-styles/test "
          f"({t / ds.sample_rate:.1f} s at {ds.sample_rate} Hz), noise seed {args.seed}")
    t0 = time.perf_counter()
    passed = denoise(clean)
    seconds = (time.perf_counter() - t0) / n
    through = snr_db(clean, passed).numpy()
    print(f"clean pass-through: SNR(clean, denoised clean) mean {through.mean():.1f} dB "
          f"(min {through.min():.1f}); {1000 * seconds:.1f} ms per clip on one thread")
    print()
    print("| noise | eps | SNR in (dB) | SNR out (dB) | gain (dB) [95% CI] | n |")
    print("|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(args.seed)
    for kind in ("sign", "gaussian"):
        for eps in args.eps:
            unit = (torch.randint(0, 2, clean.shape, generator=g).float() * 2 - 1
                    if kind == "sign" else torch.randn(clean.shape, generator=g))
            noisy = (clean + eps * unit).clamp(-1.0, 1.0)
            snr_in = snr_db(clean, noisy).numpy()
            snr_out = snr_db(clean, denoise(noisy)).numpy()
            gain = snr_out - snr_in
            lo, hi = bootstrap_ci(gain)
            print(f"| {kind} | {eps:g} | {snr_in.mean():.1f} | {snr_out.mean():.1f} | "
                  f"{gain.mean():+.2f} [{lo:+.2f}, {hi:+.2f}] | {n} |")

    model = ws.model(args.model)
    with torch.no_grad():
        pred_plain = torch.cat([model.forward(clean[i : i + BATCH]).argmax(-1)
                                for i in range(0, n, BATCH)])
        pred_defended = torch.cat([model.forward(passed[i : i + BATCH]).argmax(-1)
                                   for i in range(0, n, BATCH)])
    plain, defended = pred_plain == labels, pred_defended == labels
    a = int((plain & defended).sum())
    b = int((plain & ~defended).sum())
    c = int((~plain & defended).sum())
    d = int((~plain & ~defended).sum())
    print()
    print(f"| {args.model} on m21-styles/test | clean accuracy [95% CI] | n |")
    print("|---|---|---|")
    for label, right in (("no defense", plain), ("denoise-unet in front", defended)):
        k = int(right.sum())
        lo, hi = clopper_pearson(k, n)
        print(f"| {label} | {100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] | {n} |")
    lo, hi = paired_difference_interval(a, b, c, d)
    print(f"\ncost (no defense - defended): {100 * (b - c) / n:+.1f} points "
          f"[{100 * lo:+.1f}, {100 * hi:+.1f}] (Newcombe), McNemar exact p = "
          f"{mcnemar_exact_p(b, c):.3g}; {b} clips lost, {c} gained, {a + d} unchanged; "
          f"predictions changed on {int((pred_plain != pred_defended).sum())} clips")


if __name__ == "__main__":
    main()
