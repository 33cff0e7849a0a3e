"""What the harness measures of a preprocessing defense (and of a model's randomness) before
it attacks it.

A defense declares ``randomized`` and ``differentiable``; an evaluation that trusts a wrong
declaration overstates robustness (a randomized defense attacked without EOT, a rounding one
attacked through its zero gradient: Athalye, Carlini & Wagner, "Obfuscated Gradients Give a
False Sense of Security", ICML 2018; Tramèr et al., "On Adaptive Attacks to Adversarial
Example Defenses", NeurIPS 2020). So, as AutoAttack checks a model for randomness before it
runs, the harness measures both on a probe signal and on real clips of the run, and attacks
what it measured: a defense that varies between draws gets EOT and one without a useful input
gradient gets BPDA, whatever it declared. A gradient is useful when it is not zero almost
everywhere (:data:`ZERO_GRADIENT_FRACTION`: a steep staircase) and when finite differences
along it agree with it at every step from 1e-4 up to the attack's radius
(:data:`GRADIENT_FD_STEPS`: a shattering finer than the radius). Declarations that would have
made the evaluation weaker are mismatches: errors in ``musicbench validate``, flags on the
cells of a run. Declaring *more* than measured (randomized but constant on the probe,
non-differentiable but with gradients: a hard mask whose gradient ignores where the mask
switches) only costs compute or picks BPDA, and is allowed. Where BPDA is used, the
surrogate's fidelity is measured too; one far from the defense is a warning
(:meth:`DefenseBehaviour.warnings`). :func:`measure_model` measures whether a model's own
forward is random (dropout left on), for EOT over its draws.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from musicbench.errors import DefenseContractError
from musicbench.interfaces import Preprocessor, TargetModel

PROBE_SECONDS = 1.0
"""Length of the probe signal the flags are measured on."""

PROBE_DRAWS = 3
"""Generator seeds tried when looking for randomness (any two outputs differing counts)."""

GRADIENT_RTOL = 1e-6
"""An input gradient whose norm is below this fraction of the upstream gradient's counts as
none (rounding gives exactly zero; float noise of an identity-like path is far above it)."""

GRADIENT_FD_STEPS = (1e-4, 3e-4, 1e-3, 2e-3)
"""Steps of the finite-difference check, along each probed sample's own gradient scaled to
peak 1: from 1e-4 (a twentieth of the benchmark's L-inf radius; small enough for the
curvature of smooth defenses, large enough for float32) up to the radius itself, ε = 0.002,
the scale at which an attack moves. A gradient can describe the output at 1e-4 and not at ε:
a soft shattering ``x + a·sin(2πx/P)`` with 1e-4 < P < ε scores 0.89 at 1e-4 and -0.67 at
1e-3 and 2e-3 (tests/test_masking_evasion.py). Honest built-ins, median over the probes, on
the probe and two m21-styles clips (``benchmarks/masking_checks.py``): every linear one and
denoise-unet 1.00 at every step; denoise-spectral's soft gate 0.87 at 1e-4 down to 0.70 at
2e-3 on real clips (its curvature)."""

GRADIENT_FD_PROBES = 16
"""Output samples the finite-difference check probes, one at a time, drawn among those whose
input position has a nonzero gradient (a probe on a plateau of a staircase says nothing)."""

GRADIENT_FD_RATIO = (0.5, 2.0)
"""A gradient describes the output when the finite-difference slope along it is within this
factor of the autograd slope (the median over the probes, at every step of
:data:`GRADIENT_FD_STEPS`); outside, the gradient is shattered (Athalye et al. 2018): a
straight-through rounding, say, has an identity gradient over a staircase."""

GRADIENT_FD_MAX_FLIPS = 0.125
"""Largest share of the probes on which, at some step, the finite difference has the sign
opposite to the autograd slope (a step along the gradient lowers the sample: the attack's
step goes the wrong way) before the gradient counts as shattered, whatever the median says.
Every honest built-in: 0 at every step; the soft shattering above: 10 of 16 at ε."""

ZERO_GRADIENT_FRACTION = 0.5
"""A defense whose input gradient (of a random projection of its output) is exactly zero on
more than this share of the input samples has a gradient that is "zero almost everywhere"
(rounding, a steep staircase whose ramps are a few percent of each step): a gradient attack
sees nothing on the plateaus, so it is attacked with BPDA through its surrogate whatever it
declares (Athalye et al. 2018, section 4.1). Honest built-ins: 0, except time-shift in
``crop`` mode (what is shifted out of the clip: 3.5 % of the 1 s probe, 0.9 % of 4 s clips);
the steep staircase of tests/test_masking_evasion.py: 98 %."""

SURROGATE_FIDELITY_MAX = 0.5
"""BPDA fidelity (:attr:`DefenseBehaviour.surrogate_fidelity`, ``‖f(x) − g(x)‖ / ‖f(x) −
x‖``, f the defense, g its surrogate; 1 for the identity) above which a surrogate accounts for
too little of what the defense does -- when that part is large (:data:`SURROGATE_ERROR_MAX`).
mp3 at 32 kbps through version 1's low-pass: 1.00 on two m21-styles clips (0.85 on the
probe), through version 2's per-bin gain 0.37; the hard spectral gate through its soft gate:
0.25."""

SURROGATE_ERROR_MAX = 0.05
"""... and the surrogate is off by more than this share of the defense's output (``‖f(x) −
g(x)‖ / ‖f(x)‖``, -26 dB): then BPDA's gradients ignore a part of what the defense does
that is larger than the attack's own perturbation (a ±0.002 perturbation is ~2 % of a clip at
-20 dBFS RMS). The identity surrogate of 8-bit ``quantize`` (the straight-through estimator:
Athalye et al. take g(x) = x where f(x) ≈ x) is off by 1.4-2.5 %; mp3's low-pass at 32 kbps by
5-18 % (6.3 %, the larger median), its per-bin gain by 2.4 %; at 8 kbps by 14 %."""

SAME_OUTPUT_RTOL = 1e-5
"""Two outputs differ when some sample differs by more than this (relative to the peak):
above float noise of a nondeterministic GPU kernel, far below any real random draw."""

RANGE_TOLERANCE = 1e-5
"""How far past [-1, 1] a defense's output may stray (float error of filters) before it is a
contract violation; the harness clamps what it lets through."""


@dataclass(frozen=True)
class DefenseBehaviour:
    """Declared and measured flags of one defense at one sample rate. JSON-able
    (``dataclasses.asdict``: each cell stores it in its info)."""

    name: str
    declared_randomized: bool
    declared_differentiable: bool
    randomized: bool
    """Measured: outputs for different generator states differ."""
    reproducible: bool
    """Measured: the same generator state gives the same output (randomness only from the
    generator it is given)."""
    differentiable: bool
    """Measured: the output carries a finite, nonzero input gradient that describes it:
    not zero almost everywhere (:attr:`zero_gradient_fraction`), and finite differences
    along it agree with it at every step up to the attack's radius (:attr:`shattered`)."""
    gradient_fd_ratio: float | None = None
    """Measured: finite-difference slope of an output sample along its own input gradient
    over the autograd slope, the median over the probes (:func:`_finite_difference`); 1 for
    an honest gradient; of the steps and inputs measured, the one farthest from 1; None
    without a gradient."""
    gradient_fd_ratios: dict[str, float] | None = None
    """The same per step of :data:`GRADIENT_FD_STEPS` (``{"0.0001": 1.0, ..., "0.002":
    0.7}``), the input farthest from 1 at each step."""
    gradient_sign_flips: float | None = None
    """Measured: the largest share, over steps and inputs, of the probes whose finite
    difference has the sign opposite to the autograd slope (0 for an honest gradient)."""
    zero_gradient_fraction: float | None = None
    """Measured: the share of input samples whose gradient (of a random projection of the
    output) is exactly zero, the largest over the inputs; None without a gradient."""
    surrogate_fidelity: float | None = None
    """Measured where the defense is attacked with BPDA: ``‖f(x) − g(x)‖ / ‖f(x) − x‖`` per
    clip (f the defense, one draw; g its :meth:`~Preprocessor.surrogate`), the median over the
    clips of an input, the largest over the inputs: 0 when the surrogate is the defense, 1
    for the identity. None when not attacked with BPDA or the defense left every clip as it
    was."""
    surrogate_error: float | None = None
    """... and ``‖f(x) − g(x)‖ / ‖f(x)‖``, measured the same way: how far off the surrogate is,
    relative to what the model sees."""

    @property
    def shattered(self) -> bool:
        """A nonzero gradient that does not predict the output at some step up to the attack's
        radius: the median ratio outside :data:`GRADIENT_FD_RATIO`, or more than
        :data:`GRADIENT_FD_MAX_FLIPS` of the probes going the wrong way."""
        low, high = GRADIENT_FD_RATIO
        out_of_band = (self.gradient_fd_ratio is not None
                       and not low <= self.gradient_fd_ratio <= high)
        return out_of_band or (self.gradient_sign_flips or 0.0) > GRADIENT_FD_MAX_FLIPS

    @property
    def zero_almost_everywhere(self) -> bool:
        """An input gradient that is exactly zero on most samples
        (:data:`ZERO_GRADIENT_FRACTION`)."""
        return (self.zero_gradient_fraction or 0.0) > ZERO_GRADIENT_FRACTION

    @property
    def surrogate_uninformative(self) -> bool:
        """The BPDA surrogate accounts for little of what the defense does, and that is a
        large part of the defense's output (:data:`SURROGATE_FIDELITY_MAX`,
        :data:`SURROGATE_ERROR_MAX`)."""
        return (self.surrogate_fidelity is not None and self.surrogate_error is not None
                and self.surrogate_fidelity > SURROGATE_FIDELITY_MAX
                and self.surrogate_error > SURROGATE_ERROR_MAX)

    @property
    def attack_randomized(self) -> bool:
        """Attack with EOT and judge over draws: declared or measured randomized."""
        return self.declared_randomized or self.randomized or not self.reproducible

    @property
    def attack_with_bpda(self) -> bool:
        """Backward through the surrogate: declared or measured without useful gradients."""
        return not (self.declared_differentiable and self.differentiable)

    def mismatches(self) -> list[str]:
        """Declarations that would have weakened the evaluation (errors in validate, flags in
        a run, where the harness attacks what it measured instead)."""
        out = []
        if not self.declared_randomized and self.randomized:
            out.append(f"defense '{self.name}' declares randomized = False but its output "
                       "differs between generator draws (attacked with EOT anyway)")
        if not self.reproducible:
            out.append(f"defense '{self.name}' gives different outputs for the same generator "
                       "state: it draws randomness outside the generator it is given, so its "
                       "results are not reproducible")
        if not self.declared_differentiable:
            return out
        if self.zero_almost_everywhere:
            out.append(f"defense '{self.name}' declares differentiable = True but its input "
                       f"gradient is exactly zero on {self.zero_gradient_fraction:.0%} of the "
                       "samples (zero almost everywhere: a gradient attack is blind on the "
                       "plateaus; attacked with BPDA through its surrogate anyway)")
        elif self.shattered:
            out.append(f"defense '{self.name}' declares differentiable = True but its input "
                       "gradient does not describe its output (finite differences along the "
                       f"gradient give {self.gradient_fd_ratio:.3g} times the autograd slope "
                       f"at some step up to the attack's radius ({self._ratios_text()}), "
                       f"{self.gradient_sign_flips or 0:.0%} of the probes going the wrong "
                       "way: shattered gradients; attacked with BPDA through its surrogate "
                       "anyway)")
        elif not self.differentiable:
            out.append(f"defense '{self.name}' declares differentiable = True but has no "
                       "useful input gradient (output detached or zero gradient; attacked "
                       "with BPDA through its surrogate anyway)")
        return out

    def warnings(self) -> list[str]:
        """What weakens the evaluation without any declaration being wrong: a BPDA surrogate
        far from the defense (flags on a run's cells, shown by ``musicbench validate``)."""
        if not self.surrogate_uninformative:
            return []
        return [(f"BPDA surrogate of defense '{self.name}' accounts for little of what the "
                 f"defense does (‖f(x) − g(x)‖ / ‖f(x) − x‖ = {self.surrogate_fidelity:.2f} > "
                 f"{SURROGATE_FIDELITY_MAX:g}; the identity gives 1) and is off by "
                 f"{self.surrogate_error:.1%} of its output (> {SURROGATE_ERROR_MAX:.0%}): "
                 "BPDA gradients may ignore what the defense does to the clip")]

    def flags(self) -> list[str]:
        """Everything a run's cells should carry: :meth:`mismatches` and :meth:`warnings`."""
        return self.mismatches() + self.warnings()

    def notes(self) -> list[str]:
        """Declarations stronger than measured: allowed, worth knowing."""
        out = []
        if self.declared_randomized and not self.randomized:
            out.append(f"defense '{self.name}' declares randomized = True but its output did "
                       f"not vary over {PROBE_DRAWS} draws of the probe")
        if not self.declared_differentiable and self.differentiable:
            out.append(f"defense '{self.name}' declares differentiable = False although its "
                       "output has input gradients; it is attacked with BPDA through its "
                       "surrogate, as declared")
        return out

    def _ratios_text(self) -> str:
        ratios = self.gradient_fd_ratios or {}
        return ", ".join(f"{r:.3g} at step {step}" for step, r in ratios.items())


def probe_audio(sample_rate: int, device: torch.device | str = "cpu",
                seconds: float = PROBE_SECONDS) -> torch.Tensor:
    """``[2, T]``: two deterministic music-like probes (a chord with harmonics and a tone
    over noise) at about -12 dBFS, for measuring a defense's behaviour."""
    t = torch.arange(int(round(seconds * sample_rate)), dtype=torch.float64) / sample_rate
    chord = sum(torch.sin(2 * math.pi * f * t) / (i + 1)
                for i, f in enumerate((220.0, 277.2, 329.6, 440.0, 880.0)))
    g = torch.Generator().manual_seed(1234)
    noise = torch.randn(t.shape, generator=g, dtype=torch.float64)
    tone = torch.sin(2 * math.pi * 523.3 * t) + 0.3 * noise
    probes = torch.stack([chord / chord.abs().max(), tone / tone.abs().max()]) * 0.25
    return probes.to(device=device, dtype=torch.float32)


@dataclass
class _Measured:
    """What :func:`_measure_one` finds on one input."""

    randomized: bool
    reproducible: bool
    has_gradient: bool
    output: torch.Tensor  # one draw (generator seed 0), no graph
    zero_fraction: float | None = None
    ratios: dict[float, float] = field(default_factory=dict)  # step -> median ratio
    flips: float | None = None


def measure(defense: Preprocessor, sample_rate: int, device: torch.device | str = "cpu",
            audio: torch.Tensor | None = None) -> DefenseBehaviour:
    """Run ``defense`` (already bound and loaded) on the probe, and on ``audio[B, T]`` (real
    clips of the run, at their real length) when given, and measure its flags: randomness or
    gradients that show only at some lengths or levels are then seen too. Where the defense
    is attacked with BPDA, also the fidelity of its surrogate on the same inputs."""
    inputs = [probe_audio(sample_rate, device)]
    if audio is not None and audio.numel():
        inputs.append(audio.to(device=device, dtype=torch.float32))
    found = [_measure_one(defense, x) for x in inputs]
    ratios: dict[str, float] = {}
    for step in GRADIENT_FD_STEPS:
        at_step = [m.ratios[step] for m in found if step in m.ratios]
        if at_step:
            ratios[f"{step:g}"] = max(at_step, key=_log_distance)
    zero = [m.zero_fraction for m in found if m.zero_fraction is not None]
    flips = [m.flips for m in found if m.flips is not None]
    behaviour = DefenseBehaviour(
        name=defense.name,
        declared_randomized=bool(defense.randomized),
        declared_differentiable=bool(defense.differentiable),
        randomized=any(m.randomized for m in found),
        reproducible=all(m.reproducible for m in found),
        differentiable=all(m.has_gradient for m in found),
        gradient_fd_ratio=max(ratios.values(), key=_log_distance) if ratios else None,
        gradient_fd_ratios=ratios or None,
        gradient_sign_flips=max(flips) if flips else None,
        zero_gradient_fraction=max(zero) if zero else None,
    )
    if behaviour.differentiable and (behaviour.shattered or behaviour.zero_almost_everywhere):
        behaviour = dataclasses.replace(behaviour, differentiable=False)
    if behaviour.attack_with_bpda:
        fidelity = [_surrogate_fidelity(defense, x, m.output) for x, m in zip(inputs, found,
                                                                               strict=True)]
        kept = [f for f in fidelity if f is not None]
        if kept:
            behaviour = dataclasses.replace(behaviour,
                                            surrogate_fidelity=max(f[0] for f in kept),
                                            surrogate_error=max(f[1] for f in kept))
    return behaviour


def _log_distance(ratio: float) -> float:
    """How far a slope ratio is from 1, either way (a negative ratio is farthest)."""
    return math.inf if ratio <= 0 else abs(math.log(ratio))


def _differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Outputs differ beyond float noise (a GPU kernel need not be bitwise reproducible)."""
    scale = max(1.0, float(a.abs().max())) if a.numel() else 1.0
    return bool((a - b).abs().max() > SAME_OUTPUT_RTOL * scale) if a.numel() else False


def _measure_one(defense: Preprocessor, audio: torch.Tensor) -> _Measured:
    """Randomness, reproducibility and the gradient's checks on one input ``audio[B, T]``."""

    def run(seed: int, x: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator(device=x.device).manual_seed(seed)
        return checked_output(defense, x, defense.forward(x, gen))

    with torch.no_grad():
        outs = [run(seed, audio) for seed in range(PROBE_DRAWS)]
        again = run(0, audio)
    found = _Measured(randomized=any(_differ(outs[0], o) for o in outs[1:]),
                      reproducible=not _differ(outs[0], again), has_gradient=False,
                      output=outs[0])
    x = audio.clone().requires_grad_(True)
    upstream = torch.randn(audio.shape, generator=torch.Generator().manual_seed(7)
                           ).to(audio.device)
    with torch.enable_grad():
        out = run(0, x)
        if not out.requires_grad:
            return found
        (grad,) = torch.autograd.grad((out * upstream).sum(), x, allow_unused=True,
                                      retain_graph=True)  # the probes reuse the graph
        if grad is None or not bool(torch.isfinite(grad).all()):
            return found
        found.has_gradient = bool(grad.norm() > GRADIENT_RTOL * upstream.norm())
        if not found.has_gradient:
            return found
        found.zero_fraction = float((grad == 0).double().mean())
        found.ratios, found.flips = _finite_difference(lambda z: run(0, z), audio, x, out,
                                                       grad != 0)
    return found


def _finite_difference(run: Callable[[torch.Tensor], torch.Tensor], audio: torch.Tensor,
                       x: torch.Tensor, out: torch.Tensor, nonzero: torch.Tensor
                       ) -> tuple[dict[float, float], float | None]:
    """({step: median ratio}, share of sign flips) over :data:`GRADIENT_FD_PROBES` output
    samples ``(b, t)`` (seeded; in the middle half of the clip, where ``nonzero[b, t]``: the
    input gradient there is not zero). Per probe and step ``h`` of :data:`GRADIENT_FD_STEPS`:
    the central finite difference of ``run(x)[b, t]`` along ``d = g / max|g|``, ``g`` its
    autograd input gradient, over the autograd slope ``<g, d>``; a negative ratio is a sign
    flip. The same generator state on both sides (common random numbers: a randomized
    defense is measured on one draw). One output sample at a time, because a projection on
    many would average a staircase's jumps back into its mean slope. ({}, None) when no
    probed sample has a gradient. ``audio[B, T]``; ``out = run(x)`` with its graph kept, ``x``
    a leaf copy of ``audio`` (one forward pass for every probe's gradient).
    """
    length = audio.shape[1]
    middle = torch.zeros_like(nonzero)
    middle[:, length // 4: 3 * length // 4 + 1] = True
    candidates = (nonzero & middle).flatten().nonzero().squeeze(1).cpu()
    if not candidates.numel():
        return {}, None
    g = torch.Generator().manual_seed(11)
    picks = candidates[torch.randint(candidates.numel(), (GRADIENT_FD_PROBES,), generator=g)]
    per_step: dict[float, list[float]] = {h: [] for h in GRADIENT_FD_STEPS}
    for flat in picks.tolist():
        b, t = divmod(flat, length)
        (grad,) = torch.autograd.grad(out[b, t], x, retain_graph=True)
        peak = float(grad.abs().max())
        if not math.isfinite(peak) or peak <= GRADIENT_RTOL:
            continue
        direction = grad / peak
        slope = float((grad.double() * direction.double()).sum())
        with torch.no_grad():
            for h in GRADIENT_FD_STEPS:
                change = float(run(audio + h * direction)[b, t]) - float(
                    run(audio - h * direction)[b, t])
                per_step[h].append(change / (2 * h) / slope)
    if not per_step[GRADIENT_FD_STEPS[0]]:
        return {}, None
    medians = {h: float(torch.tensor(r).median()) for h, r in per_step.items()}
    flips = max(sum(r <= 0 for r in rs) / len(rs) for rs in per_step.values())
    return medians, flips


def _surrogate_fidelity(defense: Preprocessor, audio: torch.Tensor, out: torch.Tensor
                        ) -> tuple[float, float] | None:
    """``(median ‖f − g‖ / ‖f − x‖, median ‖f − g‖ / ‖f‖)`` over the clips of ``audio[B, T]``
    that the defense changes (``out`` = f(audio), one draw), g = ``defense.surrogate``; None
    when it changes none."""
    with torch.no_grad():
        g = defense.surrogate(audio).to(out.dtype)
        x, f = audio.double(), out.double()
        change = (f - x).norm(dim=1)
        off = (f - g.double()).norm(dim=1)
        size = f.norm(dim=1)
        changed = change > SAME_OUTPUT_RTOL * x.norm(dim=1).clamp_min(1e-12)
    if not bool(changed.any()):
        return None
    fidelity = (off[changed] / change[changed]).median()
    error = (off[changed] / size[changed].clamp_min(1e-12)).median()
    return float(fidelity), float(error)


@dataclass(frozen=True)
class ModelBehaviour:
    """Measured randomness of a loaded model's own forward (a plain model, or a training
    defense's defended model): AutoAttack checks a model for randomness before it runs, since
    an attack without EOT overstates the robustness of a model that draws at every call
    (Athalye et al. 2018, section 4.3). JSON-able (``dataclasses.asdict``)."""

    name: str
    randomized: bool
    """Two forward passes on one input, from different states of the global RNG, differ
    (dropout left on in ``module()``, a stochastic layer)."""
    reproducible: bool
    """The same global RNG state gives the same output (the model draws from nothing else:
    not numpy, not a generator of its own)."""
    train_mode: bool
    """``module().training`` after loading (dropout and batch norm in training behaviour)."""

    @property
    def attack_randomized(self) -> bool:
        """Attack with EOT over the model's draws and judge over draws
        (:class:`~musicbench.victim.Victim`'s ``randomized_model``)."""
        return self.randomized or not self.reproducible

    def flags(self) -> list[str]:
        """What a run's cells on this model should carry."""
        out = []
        if self.randomized:
            why = " (module() is in train mode: dropout left on?)" if self.train_mode else ""
            out.append(f"model '{self.name}' is randomized: two forward passes on one input "
                       f"differ{why}; attacked with EOT over its draws and judged over draws")
        if not self.reproducible:
            out.append(f"model '{self.name}' gives different outputs for the same global RNG "
                       "state: it draws randomness from elsewhere (numpy, a generator of its "
                       "own), so its results are not reproducible")
        return out


def measure_model(model: TargetModel, device: torch.device | str = "cpu",
                  audio: torch.Tensor | None = None) -> ModelBehaviour:
    """Whether ``model`` (loaded, on ``device``) is randomized: its scores (``forward``, or
    ``embed`` for a retrieval model, over windows as the Victim scores) on the probe at the
    model's rate, and on ``audio[B, T]`` (real clips of the run) when given, from
    :data:`PROBE_DRAWS` seeded states of the global RNG (forked: the caller's RNG is left as
    it was), and once more from the first state. Cost: ``2 * (PROBE_DRAWS + 1)`` forward
    passes of a few clips.
    """
    from musicbench.global_rng import seeded_global_rng
    from musicbench.windows import score_windows

    fn = model.embed if model.task == "retrieval" else model.forward
    inputs = [probe_audio(model.sample_rate, device)]
    if audio is not None and audio.numel():
        inputs.append(audio.to(device=device, dtype=torch.float32))
    randomized, reproducible = False, True

    def run(seed: int, x: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator(device=x.device).manual_seed(seed)
        with seeded_global_rng(gen, x.device):
            return score_windows(fn, x, model.input_samples).float()

    with torch.no_grad():
        for x in inputs:
            outs = [run(seed, x) for seed in range(PROBE_DRAWS)]
            randomized = randomized or any(_differ(outs[0], o) for o in outs[1:])
            reproducible = reproducible and not _differ(outs[0], run(0, x))
    module = model.module()
    return ModelBehaviour(name=model.name, randomized=randomized, reproducible=reproducible,
                          train_mode=bool(getattr(module, "training", False)))


def checked_output(defense: Preprocessor, audio: torch.Tensor,
                   out: torch.Tensor) -> torch.Tensor:
    """``out`` if it keeps the Preprocessor contract (same shape, floating, finite, within
    [-1, 1] up to :data:`RANGE_TOLERANCE`), clamped to [-1, 1]; else
    :class:`DefenseContractError` naming what broke."""
    name = defense.name or type(defense).__name__
    if not isinstance(out, torch.Tensor):
        raise DefenseContractError(f"defense '{name}' returned {type(out).__name__}, "
                                   "not a tensor")
    if out.shape != audio.shape:
        raise DefenseContractError(f"defense '{name}' returned shape {tuple(out.shape)} for "
                                   f"input {tuple(audio.shape)}; it must keep the shape")
    if not out.is_floating_point():
        raise DefenseContractError(f"defense '{name}' returned {out.dtype} audio")
    with torch.no_grad():
        if not bool(torch.isfinite(out).all()):
            raise DefenseContractError(f"defense '{name}' returned NaN or infinite samples")
        peak = float(out.abs().max()) if out.numel() else 0.0
    if peak > 1.0 + RANGE_TOLERANCE:
        raise DefenseContractError(f"defense '{name}' returned samples outside [-1, 1] "
                                   f"(peak {peak:.6f})")
    out = out.to(audio.dtype)
    return out.clamp(-1.0, 1.0) if peak > 1.0 else out
