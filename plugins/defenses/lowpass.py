"""Low-pass filtering of the waveform: a deterministic, differentiable preprocessing defense.

Filtering away the upper band removes whatever part of an adversarial perturbation lives
there. Evaluated as an audio adversarial defense by Rajaratnam, Shah & Kalita, "Isolated and
Ensemble Audio Preprocessing Methods for Detecting Adversarial Examples against Automatic Speech
Recognition", ROCLING 2018 (filtering, alone and in an ensemble). It is a linear filter, so an
adaptive attacker differentiates straight through it (Athalye, Carlini & Wagner, "Obfuscated
Gradients Give a False Sense of Security", ICML 2018): the harness attacks it with plain
gradients, and the perturbation simply moves below the cutoff.

The filter is julius' windowed-sinc low-pass (``julius.lowpass_filter``: a Hann-windowed sinc
of ``zeros`` zero crossings on each side, normalised to unit DC gain, edges padded by
replication, FFT convolution for long filters). julius is used rather than our own FIR code
because it is small (torch only), batched, differentiable, runs on any device and is already
the filter audio research code uses (demucs, denoiser); scipy's filters would leave torch and
lose the gradient. The output is clamped to [-1, 1] (the sinc's ripple can overshoot).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from musicbench.api import Preprocessor
from musicbench_plugins.defenses._checks import bound_rate, check_number, config_error


@dataclass(frozen=True)
class LowPassParams:
    """``cutoff_hz``: the cutoff frequency in Hz (-6 dB point of the windowed sinc); must be
    below the Nyquist frequency of the model's rate (checked at bind). ``zeros``: half-length
    of the filter in zero crossings of the sinc (julius' default 8): larger is a sharper
    transition band and a longer filter."""

    cutoff_hz: float = 4000.0
    zeros: float = 8.0

    def __post_init__(self) -> None:
        check_number("cutoff_hz", self.cutoff_hz, above=0)
        check_number("zeros", self.zeros, at_least=1, at_most=64)


def lowpass(audio: torch.Tensor, cutoff_hz: float, sample_rate: int,
            zeros: float = 8.0) -> torch.Tensor:
    """``audio[B, T]`` -> the same, low-passed at ``cutoff_hz`` (differentiable, unclamped)."""
    import julius

    return julius.lowpass_filter(audio, cutoff_hz / sample_rate, zeros=zeros)


class LowPass(Preprocessor):
    """Windowed-sinc low-pass filter (julius); deterministic, differentiable, any rate.

    Shape: ``audio[B, T]`` -> ``[B, T]``, clamped to [-1, 1].
    """

    name = "lowpass"
    version = "1"
    Params = LowPassParams

    def bind(self, sample_rate: int) -> None:
        super().bind(sample_rate)
        nyquist = sample_rate / 2
        if not self.params.cutoff_hz < nyquist:
            raise config_error(
                self, "cutoff_hz",
                f"cutoff {self.params.cutoff_hz} Hz is not below the Nyquist frequency "
                f"{nyquist:g} Hz of the model's {sample_rate} Hz audio; choose a lower cutoff")

    def forward(self, audio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        rate = bound_rate(self)
        return lowpass(audio, self.params.cutoff_hz, rate, self.params.zeros).clamp(-1, 1)
