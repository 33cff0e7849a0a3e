"""Input-gradient norms at clean clips, undefended and behind each defense: the figures behind
``musicbench.runner.VANISHING_GRADIENT_RATIO``.

The runner flags a cell whose attack gets "vanishing gradients": the median L2 norm of the
loss's input gradient at the cell's clean-correct clips, as the attack gets it (through the
defense, with the cell's EOT and BPDA), far below the undefended model's median on the same
clips (Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML
2018: a defense that shrinks gradients by orders of magnitude masks them as surely as one
that zeroes them; Tramèr et al., "On Adaptive Attacks to Adversarial Example Defenses",
NeurIPS 2020). This script measures, on the first ``--clips`` test clips of the model's
dataset:

- the spread of the undefended model's per-clip norms (how far apart two clips are);
- per defense, the median norm over the clips the defended model gets right (the runner's
  clips), the undefended median on the same clips, and their ratio (what the flag tests),
  with the per-clip ratios' range;
- two dishonest toys that keep the output and scale the gradient by 1/10 and 1/100
  (``x.detach() + (x - x.detach()) / k``): what the threshold must catch;
- training defenses whose weights are in the cache (``advtrain``, ``pamt``): their defended
  model against the base, as the runner compares them (adversarial training lowers input
  gradients honestly, so the threshold must leave room for it).

Preprocessors are attacked as the harness attacks them: EOT over ``--eot`` draws where the
defense is randomized, BPDA through its surrogate where it has no useful gradient (both as
measured by :func:`musicbench.defense_checks.measure`). CPU, one thread::

    OMP_NUM_THREADS=1 python benchmarks/gradient_norms.py               # style-cnn, 64 clips
    OMP_NUM_THREADS=1 python benchmarks/gradient_norms.py --model cover-net --clips 32
"""

from __future__ import annotations

import argparse
import time

import torch

from musicbench.cache import cache_dir
from musicbench.defense_checks import measure
from musicbench.interfaces import Preprocessor
from musicbench.planner import measurement_clips
from musicbench.plugins import get_plugins
from musicbench.victim import ReferenceSet, Scorer, Victim, begin_batch
from musicbench.workspace import Workspace

PREPROCESSORS: list[tuple[str, dict]] = [
    ("lowpass", {}), ("resample", {}), ("resample", {"random_rate": [6000, 10000]}),
    ("quantize", {}), ("mp3", {}), ("noise", {}), ("noise", {"sigma": 0.02}),
    ("noise", {"sigma": 0.05}), ("time-shift", {}),
    ("denoise-spectral", {}), ("denoise-spectral", {"mask": "hard"}), ("denoise-unet", {}),
]
TRAINING: list[tuple[str, dict]] = [
    ("advtrain", {}), ("advtrain", {"method": "fgsm-rs"}), ("pamt", {}),
]


class GradientShrink(Preprocessor):
    """Dishonest: the identity in value, its input gradient divided by ``factor``."""

    differentiable = True

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor
        self.name = f"shrink-{factor:g}x"

    def forward(self, audio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return audio.detach() + (audio - audio.detach()) / self.factor


def norms(model, x: torch.Tensor, y: torch.Tensor, refs, defense=None, eot: int = 1,
          bpda: bool = False) -> torch.Tensor:
    """``[B]``: L2 norm of the cross-entropy's input gradient per clip, as the runner's
    gradient probe takes it."""
    victim = Victim(model, references=refs, defense=defense, eot_samples=eot, bpda=bpda,
                    generator=torch.Generator().manual_seed(0))
    begin_batch(victim, x.shape[0])
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(victim.loss(xg, y).sum(), xg)
    return grad.flatten(1).norm(dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="style-cnn")
    parser.add_argument("--dataset", default=None, help="default: m21-styles (classification) "
                        "or m21-covers (retrieval)")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--eot", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    ws = Workspace(get_plugins(), cache_dir=cache_dir(), device=torch.device("cpu"),
                   allow_training=False)
    model = ws.model(args.model, {})
    name = args.dataset or ("m21-covers" if model.task == "retrieval" else "m21-styles")
    data = ws.dataset(name, {})
    refs = None
    if model.task == "retrieval":
        examples = list(data.queries("test"))[: args.clips]
        references = list(data.references("test"))
        works = sorted({e.work_id for e in references})
        with torch.no_grad():
            emb = torch.nn.functional.normalize(
                model.embed(torch.stack([e.audio for e in references])), dim=-1)
        refs = ReferenceSet(emb, torch.tensor([works.index(e.work_id) for e in references]),
                            len(works))
        y = torch.tensor([works.index(e.work_id) for e in examples])
    else:
        examples = list(data.examples("test"))[: args.clips]
        y = torch.tensor([model.labels.index(data.labels[e.label]) for e in examples])
    x = torch.stack([e.audio for e in examples])
    with torch.no_grad():
        right = Scorer(model, references=refs).predict(x) == y
    base = norms(model, x, y, refs)
    ok = base[right]
    print(f"{args.model} on {name}: {len(examples)} test clips, {int(right.sum())} right "
          f"undefended; per-clip input-gradient norm (L2 of the cross-entropy's gradient): "
          f"median {ok.median():.3g}, min {ok.min():.3g}, max {ok.max():.3g}, "
          f"10-90 % {ok.quantile(0.1):.3g}-{ok.quantile(0.9):.3g} "
          f"(max/min {ok.max() / ok.min():.0f}x)")
    clips = measurement_clips(data)
    rows: list[tuple[str, str, torch.Tensor, torch.Tensor]] = []

    def row(label: str, how: str, defended_model, defense=None, eot: int = 1,
            bpda: bool = False) -> None:
        start = time.perf_counter()
        with torch.no_grad():
            scorer = Scorer(defended_model, references=refs, defense=defense,
                            generator=torch.Generator().manual_seed(1))
            right_here = scorer.judge(x, y, 11 if eot > 1 else 1).wrong_fraction <= 0.5
        here = norms(defended_model, x[right_here], y[right_here], refs, defense, eot, bpda)
        plain = base[right_here]
        rows.append((label, how, here, plain))
        ratio = here.median() / plain.median()
        per_clip = here / plain
        print(f"  {label:<34} {how:<9} n={int(right_here.sum()):>2}  median {here.median():8.3g}"
              f"  undefended {plain.median():7.3g}  ratio {ratio:7.3g}  per clip "
              f"{per_clip.min():.3g}-{per_clip.max():.3g}  ({time.perf_counter() - start:.0f} s)",
              flush=True)

    print("defense (as the attack gets it)      adaptive")
    for defense_name, params in PREPROCESSORS:
        defense = ws.defense(defense_name, params, model.sample_rate)
        behaviour = measure(defense, model.sample_rate, ws.device, clips)
        eot = args.eot if behaviour.attack_randomized else 1
        bpda = behaviour.attack_with_bpda
        how = "+".join(k for k, on in (("eot", eot > 1), ("bpda", bpda)) if on) or "none"
        label = defense_name + (f" {params}" if params else "")
        row(label, how, model, defense, eot, bpda)
        if bpda:
            row(label, "none (no BPDA)", model, defense, eot, False)
    for factor in (10.0, 100.0):
        shrink = GradientShrink(factor)
        shrink.bind(model.sample_rate)
        row(shrink.name + " (dishonest)", "none", model, shrink)
    for defense_name, params in TRAINING:
        defense = ws.defense(defense_name, params, model.sample_rate)
        try:
            defended = ws.defended_model(defense, model, data)
        except Exception as exc:  # noqa: BLE001 - not trained here: say so and go on
            print(f"  {defense_name} {params}: skipped ({type(exc).__name__}: "
                  f"{str(exc).splitlines()[0][:90]})")
            continue
        row(defense_name + (f" {params}" if params else "") + " (trained)", "none", defended)


if __name__ == "__main__":
    main()
