"""What the harness measures of a preprocessing defense before it attacks it.

A defense declares ``randomized`` and ``differentiable``; an evaluation that trusts a wrong
declaration overstates robustness (a randomized defense attacked without EOT, a rounding one
attacked through its zero gradient: Athalye, Carlini & Wagner, "Obfuscated Gradients Give a
False Sense of Security", ICML 2018). So, as AutoAttack checks a model for randomness before it
runs, the harness measures both on a probe signal and on real clips of the run, and attacks
what it measured: a defense that varies between draws gets EOT and one without a useful input
gradient gets BPDA, whatever it declared. Declarations that would have made the evaluation
weaker are mismatches: errors in ``musicbench validate``, flags on the cells of a run.
Declaring *more* than measured
(randomized but constant on the probe, non-differentiable but with gradients: a hard mask whose
gradient ignores where the mask switches) only costs compute or picks BPDA, and is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from musicbench.errors import DefenseContractError
from musicbench.interfaces import Preprocessor

PROBE_SECONDS = 1.0
"""Length of the probe signal the flags are measured on."""

PROBE_DRAWS = 3
"""Generator seeds tried when looking for randomness (any two outputs differing counts)."""

GRADIENT_RTOL = 1e-6
"""An input gradient whose norm is below this fraction of the upstream gradient's counts as
none (rounding gives exactly zero; float noise of an identity-like path is far above it)."""

GRADIENT_FD_STEP = 1e-4
"""Step of the finite-difference check, along the measured gradient scaled to peak 1 (a
twentieth of the benchmark's L-inf radius): small enough for the curvature of smooth
defenses (`denoise-spectral`'s soft gate scores 0.86 here on real clips), large enough for
float32, and at the attack's scale (a 16-bit staircase is a slope of 1 at this step)."""

GRADIENT_FD_PROBES = 8
"""Output samples the finite-difference check probes, one at a time (median of their ratios)."""

GRADIENT_FD_RATIO = (0.5, 2.0)
"""A gradient describes the output when the finite-difference slope along it is within this
factor of the autograd slope; outside, the gradient is shattered (Athalye et al. 2018): a
straight-through rounding, say, has an identity gradient over a staircase."""

SAME_OUTPUT_RTOL = 1e-5
"""Two outputs differ when some sample differs by more than this (relative to the peak):
above float noise of a nondeterministic GPU kernel, far below any real random draw."""

RANGE_TOLERANCE = 1e-5
"""How far past [-1, 1] a defense's output may stray (float error of filters) before it is a
contract violation; the harness clamps what it lets through."""


@dataclass(frozen=True)
class DefenseBehaviour:
    """Declared and measured flags of one defense at one sample rate."""

    name: str
    declared_randomized: bool
    declared_differentiable: bool
    randomized: bool
    """Measured: outputs for different generator states differ."""
    reproducible: bool
    """Measured: the same generator state gives the same output (randomness only from the
    generator it is given)."""
    differentiable: bool
    """Measured: the output carries a finite, nonzero input gradient that describes it
    (:attr:`gradient_fd_ratio` within :data:`GRADIENT_FD_RATIO`)."""
    gradient_fd_ratio: float | None = None
    """Measured: finite-difference slope of an output sample along its own input gradient
    over the autograd slope, the median over a few samples (:func:`_finite_difference_ratio`);
    1 for an honest gradient; of the inputs measured, the one farthest from 1; None without a
    gradient."""

    @property
    def shattered(self) -> bool:
        """A nonzero gradient that does not predict the output."""
        low, high = GRADIENT_FD_RATIO
        return self.gradient_fd_ratio is not None and not low <= self.gradient_fd_ratio <= high

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
        if self.declared_differentiable and self.shattered:
            out.append(f"defense '{self.name}' declares differentiable = True but its input "
                       "gradient does not describe its output (finite differences along the "
                       f"gradient give {self.gradient_fd_ratio:.3g} times the autograd slope: "
                       "shattered gradients; attacked with BPDA through its surrogate anyway)")
        elif self.declared_differentiable and not self.differentiable:
            out.append(f"defense '{self.name}' declares differentiable = True but has no "
                       "useful input gradient (output detached or zero gradient; attacked "
                       "with BPDA through its surrogate anyway)")
        return out

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


def measure(defense: Preprocessor, sample_rate: int, device: torch.device | str = "cpu",
            audio: torch.Tensor | None = None) -> DefenseBehaviour:
    """Run ``defense`` (already bound and loaded) on the probe, and on ``audio[B, T]`` (real
    clips of the run, at their real length) when given, and measure its flags: randomness or
    gradients that show only at some lengths or levels are then seen too."""
    inputs = [probe_audio(sample_rate, device)]
    if audio is not None and audio.numel():
        inputs.append(audio.to(device=device, dtype=torch.float32))
    randomized, reproducible, differentiable = False, True, True
    worst_ratio: float | None = None
    for x in inputs:
        r, rep, diff, ratio = _measure_one(defense, x)
        randomized, reproducible = randomized or r, reproducible and rep
        differentiable = differentiable and diff
        if ratio is not None and (worst_ratio is None
                                  or _log_distance(ratio) > _log_distance(worst_ratio)):
            worst_ratio = ratio
    behaviour = DefenseBehaviour(
        name=defense.name,
        declared_randomized=bool(defense.randomized),
        declared_differentiable=bool(defense.differentiable),
        randomized=randomized, reproducible=reproducible, differentiable=differentiable,
        gradient_fd_ratio=worst_ratio,
    )
    if behaviour.shattered:
        behaviour = dataclasses.replace(behaviour, differentiable=False)
    return behaviour


def _log_distance(ratio: float) -> float:
    """How far a slope ratio is from 1, either way (a negative ratio is farthest)."""
    return math.inf if ratio <= 0 else abs(math.log(ratio))


def _differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Outputs differ beyond float noise (a GPU kernel need not be bitwise reproducible)."""
    scale = max(1.0, float(a.abs().max())) if a.numel() else 1.0
    return bool((a - b).abs().max() > SAME_OUTPUT_RTOL * scale) if a.numel() else False


def _measure_one(defense: Preprocessor, audio: torch.Tensor
                 ) -> tuple[bool, bool, bool, float | None]:
    """(randomized, reproducible, differentiable, gradient_fd_ratio) on one input
    ``audio[B, T]``."""

    def run(seed: int, x: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator(device=x.device).manual_seed(seed)
        return checked_output(defense, x, defense.forward(x, gen))

    with torch.no_grad():
        outs = [run(seed, audio) for seed in range(PROBE_DRAWS)]
        again = run(0, audio)
    randomized = any(_differ(outs[0], o) for o in outs[1:])
    reproducible = not _differ(outs[0], again)
    x = audio.clone().requires_grad_(True)
    differentiable, ratio = False, None
    upstream = torch.randn(audio.shape, generator=torch.Generator().manual_seed(7)
                           ).to(audio.device)
    with torch.enable_grad():
        out = run(0, x)
        if out.requires_grad:
            (grad,) = torch.autograd.grad((out * upstream).sum(), x, allow_unused=True,
                                          retain_graph=True)  # the ratio's probes reuse it
            if grad is not None and bool(torch.isfinite(grad).all()):
                differentiable = bool(grad.norm() > GRADIENT_RTOL * upstream.norm())
        if differentiable:
            ratio = _finite_difference_ratio(lambda z: run(0, z), audio, x, out)
    return randomized, reproducible, differentiable, ratio


def _finite_difference_ratio(run: Callable[[torch.Tensor], torch.Tensor],
                             audio: torch.Tensor, x: torch.Tensor, out: torch.Tensor
                             ) -> float | None:
    """Median over :data:`GRADIENT_FD_PROBES` output samples ``(b, t)`` (seeded) of the
    central finite-difference slope of ``run(x)[b, t]`` along ``d = g / max|g|``, where ``g``
    is its autograd input gradient, over the autograd slope ``<g, d>``; the same generator
    state on both sides (common random numbers: a randomized defense is measured on one draw).
    One output sample at a time, because a projection on many would average a staircase's
    jumps back into its mean slope. None when no probed sample has a gradient. ``audio[B, T]``;
    ``out = run(x)`` with its graph kept, ``x`` a leaf copy of ``audio`` (one forward pass for
    every probe's gradient).
    """
    batch, length = audio.shape
    g = torch.Generator().manual_seed(11)
    rows = torch.randint(batch, (GRADIENT_FD_PROBES,), generator=g).tolist()
    cols = torch.randint(length // 4, 3 * length // 4 + 1, (GRADIENT_FD_PROBES,),
                         generator=g).tolist()
    ratios = []
    h = GRADIENT_FD_STEP
    for b, t in zip(rows, cols, strict=True):
        (grad,) = torch.autograd.grad(out[b, t], x, retain_graph=True)
        peak = float(grad.abs().max())
        if not math.isfinite(peak) or peak <= GRADIENT_RTOL:
            continue
        direction = grad / peak
        slope = float((grad.double() * direction.double()).sum())
        with torch.no_grad():
            change = float(run(audio + h * direction)[b, t]) - float(
                run(audio - h * direction)[b, t])
        ratios.append(change / (2 * h) / slope)
    return float(torch.tensor(ratios).median()) if ratios else None


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
