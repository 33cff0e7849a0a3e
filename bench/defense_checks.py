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

import math
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
    """Measured: the output carries a finite, nonzero input gradient."""

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
        if self.declared_differentiable and not self.differentiable:
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
    for x in inputs:
        r, rep, diff = _measure_one(defense, x)
        randomized, reproducible = randomized or r, reproducible and rep
        differentiable = differentiable and diff
    return DefenseBehaviour(
        name=defense.name,
        declared_randomized=bool(defense.randomized),
        declared_differentiable=bool(defense.differentiable),
        randomized=randomized, reproducible=reproducible, differentiable=differentiable,
    )


def _differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Outputs differ beyond float noise (a GPU kernel need not be bitwise reproducible)."""
    scale = max(1.0, float(a.abs().max())) if a.numel() else 1.0
    return bool((a - b).abs().max() > SAME_OUTPUT_RTOL * scale) if a.numel() else False


def _measure_one(defense: Preprocessor, audio: torch.Tensor) -> tuple[bool, bool, bool]:
    """(randomized, reproducible, differentiable) on one input ``audio[B, T]``."""

    def run(seed: int, x: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator(device=x.device).manual_seed(seed)
        return checked_output(defense, x, defense.forward(x, gen))

    with torch.no_grad():
        outs = [run(seed, audio) for seed in range(PROBE_DRAWS)]
        again = run(0, audio)
    randomized = any(_differ(outs[0], o) for o in outs[1:])
    reproducible = not _differ(outs[0], again)
    x = audio.clone().requires_grad_(True)
    differentiable = False
    with torch.enable_grad():
        out = run(0, x)
        if out.requires_grad:
            upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)
                                   ).to(out.device)
            (grad,) = torch.autograd.grad((out * upstream).sum(), x, allow_unused=True)
            if grad is not None and bool(torch.isfinite(grad).all()):
                differentiable = bool(grad.norm() > GRADIENT_RTOL * upstream.norm())
    return randomized, reproducible, differentiable


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
