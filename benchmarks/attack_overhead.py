"""Harness overhead of one PGD step: (time of a PGD step through Attack.__call__ and the Victim)
/ (time of the bare network's forward + backward to the input on the same batch).

Target (docs/benchmarks.md): <= 1.05. Prints the figures; run on an idle machine:

    python benchmarks/attack_overhead.py [--batch 32] [--steps 20] [--repeats 5] [--device cpu]

The network is style-cnn's architecture (default parameters) with seeded random weights
(timing does not depend on training). eps is tiny so no sample is fooled and every step runs
for the whole batch. A step's time is the slope between a short and a long attack, so the
per-attack fixed cost (random start, final check, re-scoring) is reported on its own.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from musicbench.testing import tone_batch
from musicbench.victim import Victim
from musicbench_plugins.attacks.pgd import PGD, PGDParams
from musicbench_plugins.models.style_cnn import StyleCNN, StyleCNNNet


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    model = StyleCNN()
    model.name = "style-cnn"
    model.labels = tuple(f"c{i}" for i in range(6))
    torch.manual_seed(0)
    p = model.params
    model.freeze(StyleCNNNet(6, p.width, p.n_mels).to(device))
    net = model.module()
    x = tone_batch(args.batch, model.input_samples, seed=0, device=device)
    with torch.no_grad():
        y = net(x).argmax(-1)

    def bare_step() -> None:
        xg = x.clone().requires_grad_(True)
        loss = F.cross_entropy(net(xg), y, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), xg)
        (x + 1e-9 * grad.sign()).clamp(-1, 1)  # the step's own arithmetic, as PGD does

    def harness_run(steps: int) -> float:
        attack = PGD(PGDParams(eps=1e-9, steps=steps, step_size=1e-10))
        attack.name = "pgd"
        victim = Victim(model)
        _sync(device)
        t = time.perf_counter()
        res = attack(victim, x, y, generator=torch.Generator(device=device).manual_seed(0))
        _sync(device)
        assert int(res.steps.min()) == steps, "a sample stopped early: eps is not tiny enough"
        return time.perf_counter() - t

    short = max(1, args.steps // 4)
    bare_step()
    harness_run(short)  # warm-up
    bare_times, short_times, long_times = [], [], []
    for _ in range(args.repeats):  # interleaved, so slow phases of the machine hit all three
        _sync(device)
        t = time.perf_counter()
        for _ in range(args.steps):
            bare_step()
        _sync(device)
        bare_times.append((time.perf_counter() - t) / args.steps)
        short_times.append(harness_run(short))
        long_times.append(harness_run(args.steps))
    # The minimum over repeats is the least disturbed measurement of each (shared VMs are
    # noisy); one step's cost is the slope between the short and the long attack, and what is
    # left is the per-attack fixed cost (random start, final check, the harness's re-scoring).
    bare = min(bare_times)
    step = (min(long_times) - min(short_times)) / (args.steps - short)
    fixed = min(long_times) - args.steps * step
    spread = statistics.pstdev(bare_times) / statistics.mean(bare_times)
    print(f"device {device}, batch {args.batch}, steps {short} and {args.steps}, "
          f"{args.repeats} repeats, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"bare forward+backward per step:      {1000 * bare:.1f} ms "
          f"(spread over repeats {100 * spread:.0f}%)")
    print(f"PGD step through the harness:        {1000 * step:.1f} ms")
    print(f"fixed cost per attack call (not per step): {1000 * fixed:.1f} ms "
          f"(= {fixed / bare:.2f} bare steps)")
    print(f"overhead ratio per step: {step / bare:.3f} (target <= 1.05)")
    print(f"whole {args.steps}-step attack / {args.steps} bare steps: "
          f"{(args.steps * step + fixed) / (args.steps * bare):.3f}")


if __name__ == "__main__":
    main()
