"""Additive Gaussian noise: a randomized, differentiable preprocessing defense.

Adding isotropic Gaussian noise before the model is the base of randomized smoothing (Cohen,
Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing", ICML 2019),
brought to speech recognition by Olivier & Raj, "Sequential Randomized Smoothing for
Adversarially Robust Speech Recognition", EMNLP 2021. Rajaratnam & Kalita, "Noise Flooding for
Detecting Audio Adversarial Examples Against Automatic Speech Recognition", ISSPIT 2018,
flooded (band-limited) noise into the input to detect adversarial examples.

Here the defended model sees x + sigma * n, n ~ N(0, I), clamped to [-1, 1]; one draw per
call per sample. This is only the noise of randomized smoothing, used as a plain randomized
preprocessor: it is neither Cohen et al.'s smoothed classifier (the plurality class over many
draws, abstaining when a hypothesis test cannot separate it from the runner-up) nor a
certificate (no radius is computed). The harness judges a clip over ``eval_draws`` draws
(fooled when wrong on more than half of them): no plurality vote, no abstain. It attacks the
noisy model with EOT (Athalye, Carlini & Wagner, ICML 2018): every gradient averages
``eot_samples`` draws. The noise comes from the generator the harness passes, on the audio's
device. No library is needed for ``randn``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from musicbench.api import Preprocessor
from musicbench_plugins.defenses._checks import check_number


@dataclass(frozen=True)
class NoiseParams:
    """``sigma``: standard deviation of the Gaussian noise on the [-1, 1] waveform (0.01 is
    about -40 dB of full scale), in (0, 1]."""

    sigma: float = 0.01

    def __post_init__(self) -> None:
        check_number("sigma", self.sigma, above=0, at_most=1)


class GaussianNoise(Preprocessor):
    """x + sigma * N(0, I), clamped to [-1, 1]; randomized, differentiable, any rate.

    Shape: ``audio[B, T]`` -> ``[B, T]``.
    """

    name = "noise"
    version = "1"
    randomized = True
    Params = NoiseParams

    def forward(self, audio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(audio.shape, generator=generator, device=audio.device,
                            dtype=audio.dtype)
        return (audio + self.params.sigma * noise).clamp(-1, 1)
