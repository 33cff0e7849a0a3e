"""Spectral gating: a deterministic, non-learned denoiser as a preprocessing defense.

Method: spectral gating as in Sainburg, Thielk & Gentner, "Finding, visualizing, and quantifying
latent structure across diverse animal vocal repertoires", PLoS Comput. Biol. 2020, and
Sainburg & Zorea, "Noisereduce: Domain General Noise Reduction for Time Series Signals",
arXiv:2412.17851 (the ``noisereduce`` package): a per-frequency noise floor, a threshold above
it, and a mask on the STFT that keeps the time-frequency bins above the threshold. It belongs
to the classical spectral-subtraction family (Boll, IEEE TASSP 1979). As an adversarial defense,
denoising front ends were studied by Yang et al., "Characterizing Speech Adversarial Examples
Using Self-Attention U-Net Enhancement", ICASSP 2020, and Olivier & Raj, "Sequential Randomized
Smoothing for Adversarially Robust Speech Recognition", EMNLP 2021 (enhancement before the
model); those are learned, this is their training-free baseline: a low-level perturbation
spread over the spectrogram falls under the gate, while the music's partials stay above it.

Our reading (written from the description above, not from noisereduce's code):

- STFT with a periodic Hann window of ``n_fft`` samples and hop ``hop_length`` (torch.stft,
  zero-padded at the ends; torch.istft back to exactly ``T`` samples).
- Noise floor per frequency, estimated from the clip itself (no separate noise clip): the
  ``noise_quantile`` quantile over frames of the magnitude in that bin (the lower order
  statistic, no interpolation). A bin that is loud in more than ``1 - noise_quantile`` of the
  frames (a drone, a note held through the whole clip) is counted as floor and attenuated.
- Threshold: floor + ``threshold_db``. ``mask = "soft"``: sigmoid((L - threshold) /
  ``softness_db``) with L the bin's level in dB, differentiable everywhere; ``mask = "hard"``:
  1 above the threshold, 0 below.
- The masked STFT is ``X * (1 - reduction * (1 - mask))`` (``reduction`` is noisereduce's
  ``prop_decrease``: 1 removes gated bins entirely). noisereduce also smooths its mask over
  time and frequency; we do not (an option to add if clean accuracy suffers).

Flags. The soft mask is differentiable: that instance is attacked with plain gradients. The
hard mask's gradient is zero at every threshold crossing and ignores which bins a small change
would open or close, so an instance with ``mask = "hard"`` sets ``self.differentiable = False``
(per instance, in ``__init__``, read by the harness as ``defense.differentiable``), runs
``forward`` without autograd, and is attacked with BPDA (Athalye, Carlini & Wagner, ICML 2018)
through :meth:`SpectralGate.surrogate`, the soft-mask version with the same threshold.

Written in torch (batched, on the audio's device, differentiable) rather than calling
noisereduce, which works on numpy (no gradient, CPU only) and would be a dependency for a
few lines of STFT arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from musicbench.api import Preprocessor
from musicbench_plugins._limits import MAX_SIZE
from musicbench_plugins.defenses._checks import check_number, config_error

_TINY = 1e-12
"""Added to |X|^2 before the square root and the log: finite levels and gradients at silence."""


@dataclass(frozen=True)
class SpectralGateParams:
    """``threshold_db``: gate threshold above the per-frequency noise floor, dB.
    ``mask``: ``"soft"`` (sigmoid, differentiable) or ``"hard"`` (0/1, attacked with BPDA
    through the soft mask). ``softness_db``: width of the soft mask (and of the surrogate of
    the hard one): the mask is sigmoid((L - threshold) / softness_db), 0.27 to 0.73 within
    one softness of the threshold. ``noise_quantile``: the quantile over frames that
    estimates each frequency's floor, in (0, 1). ``reduction``: how much of a gated bin is
    removed, in (0, 1]. The defaults put the gate where noisereduce's (mean + 1.5 std of
    the noise in dB) is: in a bin of white noise the power is exponential, its 20 % quantile
    is 6.5 dB below its mean, so 12 dB above it is 5.5 dB above the mean and passes about 3 %
    of noise-only bins. ``n_fft``: STFT window in samples (64 ms at 16 kHz by default);
    ``hop_length``: hop in samples, at most ``n_fft // 2``; None for ``n_fft // 4``."""

    threshold_db: float = 12.0
    mask: Literal["hard", "soft"] = "soft"
    softness_db: float = 3.0
    noise_quantile: float = 0.2
    reduction: float = 1.0
    n_fft: int = 1024
    hop_length: int | None = None

    def __post_init__(self) -> None:
        check_number("threshold_db", self.threshold_db, at_least=-60, at_most=60)
        check_number("softness_db", self.softness_db, above=0, at_most=60)
        check_number("noise_quantile", self.noise_quantile, above=0)
        if not self.noise_quantile < 1:
            raise ValueError(f"noise_quantile must be < 1, got {self.noise_quantile}")
        check_number("reduction", self.reduction, above=0, at_most=1)
        if self.mask not in ("hard", "soft"):
            raise ValueError(f"mask must be 'hard' or 'soft', got {self.mask!r}")
        for key in ("n_fft", "hop_length"):
            value = getattr(self, key)
            if value is None and key == "hop_length":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 4:
                raise ValueError(f"{key} must be an integer >= 4, got {value!r}")
        if self.hop_length is not None and self.hop_length > self.n_fft // 2:
            raise ValueError(f"hop_length {self.hop_length} must be at most n_fft // 2 = "
                             f"{self.n_fft // 2} (Hann windows must overlap to invert the STFT)")
        check_number("n_fft", self.n_fft, at_least=4, at_most=MAX_SIZE, integer=True)


class SpectralGate(Preprocessor):
    """Gate STFT bins below (per-frequency noise floor + threshold); deterministic;
    differentiable with the soft mask, BPDA through the soft mask with the hard one.

    Shape: ``audio[B, T]`` -> ``[B, T]``, clamped to [-1, 1].
    """

    name = "denoise-spectral"
    version = "1"
    Params = SpectralGateParams

    def __init__(self, params: SpectralGateParams | None = None):
        super().__init__(params)
        if self.params.mask == "hard":
            self.differentiable = False  # per instance: only the hard mask needs BPDA

    def bind(self, sample_rate: int) -> None:
        super().bind(sample_rate)
        if self.params.n_fft > 4 * sample_rate:
            raise config_error(self, "n_fft", f"n_fft {self.params.n_fft} is more than four "
                               f"seconds at {sample_rate} Hz; use a window of tens of ms")

    def forward(self, audio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.params.mask == "soft":
            return self._gate(audio, hard=False)
        with torch.no_grad():
            return self._gate(audio, hard=True)

    def surrogate(self, audio: torch.Tensor) -> torch.Tensor:
        return self._gate(audio, hard=False)

    def _gate(self, audio: torch.Tensor, *, hard: bool) -> torch.Tensor:
        p = self.params
        hop = p.hop_length or p.n_fft // 4
        window = torch.hann_window(p.n_fft, device=audio.device, dtype=audio.dtype)
        spec = torch.stft(audio, p.n_fft, hop, window=window, center=True,
                          pad_mode="constant", return_complex=True)  # [B, F, N]
        power = torch.view_as_real(spec).square().sum(-1) + _TINY
        level = 10 * torch.log10(power)  # dB
        frames = level.shape[-1]
        k = min(frames, max(1, math.floor(p.noise_quantile * (frames - 1)) + 1))
        floor = level.kthvalue(k, dim=-1, keepdim=True).values  # [B, F, 1]
        excess = level - (floor + p.threshold_db)
        if hard:
            mask = (excess > 0).to(audio.dtype)
        else:
            mask = torch.sigmoid(excess / p.softness_db)
        gain = 1 - p.reduction * (1 - mask)
        out = torch.istft(spec * gain, p.n_fft, hop, window=window, center=True,
                          length=audio.shape[-1])
        return out.clamp(-1, 1)
