"""Harness overhead of one PGD step: (time of a PGD step through Attack.__call__ and the Victim)
/ (time of the bare network's forward + backward to the input on the same batch).

Target (DESIGN.md section 11): <= 1.05. Prints the figures; run on an idle machine:

    python benchmarks/attack_overhead.py [--batch 32] [--steps 20] [--repeats 5] [--device cpu]

The network is style-cnn's architecture with seeded random weights (timing does not depend on
training). eps is tiny so no sample is fooled and every step runs for the whole batch.
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
    model._freeze(StyleCNNNet(6).to(device))
    net = model.module()
    x = tone_batch(args.batch, model.input_samples, seed=0, device=device)
    with torch.no_grad():
        y = net(x).argmax(-1)

    def bare_step() -> None:
        xg = x.clone().requires_grad_(True)
        loss = F.cross_entropy(net(xg), y, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), xg)
        (x + 1e-9 * grad.sign()).clamp(-1, 1)  # the step's own arithmetic, as PGD does

    attack = PGD(PGDParams(eps=1e-9, steps=args.steps, step_size=1e-10))
    attack.name = "pgd"

    def harness_run() -> int:
        victim = Victim(model)
        res = attack(victim, x, y, generator=torch.Generator(device=device).manual_seed(0))
        return int(res.steps.max())

    for _ in range(2):  # warm-up
        bare_step()
        harness_run()
    bare_times, harness_times = [], []
    for _ in range(args.repeats):
        _sync(device)
        t = time.perf_counter()
        for _ in range(args.steps):
            bare_step()
        _sync(device)
        bare_times.append((time.perf_counter() - t) / args.steps)
        t = time.perf_counter()
        steps = harness_run()
        _sync(device)
        # the harness's own forward that re-scores the result is part of its cost: included
        harness_times.append((time.perf_counter() - t) / steps)
    bare, harness = statistics.median(bare_times), statistics.median(harness_times)
    print(f"device {device}, batch {args.batch}, {args.steps} steps, {args.repeats} repeats, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"bare forward+backward per step: {1000 * bare:.1f} ms")
    print(f"PGD step through the harness:   {1000 * harness:.1f} ms")
    print(f"overhead ratio: {harness / bare:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
