"""Our PGD and C&W against torchattacks' PGD and CW on the same model, batch and steps.

The design's speed target (docs/benchmarks.md): PGD and C&W must be at least as fast as torchattacks with the same
success within CI. Prints, per attack, the wall time to finish the batch and the attack success
rate (with a 95% Wilson interval), and the ratios ours / torchattacks.

    python benchmarks/torchattacks_compare.py [--model style-cnn|tiny] [--batch 16]
        [--pgd-steps 20] [--cw-steps 50] [--threads 1] [--repeats 1]

torchattacks is not a dependency of musicbench: install it into a throwaway environment that
reuses our torch, e.g. ``python -m venv --system-site-packages /tmp/ta-venv`` and
``/tmp/ta-venv/bin/pip install --no-deps torchattacks``, then run this script with that
environment's python.

Model: the trained ``style-cnn`` when its checkpoint is in the cache (nothing is trained
here), its clean-correct clips of the ``m21-styles`` test split; ``--model tiny`` (or no cached
checkpoint) uses the random-weight TinyClassifier on seeded tones. torchattacks wants inputs in
[0, 1]: it attacks ``x01 -> model(2 * x01 - 1)`` and every radius is halved (``eps_01 = eps /
2``). The two C&W objectives match after that change of scale: ``‖x̂01 - x01‖² =
‖x̂ - x‖² / 4``, so torchattacks' ``c`` is ours / 4, and both optimise the same ``w`` (``x =
tanh(w)``) with Adam at the same learning rate; ours runs one binary-search step so the step
counts are equal (torchattacks has no binary search). Success is scored by the same victim on
the returned waveforms for both.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from musicbench.testing import TinyClassifier, tone_batch
from musicbench.victim import Scorer, Victim
from musicbench_plugins.attacks.cw import CW, CWParams
from musicbench_plugins.attacks.pgd import PGD, PGDParams


def load(which: str, batch: int, seed: int):
    """(model, clips[B, T], labels[B], description): clean-correct clips only."""
    if which == "style-cnn":
        from musicbench.cache import cache_dir
        from musicbench.errors import NotTrainedError
        from musicbench.plugins import get_plugins
        from musicbench.workspace import Workspace

        ws = Workspace(get_plugins(), cache_dir=cache_dir(), device=torch.device("cpu"),
                       allow_training=False)
        try:
            model = ws.model("style-cnn", {})
        except NotTrainedError:
            print("no cached style-cnn checkpoint: falling back to the tiny model")
            return load("tiny", batch, seed)
        ds = ws.dataset("m21-styles", {})
        examples = list(ds.examples("test"))
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))
        labels = list(model.labels)
        picked = [examples[i] for i in order.tolist()]
        x = torch.stack([e.audio for e in picked])
        y = torch.tensor([labels.index(ds.labels[e.label]) for e in picked])
    else:
        model = TinyClassifier()
        model.load()
        model.name = "tiny-classifier"
        x = tone_batch(4 * batch, model.input_samples, seed=seed)
        with torch.no_grad():
            y = Scorer(model).predict(x)
        y[::2] = (y[::2] + 1) % len(model.labels)  # so that not every clip is trivially right
    with torch.no_grad():
        right = Scorer(model).predict(x) == y
    x, y = x[right][:batch], y[right][:batch]
    return model, x, y, f"{model.name}, {x.shape[0]} clean-correct clips of {x.shape[1]} samples"


def to01(x: torch.Tensor) -> torch.Tensor:
    """Waveform ``x[B, T]`` in [-1, 1] -> the same clip in [0, 1] (torchattacks' range)."""
    return (x + 1) / 2


def from01(x01: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to01`: ``x01[B, T]`` in [0, 1] -> waveform in [-1, 1]."""
    return 2 * x01 - 1


class WaveformNet(torch.nn.Module):
    """A musicbench model as a plain ``nn.Module`` on waveforms ``[B, T]`` in [-1, 1] ->
    logits ``[B, K]``. Its network is a submodule, so a library's ``.eval()`` / ``.train()``
    reaches the network (and the eval-mode check in :func:`measure` sees what it did)."""

    def __init__(self, model):
        super().__init__()
        self.net = model.module()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward(x)


class Waveform01(WaveformNet):
    """torchattacks' view of a waveform model: inputs in [0, 1] mapped to [-1, 1]."""

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.model.forward(from01(x01))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


class PassCounter:
    """Clips through ``model``'s network, counted by a forward hook on ``model.module()``: the
    work an attack did, whichever library called the network. ``backward_clips`` counts the
    clips of every backward pass through a counted output (a tensor hook on it), so a library
    that runs several backward passes per forward pass shows it."""

    def __init__(self, model):
        self.clips = 0
        self.backward_clips = 0
        model.module().register_forward_hook(self._count)

    def _count(self, module, inputs, output) -> None:
        batch = inputs[0].shape[0]
        self.clips += batch
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(lambda grad: self._count_backward(batch))

    def _count_backward(self, batch: int) -> None:
        self.backward_clips += batch


@dataclass
class Measurement:
    """One attack run by one library on the batch: best wall time over the repeats, which
    clips the harness's Scorer finds fooled (``fooled[B]``), the L2 distance of every returned
    clip to its clean clip (``l2[B]``), and forward and backward network passes per clip per
    repeat."""

    seconds: float
    fooled: torch.Tensor
    l2: torch.Tensor
    passes_per_clip: float
    backward_per_clip: float

    @property
    def k(self) -> int:
        return int(self.fooled.sum())

    @property
    def median_l2_fooled(self) -> float:
        return self.l2[self.fooled].median().item() if self.k else float("nan")


def measure(label: str, fn: Callable[[], torch.Tensor], model, x: torch.Tensor,
            y: torch.Tensor, counter: PassCounter, *, repeats: int, seed: int) -> Measurement:
    """Run ``fn() -> adv[B, T]`` (waveforms in [-1, 1]) ``repeats`` times and score the last
    output with the same Scorer for every library. Raises if ``fn`` left the network in train
    mode or changed its dtype, or returned clips outside [-1, 1]."""
    dtypes = [p.dtype for p in model.module().parameters()]
    torch.manual_seed(seed)  # torchattacks and Foolbox draw their random start globally
    np.random.seed(seed)  # ART draws its random start from numpy's global generator
    counter.clips = counter.backward_clips = 0
    seconds, adv = timed(fn, repeats)
    passes = counter.clips / repeats / x.shape[0]  # before the scoring pass below
    backward = counter.backward_clips / repeats / x.shape[0]
    # Every library must leave the network as it found it, or every later figure would come
    # from a different model.
    assert not model.module().training, f"{label} left the model in train mode"
    assert [p.dtype for p in model.module().parameters()] == dtypes, \
        f"{label} changed the dtype of the model's parameters"
    adv = adv.detach()
    assert adv.shape == x.shape, f"{label} returned shape {tuple(adv.shape)}, not {tuple(x.shape)}"
    assert adv.abs().max() <= 1 + 1e-6, f"{label} returned clips outside [-1, 1]"
    with torch.no_grad():
        fooled = Scorer(model).predict(adv.to(x.dtype)) != y
    l2 = (adv.to(x.dtype) - x).flatten(1).norm(dim=1)
    return Measurement(seconds, fooled, l2, passes, backward)


def ours(attack, model, x: torch.Tensor, y: torch.Tensor,
         seed: int) -> Callable[[], torch.Tensor]:
    """Our ``attack`` through the harness's ``Attack.__call__`` (which re-scores every clip)."""
    attack.name = type(attack).__name__.lower()
    return lambda: attack(Victim(model), x, y,
                          generator=torch.Generator().manual_seed(seed)).adv


def comparison_parser(description: str, *, cw_c_help: str, cw_lr_help: str | None = None,
                      no_abort_help: str) -> argparse.ArgumentParser:
    """The options every peer comparison shares (model, clips, the attacks' settings, threads,
    repeats, seed); a script adds its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", choices=["style-cnn", "tiny"], default="style-cnn")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--eps", type=float, default=0.002)
    parser.add_argument("--pgd-steps", type=int, default=20)
    parser.add_argument("--cw-steps", type=int, default=50)
    parser.add_argument("--cw-c", type=float, default=0.1, help=cw_c_help)
    parser.add_argument("--cw-lr", type=float, default=3e-4, help=cw_lr_help)
    parser.add_argument("--cw-no-abort", action="store_true", help=no_abort_help)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main() -> None:
    args = comparison_parser(
        __doc__.splitlines()[0], cw_c_help="our c (torchattacks: c / 4)",
        no_abort_help="run our C&W without early abort (every step for every clip)",
    ).parse_args()
    torch.set_num_threads(args.threads)
    import torchattacks

    model, x, y, what = load(args.model, args.batch, args.seed)
    n = x.shape[0]
    # Clip-forwards through the network (both libraries call the same module), so the work
    # each attack did is visible next to its time: early stopping differs between them.
    counter = PassCounter(model)
    wrapped = Waveform01(model).eval()
    x01 = to01(x)

    def theirs(attack):
        # torchattacks' default puts the model in eval mode for the attack; its
        # set_model_training_mode takes booleans (a string there is truthy: train mode, and the
        # model is left in train mode afterwards, so batch norm would use batch statistics).
        attack.set_model_training_mode(model_training=False)
        return lambda: from01(attack(x01, y))

    alpha = 2.5 * args.eps / args.pgd_steps
    pgd_ta = torchattacks.PGD(wrapped, eps=args.eps / 2, alpha=alpha / 2, steps=args.pgd_steps,
                              random_start=True)
    cw_ta = torchattacks.CW(wrapped, c=args.cw_c / 4, kappa=0, steps=args.cw_steps,
                            lr=args.cw_lr)
    cases = [
        (f"PGD L-inf eps {args.eps}, {args.pgd_steps} steps",
         ours(PGD(PGDParams(eps=args.eps, steps=args.pgd_steps, step_size=alpha)),
              model, x, y, args.seed),
         theirs(pgd_ta)),
        (f"C&W L2 c {args.cw_c}, lr {args.cw_lr}, {args.cw_steps} steps (1 search step)",
         ours(CW(CWParams(initial_const=args.cw_c, learning_rate=args.cw_lr,
                          steps=args.cw_steps, binary_search_steps=1,
                          abort_early=not args.cw_no_abort)), model, x, y, args.seed),
         theirs(cw_ta)),
    ]
    print(f"{what}; torch {torch.__version__}, torchattacks {torchattacks.__version__}, "
          f"{torch.get_num_threads()} thread(s), best of {args.repeats}")
    for title, mine, other in cases:
        rows = [(label, measure(label, fn, model, x, y, counter, repeats=args.repeats,
                                seed=args.seed))
                for label, fn in (("musicbench", mine), ("torchattacks", other))]
        print(f"\n{title}")
        for label, m in rows:
            lo, hi = wilson(m.k, n)
            print(f"  {label:13s} {m.seconds:7.2f} s   ASR {m.k}/{n} = {m.k / n:.3f} "
                  f"[{lo:.3f}, {hi:.3f}]   median L2 of fooled clips {m.median_l2_fooled:.4f}   "
                  f"network passes per clip {m.passes_per_clip:.1f}")
        (_, a), (_, b) = rows
        print(f"  time ours / torchattacks: {a.seconds / b.seconds:.2f}   ASR ours - torchattacks: "
              f"{(a.k - b.k) / n:+.3f}")


if __name__ == "__main__":
    main()
