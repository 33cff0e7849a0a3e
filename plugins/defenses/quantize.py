"""Bit-depth reduction (amplitude quantisation): a deterministic, non-differentiable
preprocessing defense.

Rounding every sample to a coarse grid erases perturbations smaller than half a step.
Evaluated as an audio adversarial defense by Yang, Li, Chen & Song, "Characterizing Audio
Adversarial Examples Using Temporal Dependency", ICLR 2019 (rounding 16-bit samples to
multiples of q = 128 ... 1024, i.e. 9 to 6 bits), and as the quantisation-dequantisation
transform of Hussain et al., "WaveGuard: Understanding and Mitigating Audio Adversarial
Examples", USENIX Security 2021.

``bits`` b gives L = 2**(b-1) levels per polarity, as signed b-bit PCM does: a sample x becomes
clamp(round(x * L), -L, L - 1) / L, so at most 2**b distinct values (b = 16 is int16 PCM).

Rounding has zero gradient almost everywhere, so the defense is declared non-differentiable
and ``forward`` runs without autograd. The harness attacks it with BPDA (Athalye, Carlini &
Wagner, ICML 2018) through :meth:`Quantize.surrogate`, the identity (the straight-through
estimator): the quantised output differs from its input by at most half a step, so the
identity is the closest smooth function to it and its gradient is the one the model behind
would see if the grid were infinitely fine. No library is needed for one rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from musicbench.api import Preprocessor


@dataclass(frozen=True)
class QuantizeParams:
    """``bits``: bit depth b of the signed grid, 2 to 16 (2**(b-1) levels per polarity; 8 is
    a step of 1/128 on the [-1, 1] waveform; Yang et al.'s q = 256 on int16 is b = 8)."""

    bits: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise TypeError(f"bits must be an integer, got {self.bits!r}")
        if not 2 <= self.bits <= 16:
            raise ValueError(f"bits must be between 2 and 16, got {self.bits}")


class Quantize(Preprocessor):
    """Round to a signed ``bits``-bit grid; deterministic, non-differentiable (BPDA: identity).

    Shape: ``audio[B, T]`` -> ``[B, T]``, at most ``2**bits`` distinct values.
    """

    name = "quantize"
    version = "1"
    differentiable = False
    Params = QuantizeParams

    def forward(self, audio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        levels = float(2 ** (self.params.bits - 1))
        with torch.no_grad():
            return torch.round(audio * levels).clamp_(-levels, levels - 1) / levels

    def surrogate(self, audio: torch.Tensor) -> torch.Tensor:
        return audio
