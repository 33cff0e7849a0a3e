"""Cost of an attacked clip against the target model's own compute: (seconds per attacked clip)
/ (seconds the target network itself spends on that clip's forward and backward passes).

Issue 12, "cost of a cell against its limit": the limit of an attack's cost is the model's own
compute, so a ratio of 1.0 means the attack costs nothing beyond the network. Per attack and
target, a few clean-correct clips of the ``m21-styles`` test split are attacked in one batch
through the same path as a cell of a run: components from a :class:`Workspace` (nothing
trained), a :class:`Victim` built as the runner builds it (black-box attacks get one that
refuses gradients and enforces their ``budget``), the attack called through its final
``Attack.__call__``. ``musicnn-mtt`` is attacked in pseudo-label mode (the target is its clean
top-1, as ``leaderboards/configs/targets.toml`` and ``maia.toml`` have it).

What is counted, per cell (all figures are sums over the cell, printed per attacked clip):

- **total**: wall time of the attack call, ``Attack.__call__`` (the attack's ``run``, the
  contract checks and the harness's uncounted re-scoring forward), exactly what the runner
  records as ``attack_seconds``. Clean judging, the gradient probe, the post-attack verdict and
  the metrics of a cell are outside it, as they are outside ``attack_seconds``.
- **model**: (i) every call of ``Victim._logits_draws`` end to end, the one method through
  which every query of a Victim or Scorer evaluates the model (``scores``, ``margin``,
  ``loss``, ``loss_and_margin``, ``scores_and_margin`` and the harness's re-score): the
  network's forward on the clip's windows plus the Victim's window split and average, its
  counters and budget check; the cross-entropy or margin taken of the ``[B, K]`` logits after
  it is not in it (microseconds). (ii) every ``torch.autograd.grad`` / ``Tensor.backward`` call
  during which a gradient reached the network's output, end to end: the backward of the loss on
  the logits, through the network, and through whatever lies between the attack's variable and
  the network input (C&W's tanh, the window stacking).
- **network** (a part of model): the bare network. Forward: from the network module's forward
  pre-hook to its forward hook (``model.module()``, the whole differentiable model including
  its spectral front end). Backward: from the gradient reaching the network's output (a tensor
  hook on it) to its reaching the network's input (a tensor hook on that), or to the end of the
  ``grad`` call when the gradient stops inside the network (Grad-CAM stops at ``cam_layer``).
  model - network is the harness's share of the model calls.
- **other** = total - model, with these parts named: *inpainter* (the attack's inpainter's
  ``inpaint`` and ``sample_latent`` calls), *CMA-ES* (pycma's ``CMAEvolutionStrategy``
  construction, ``ask``, ``tell``, ``stop``), *backward off the network* (``grad`` calls that
  never reached the network, e.g. MAIA-WB's distance gradient), and *rest* (the attack's own
  tensor arithmetic, Grad-CAM maps, occlusion masks, Adam/NES/ZOO updates, Python).

Passes per clip: forward = clip windows through the network / windows per clip / clips
(queries counted by the Victim plus the uncounted re-score; EOT draws would each count);
backward = the same for gradients reaching the network's output (partial ones included).

The hooks cost a few microseconds per pass (tens of passes per clip, each milliseconds to
hundreds of milliseconds). On CUDA every hook synchronizes the device, which serialises the
timeline and slows the attack a little; on CPU nothing is changed. Absolute seconds move with
the machine's load; the ratio much less, since model and non-model work slow alike.

    OMP_NUM_THREADS=1 python benchmarks/attack_cost.py [--targets style-cnn musicnn-mtt]
        [--attacks pgd cw maia-wb nes zoo maia-bb] [--clips 4] [--budget 1000]
        [--set ATTACK.KEY=VALUE ...] [--threads 1] [--device cpu] [--seed 0]

Parameters default to those of the published boards (``leaderboards/configs/maia.toml``);
``--budget`` and ``--set`` make a run affordable, and the parameters used are printed.
Datasets, weights and the gacela inpainter come from the cache (``~/.cache/musicbench`` or
``$MUSICBENCH_HOME``); nothing is trained (a missing checkpoint stops the script with the
command that would make it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from musicbench.victim import Victim, begin_batch
from musicbench.windows import split_windows

# The parameters of leaderboards/configs/maia.toml, the board that runs all six attacks.
PUBLISHED: dict[str, dict[str, Any]] = {
    "pgd": {"eps": 0.002, "steps": 20},
    "cw": {},
    "maia-wb": {},
    "nes": {"eps": 0.002, "budget": 1000},
    "zoo": {"eps": 0.002, "budget": 1000},
    "maia-bb": {"budget": 1000},
}
# target -> (dataset, pseudo-labels), as the published boards pair them
TARGETS: dict[str, tuple[str, bool]] = {
    "style-cnn": ("m21-styles", False),
    "musicnn-mtt": ("m21-styles", True),
}


@dataclass
class Cost:
    """Seconds and passes summed over one cell (see the module docstring for what each is)."""

    total: float = 0.0
    victim: float = 0.0  # Victim._logits_draws calls, end to end
    grad_model: float = 0.0  # grad/backward calls that reached the network
    grad_other: float = 0.0  # grad/backward calls that did not
    net_forward: float = 0.0
    net_backward: float = 0.0
    inpainter: float = 0.0
    cma: float = 0.0
    forward_rows: int = 0  # window rows through the network
    backward_rows: int = 0  # window rows whose gradient reached the network's output

    @property
    def model(self) -> float:
        return self.victim + self.grad_model

    @property
    def network(self) -> float:
        return self.net_forward + self.net_backward

    @property
    def other(self) -> float:
        return self.total - self.model

    @property
    def rest(self) -> float:
        """What no named part covers: the attack's own arithmetic and Python."""
        return self.other - self.inpainter - self.cma - self.grad_other

    def ratio(self) -> float:
        """total / model: 1.0 = the attack costs nothing beyond the model's calls."""
        return self.total / self.model if self.model > 0 else math.inf


class CostMeter:
    """Times the model's share of an attack call (see the module docstring).

    Use as ``with meter.attached(network, inpainter=..., cma_class=...):
    meter.measure(attack, victim, audio, target, generator)``; every hook and timer is removed
    on exit. Timers of one kind do not nest (an outer call is timed
    once), and the kinds are disjoint in what the attacks here do: a Victim call never runs
    inside an inpainter or CMA-ES call, nor the reverse.
    """

    def __init__(self, device: torch.device):
        self.cost = Cost()
        self._sync = device.type == "cuda"
        self._busy: set[str] = set()
        self._on = False
        self._fwd_start: list[float] = []
        self._bwd_out: float | None = None  # first gradient at the network's output, this call
        self._bwd_in: float | None = None  # last gradient at the network's input, this call

    def clock(self) -> float:
        if self._sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    # -- one timed region per kind --------------------------------------------------------------

    @contextlib.contextmanager
    def _region(self, kind: str, add: Callable[[float], None]) -> Iterator[None]:
        if kind in self._busy or not self._on:
            yield
            return
        self._busy.add(kind)
        t0 = self.clock()
        try:
            yield
        finally:
            add(self.clock() - t0)
            self._busy.discard(kind)

    def _wrap(self, fn: Callable[..., Any], kind: str, field_name: str) -> Callable[..., Any]:
        cost = self.cost

        def add(seconds: float) -> None:
            setattr(cost, field_name, getattr(cost, field_name) + seconds)

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self._region(kind, add):
                return fn(*args, **kwargs)

        return timed

    def _wrap_grad(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if "grad" in self._busy or not self._on:
                return fn(*args, **kwargs)
            self._busy.add("grad")
            self._bwd_out = self._bwd_in = None
            t0 = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                t1 = self.clock()
                self._busy.discard("grad")
                if self._bwd_out is not None:
                    self.cost.grad_model += t1 - t0
                    end = self._bwd_in if self._bwd_in is not None else t1
                    self.cost.net_backward += end - self._bwd_out
                else:
                    self.cost.grad_other += t1 - t0

        return timed

    # -- network hooks ---------------------------------------------------------------------------

    def _pre_forward(self, _module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if not self._on:
            return
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if x is not None and torch.is_grad_enabled() and x.requires_grad:
            x.register_hook(self._grad_at_input)
        self._fwd_start.append(self.clock())

    def _post_forward(self, _module: torch.nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if not self._on or not self._fwd_start:
            return
        self.cost.net_forward += self.clock() - self._fwd_start.pop()
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        self.cost.forward_rows += int(x.shape[0]) if x is not None else 0
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(self._grad_at_output)

    def _grad_at_output(self, grad: torch.Tensor) -> None:
        if not self._on or "grad" not in self._busy:
            return
        now = self.clock()
        self._bwd_out = now if self._bwd_out is None else min(self._bwd_out, now)
        self.cost.backward_rows += int(grad.shape[0])

    def _grad_at_input(self, _grad: torch.Tensor) -> None:
        if self._on and "grad" in self._busy and self._bwd_out is not None:
            self._bwd_in = self.clock()

    # -- attaching -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def attached(self, network: torch.nn.Module, *, inpainter: Any = None,
                 cma_class: Any = None) -> Iterator[CostMeter]:
        """Hooks on ``network``, timers on the Victim, autograd, ``inpainter`` (an instance)
        and ``cma_class`` (pycma's ``CMAEvolutionStrategy``), all removed on exit."""
        patches: list[tuple[Any, str, Any, bool]] = []  # (owner, name, original, own attr)

        def patch(owner: Any, name: str, wrapper: Callable[[Callable[..., Any]], Any]) -> None:
            own = name in vars(owner)
            original = getattr(owner, name)
            patches.append((owner, name, vars(owner).get(name), own))
            setattr(owner, name, wrapper(original))

        handles = [network.register_forward_pre_hook(self._pre_forward),
                   network.register_forward_hook(self._post_forward)]
        try:
            patch(Victim, "_logits_draws", lambda f: self._wrap(f, "victim", "victim"))
            patch(torch.autograd, "grad", self._wrap_grad)
            patch(torch.autograd, "backward", self._wrap_grad)
            patch(torch.Tensor, "backward", self._wrap_grad)
            if inpainter is not None:
                for name in ("inpaint", "sample_latent"):
                    patch(inpainter, name, lambda f: self._wrap(f, "inpainter", "inpainter"))
            if cma_class is not None:
                for name in ("__init__", "ask", "tell", "stop"):
                    patch(cma_class, name, lambda f: self._wrap(f, "cma", "cma"))
            self._on = True
            yield self
        finally:
            self._on = False
            for handle in handles:
                handle.remove()
            for owner, name, original, own in reversed(patches):
                if own:
                    setattr(owner, name, original)
                else:
                    delattr(owner, name)

    def measure(self, attack: Any, victim: Victim, audio: torch.Tensor, target: torch.Tensor,
                generator: torch.Generator) -> Any:
        """Run ``attack(victim, audio, target)`` (its final ``__call__``) and add its wall
        time to ``cost.total``; call inside :meth:`attached`."""
        t0 = self.clock()
        result = attack(victim, audio, target, generator=generator)
        self.cost.total += self.clock() - t0
        return result


def windows_per_clip(samples: int, window: int) -> int:
    """How many model windows the Victim scores a clip of ``samples`` in."""
    return split_windows(torch.zeros(1, samples), window)[1]


@dataclass
class CellCost:
    """One attack on one target: its clips, what they cost, and what the attack did."""

    attack: str
    target: str
    clips: int
    fooled: int
    queries: float  # mean counted queries per clip
    cost: Cost
    windows: int
    load: tuple[float, float]  # 1-min load average before and after

    def per_clip(self, seconds: float) -> float:
        return seconds / self.clips

    @property
    def forward_passes(self) -> float:
        return self.cost.forward_rows / self.windows / self.clips

    @property
    def backward_passes(self) -> float:
        return self.cost.backward_rows / self.windows / self.clips

    def largest_other(self) -> str:
        """The largest named part of the non-model time."""
        c = self.cost
        parts = {"inpainter": c.inpainter, "CMA-ES": c.cma, "backward off the network":
                 c.grad_other, "attack's own arithmetic": c.rest}
        name = max(parts, key=parts.__getitem__)
        share = parts[name] / c.other if c.other > 0 else math.nan
        return f"{name} ({100 * share:.0f}% of other)" if math.isfinite(share) else "—"


# -- clips and cells -------------------------------------------------------------------------------


def clean_test_clips(ws: Any, model_name: str, clips: int, draw: int, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The first ``clips`` clean-correct clips of ``draw`` drawn (``seed``) from the test split
    of the target's dataset, as the runner draws and judges them: ``(audio[N, T],
    targets[N], drawn)``. Pseudo-label targets are the model's clean top-1."""
    from musicbench.runner import select_examples
    from musicbench.victim import Scorer, margin_from_logits

    dataset_name, pseudo = TARGETS[model_name]
    model, dataset = ws.model(model_name), ws.dataset(dataset_name)
    examples = select_examples(dataset.examples("test"), draw, seed)
    audio = torch.stack([e.audio for e in examples]).float().to(ws.device)
    scorer = Scorer(model)  # the harness's uncounted view
    scores = torch.cat([scorer.scores(audio[i:i + 16]) for i in range(0, len(audio), 16)])
    if pseudo:
        targets = scores.argmax(-1)
    else:
        names = [dataset.labels[e.label] for e in examples]
        missing = sorted({n for n in names if n not in model.labels})
        if missing:
            raise SystemExit(f"labels {missing[:5]} of '{dataset_name}' are not labels of "
                             f"'{model_name}'")
        targets = torch.tensor([list(model.labels).index(n) for n in names], device=ws.device)
    right = (margin_from_logits(scores, targets) > 0).nonzero().squeeze(1)[:clips]
    return audio[right], targets[right], len(examples)


def warm_up(ws: Any, model_name: str, audio: torch.Tensor, target: torch.Tensor) -> None:
    """One forward and backward on one clip, so first-call costs stay out of every cell."""
    victim = Victim(ws.model(model_name))
    x = audio[:1].clone().requires_grad_(True)
    begin_batch(victim, 1)
    with torch.enable_grad():
        torch.autograd.grad(victim.loss(x, target[:1]).sum(), x)


def warm_up_attack(attack: Any, audio: torch.Tensor) -> Any:
    """Run the attack's inpainter once and import pycma (a dependency; MAIA-BB imports it
    when it runs), so neither first-call cost lands in a cell; returns pycma's strategy
    class, whose calls the meter times."""
    inpainter = getattr(attack, "inpainter", None)
    if inpainter is not None:
        mask = torch.zeros(1, audio.shape[1], dtype=torch.bool, device=audio.device)
        mask[:, : audio.shape[1] // 8] = True
        z = inpainter.sample_latent(1, torch.Generator(device=audio.device).manual_seed(0))
        with torch.no_grad():
            inpainter.inpaint(audio[:1], mask, z.to(audio.device))
    import cma

    return cma.CMAEvolutionStrategy


def run_cell(ws: Any, attack_name: str, params: dict[str, Any], model_name: str,
             audio: torch.Tensor, target: torch.Tensor, seed: int) -> CellCost:
    """Attack ``audio`` with ``attack_name`` through ``Attack.__call__``, timed."""
    model = ws.model(model_name)
    attack = ws.make("attack", attack_name, params)
    attack.prepare(ws.ctx)
    black_box = attack.threat == "black-box"
    victim = Victim(model, allow_gradients=not black_box,  # as the runner builds it
                    budget=getattr(attack.params, "budget", None) if black_box else None)
    cma_class = warm_up_attack(attack, audio)
    windows = windows_per_clip(audio.shape[1], model.input_samples)
    meter = CostMeter(ws.device)
    generator = torch.Generator(device=ws.device).manual_seed(seed)
    load0 = os.getloadavg()[0]
    with meter.attached(model.module(), inpainter=getattr(attack, "inpainter", None),
                        cma_class=cma_class):
        result = meter.measure(attack, victim, audio, target, generator)
    return CellCost(attack_name, model_name, len(audio), int(result.success.sum()),
                    float(result.queries.double().mean()), meter.cost, windows,
                    (load0, os.getloadavg()[0]))


# -- printing --------------------------------------------------------------------------------------


def table(cells: list[CellCost]) -> str:
    lines = [("| attack | target | clips | fooled | s per attacked clip | model s per clip "
             "| other s per clip | ratio total/model | network s per clip | ratio total/network "
             "| model passes per clip (fwd / bwd) | queries per clip |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        k = c.cost
        lines.append(
            f"| {c.attack} | {c.target} | {c.clips} | {c.fooled} | {c.per_clip(k.total):.2f} "
            f"| {c.per_clip(k.model):.2f} | {c.per_clip(k.other):.2f} | {k.ratio():.2f} "
            f"| {c.per_clip(k.network):.2f} "
            f"| {k.total / k.network if k.network else math.inf:.2f} "
            f"| {c.forward_passes:.1f} / {c.backward_passes:.1f} | {c.queries:.0f} |")
    return "\n".join(lines)


def breakdown(cells: list[CellCost]) -> str:
    lines = [("| attack | target | network fwd | network bwd | harness in model calls "
             "| inpainter | CMA-ES | backward off the network | rest (attack arithmetic) "
             "| largest non-model part |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        k = c.cost
        parts = (k.net_forward, k.net_backward, k.model - k.network, k.inpainter, k.cma,
                 k.grad_other, k.rest)
        cols = " | ".join(f"{c.per_clip(v):.3f}" for v in parts)
        lines.append(f"| {c.attack} | {c.target} | {cols} | {c.largest_other()} |")
    return "\n".join(lines)


def parse_set(text: str) -> tuple[str, str, Any]:
    """``ATTACK.KEY=VALUE`` (VALUE as JSON, else a string) -> (attack, key, value)."""
    lhs, sep, value = text.partition("=")
    attack, dot, key = lhs.partition(".")
    if not sep or not dot or not key:
        raise argparse.ArgumentTypeError(f"--set wants ATTACK.KEY=VALUE, got {text!r}")
    try:
        return attack, key, json.loads(value)
    except json.JSONDecodeError:
        return attack, key, value


def attack_params(attacks: list[str], budget: int | None,
                  overrides: list[tuple[str, str, Any]]) -> dict[str, dict[str, Any]]:
    """The published parameters of each attack, ``budget`` on the black-box ones, then the
    ``--set`` overrides."""
    params = {name: dict(PUBLISHED.get(name, {})) for name in attacks}
    for name, p in params.items():
        if budget is not None and "budget" in p:
            p["budget"] = budget
    for name, key, value in overrides:
        if name not in params:
            raise SystemExit(f"--set {name}.{key}: '{name}' is not among --attacks {attacks}")
        params[name][key] = value
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--attacks", nargs="+", default=list(PUBLISHED))
    parser.add_argument("--clips", type=int, default=4, help="clean-correct clips per cell")
    parser.add_argument("--draw", type=int, default=32,
                        help="test clips drawn to find --clips clean-correct ones")
    parser.add_argument("--budget", type=int, default=None,
                        help="query budget per clip of the black-box attacks (published: 1000)")
    parser.add_argument("--set", dest="overrides", type=parse_set, action="append", default=[],
                        metavar="ATTACK.KEY=VALUE", help="an attack parameter (JSON value)")
    parser.add_argument("--seed", type=int, default=0, help="clip draw and attack generator")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from musicbench.cache import cache_dir
    from musicbench.errors import MusicbenchError, NotTrainedError
    from musicbench.plugins import get_plugins
    from musicbench.workspace import Workspace

    params = attack_params(args.attacks, args.budget, args.overrides)
    start = time.perf_counter()
    ws = Workspace(get_plugins(), cache_dir=cache_dir(), device=torch.device(args.device),
                   allow_training=False, seed=args.seed)
    for name in args.attacks:
        try:
            ws.factory("attack", name)
        except MusicbenchError as exc:
            raise SystemExit(str(exc)) from exc
    print(f"attack cost against the model's own compute; {args.clips} clean-correct test "
          f"clips per cell (of {args.draw} drawn, seed {args.seed}); torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), {args.device}, {platform.platform()}; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for name, p in params.items():
        print(f"  {name}: {json.dumps(p) if p else '{}'} (other parameters at their defaults)")
    cells: list[CellCost] = []
    for model_name in args.targets:
        try:
            audio, target, drawn = clean_test_clips(ws, model_name, args.clips, args.draw,
                                                    args.seed)
            warm_up(ws, model_name, audio, target)
        except NotTrainedError as exc:
            raise SystemExit(f"{model_name}: {exc}\nnothing is trained here: build it first, "
                             "then rerun") from exc
        pseudo = " (pseudo-labels: its clean top-1)" if TARGETS[model_name][1] else ""
        digest = (ws.model(model_name).weights_digest() or "")[:12]
        print(f"\n{model_name} (weights {digest}): {len(audio)} clips of {drawn} drawn{pseudo}",
              flush=True)
        for attack_name in args.attacks:
            try:
                cell = run_cell(ws, attack_name, params[attack_name], model_name, audio,
                                target, args.seed)
            except NotTrainedError as exc:
                raise SystemExit(f"{attack_name}: {exc}\nnothing is trained here: build it "
                                 "first, then rerun") from exc
            cells.append(cell)
            k = cell.cost
            print(f"  {attack_name:8s} {cell.per_clip(k.total):7.2f} s/clip, model "
                  f"{cell.per_clip(k.model):7.2f}, ratio {k.ratio():.2f}, fooled "
                  f"{cell.fooled}/{cell.clips}, load {cell.load[0]:.1f} -> {cell.load[1]:.1f}",
                  flush=True)
    print("\nper attacked clip (seconds):\n")
    print(table(cells))
    print("\nwhere the seconds go, per attacked clip:\n")
    print(breakdown(cells))
    print(f"\nwall time {time.perf_counter() - start:.0f} s; load average now "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()

