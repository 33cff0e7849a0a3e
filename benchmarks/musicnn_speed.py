"""musicnn's forward and forward+backward on CPU: where the time goes, and the port against
its earlier front end (ReLU and batch norm before the frequency max) on the same batch.

    python benchmarks/musicnn_speed.py [--batch 8] [--repeats 3] [--threads 1] [--profile]

The frozen ``musicnn-mtt`` from the cache (its weights come from the musicnn wheel; nothing is
trained), a batch of ``--batch`` 3-s patches of seeded noise at 16 kHz. For each front end it
prints the best of ``--repeats`` timings of a forward pass (a black-box query) and of a
forward + backward to the input (a white-box step), and checks that the logits are equal bit
for bit and the input gradients equal to float32 rounding. ``--profile`` adds torch.profiler's
table of the current port's forward + backward. The correctness reference stays the frozen
TensorFlow values in ``tests/test_musicnn.py``; this script only compares the two front ends.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from musicbench.cache import cache_dir
from musicbench.plugins import get_plugins
from musicbench.workspace import Workspace
from musicbench_plugins.models.musicnn import network


def earlier_pooling(self: network.FrequencyPooledConv, x: torch.Tensor) -> torch.Tensor:
    """The front-end branch as ported first: ReLU and batch norm over every band, then max."""
    return self.bn(F.relu(self.conv(F.pad(x, (0, 0, *self.pad))))).amax(dim=3)


@contextlib.contextmanager
def front_end(forward: Callable | None) -> Iterator[None]:
    """Run with ``forward`` as the branches' forward (None: the port as it is)."""
    current = network.FrequencyPooledConv.forward
    if forward is not None:
        network.FrequencyPooledConv.forward = forward
    try:
        yield
    finally:
        network.FrequencyPooledConv.forward = current


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    fn()  # warm-up: allocator, oneDNN primitives
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ws = Workspace(get_plugins(), cache_dir=cache_dir(), device=torch.device("cpu"),
                   allow_training=False)
    net = ws.model("musicnn-mtt", {}).module()
    x = 0.1 * torch.randn(args.batch, 48_000, generator=torch.Generator().manual_seed(0))

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return net(x)

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        xx = x.clone().requires_grad_(True)
        logits = net(xx)
        (grad,) = torch.autograd.grad(logits.logsumexp(-1).sum(), xx)
        return logits.detach(), grad

    rows = {}
    for name, fwd in (("earlier (bn, relu, then max)", earlier_pooling), ("current", None)):
        with front_end(fwd):
            rows[name] = (best_of(args.repeats, forward), best_of(args.repeats, step), step())
    (f0, s0, (l0, g0)), (f1, s1, (l1, g1)) = rows.values()
    print(f"musicnn-mtt, batch {args.batch} x 3 s, {args.threads} thread(s), best of "
          f"{args.repeats}, torch {torch.__version__}")
    print("| front end | forward | forward + backward |")
    print("|---|---|---|")
    for name, (fwd_s, step_s, _) in rows.items():
        print(f"| {name} | {fwd_s / args.batch * 1000:.1f} ms/clip | "
              f"{step_s / args.batch * 1000:.1f} ms/clip |")
    print(f"ratio current / earlier: forward {f1 / f0:.3f}, forward + backward {s1 / s0:.3f}")
    print(f"logits equal bit for bit: {torch.equal(l0, l1)}; input gradients: max |diff| "
          f"{(g0 - g1).abs().max().item():.2e}, relative L2 "
          f"{((g0 - g1).norm() / g0.norm()).item():.2e}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
