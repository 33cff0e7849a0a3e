"""Down-sampling and up-sampling: a differentiable preprocessing defense, randomized when the
intermediate rate is drawn per call.

Resampling to a lower rate and back discards everything above the lower rate's Nyquist
frequency (and adds the resampler's own small errors). Evaluated as an audio adversarial
defense by Yang, Li, Chen & Song, "Characterizing Audio Adversarial Examples Using Temporal
Dependency", ICLR 2019 (down-sampling to 8 kHz and back), and by Hussain et al., "WaveGuard:
Understanding and Mitigating Audio Adversarial Examples", USENIX Security 2021 (down-sampling
and up-sampling). With a fixed rate it is a linear, deterministic map: the harness attacks it
with plain gradients. With ``random_rate`` the rate is drawn for every clip on every call
(a randomized transformation in the spirit of Xie et al., ICLR 2018) and the harness attacks
it with EOT.

``randomized`` is a class-level flag of the interface; this class sets it per instance: an
instance built with ``random_rate`` has ``self.randomized = True`` (set in ``__init__``), which
is the attribute the harness reads (``defense.randomized``), so only such instances get EOT.

Resampling uses julius' ``resample_frac`` (a windowed-sinc polyphase resampler with ``zeros``
zero crossings and an anti-aliasing ``rolloff``; torch only, batched, differentiable, any
device) rather than our own: it is exact for rational ratios, and torchaudio would be a large
dependency for one function. julius builds one kernel per ratio reduced by its gcd, so drawn
rates are restricted to a grid of ``rate_step_hz`` (a 16 kHz / 8.1 kHz ratio reduces to
160 / 81, cheap; 16000 / 8123 would need a kernel bank 16000 wide). Rows that drew the same
rate are resampled together: one pair of resample calls per distinct rate in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from musicbench.api import Preprocessor
from musicbench_plugins.defenses._checks import bound_rate, check_number, config_error


@dataclass(frozen=True)
class ResampleParams:
    """``rate_hz``: the intermediate rate in Hz (below the model's rate, checked at bind).
    ``random_rate``: ``[lo_hz, hi_hz]`` to draw the intermediate rate uniformly per clip and
    per call from the multiples of ``rate_step_hz`` in that range (then ``rate_hz`` is
    unused and the defense is randomized); None (default) is the fixed ``rate_hz``.
    ``rate_step_hz``: grid of the drawn rates (see the module docstring). ``zeros`` and
    ``rolloff``: julius' sinc half-length in zero crossings and anti-aliasing cutoff as a
    fraction of the lower Nyquist frequency (julius' defaults 24 and 0.945)."""

    rate_hz: int = 8000
    random_rate: tuple[int, int] | None = None
    rate_step_hz: int = 100
    zeros: int = 24
    rolloff: float = 0.945

    def __post_init__(self) -> None:
        for key in ("rate_hz", "rate_step_hz", "zeros"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        check_number("rolloff", self.rolloff, above=0, at_most=1)
        if self.random_rate is not None:
            pair = tuple(self.random_rate)
            if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                         for v in pair):
                raise ValueError(f"random_rate must be two integers [lo_hz, hi_hz], got "
                                 f"{self.random_rate!r}")
            lo, hi = pair
            if not 0 < lo <= hi:
                raise ValueError(f"random_rate must satisfy 0 < lo_hz <= hi_hz, got {pair}")
            if -(-lo // self.rate_step_hz) * self.rate_step_hz > hi:
                raise ValueError(f"random_rate {pair} holds no multiple of rate_step_hz "
                                 f"{self.rate_step_hz}")
        for key in ("rate_hz", "rate_step_hz"):
            check_number(key, getattr(self, key), at_least=1, at_most=384_000, integer=True)
        check_number("zeros", self.zeros, at_least=1, at_most=1024, integer=True)
        for rate in self.random_rate or ():
            check_number("random_rate", rate, at_least=1, at_most=384_000, integer=True)


class Resample(Preprocessor):
    """Down-sample to an intermediate rate and back (julius); differentiable, randomized only
    with ``random_rate`` (per clip, per call).

    Shape: ``audio[B, T]`` -> ``[B, T]``, clamped to [-1, 1].
    """

    name = "resample"
    version = "1"
    Params = ResampleParams

    def __init__(self, params: ResampleParams | None = None):
        super().__init__(params)
        if self.params.random_rate is not None:
            self.randomized = True  # per instance: only a drawn rate is random

    def _rates(self) -> torch.Tensor:
        """The rates a clip may get: one fixed rate, or the grid of ``random_rate``."""
        p = self.params
        if p.random_rate is None:
            return torch.tensor([p.rate_hz])
        lo, hi = p.random_rate
        first = -(-lo // p.rate_step_hz) * p.rate_step_hz
        return torch.arange(first, hi + 1, p.rate_step_hz)

    def bind(self, sample_rate: int) -> None:
        super().bind(sample_rate)
        key = "rate_hz" if self.params.random_rate is None else "random_rate"
        top = int(self._rates().max())
        if not top < sample_rate:
            raise config_error(
                self, key,
                f"the intermediate rate must be below the model's rate {sample_rate} Hz, but "
                f"{top} Hz is not; resampling up and back would not remove anything")

    def forward(self, audio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        rate = bound_rate(self)
        grid = self._rates()
        if grid.numel() == 1:
            return self._down_up(audio, rate, int(grid[0]))
        pick = torch.randint(grid.numel(), (audio.shape[0],), generator=generator,
                             device=audio.device).cpu()  # the choice leaves the device, not audio
        choices = pick.unique().tolist()
        if len(choices) == 1:
            return self._down_up(audio, rate, int(grid[choices[0]]))
        out = torch.empty_like(audio)
        for index in choices:
            rows = (pick == index).nonzero().squeeze(1).to(audio.device)
            out[rows] = self._down_up(audio[rows], rate, int(grid[index]))
        return out

    def _down_up(self, audio: torch.Tensor, rate: int, low: int) -> torch.Tensor:
        """``audio[B, T]`` at ``rate`` -> down to ``low`` and back up to ``[B, T]``."""
        import julius

        p = self.params
        # full=True keeps the last partial sample, so the way back can reach T samples.
        down = julius.resample_frac(audio, rate, low, zeros=p.zeros, rolloff=p.rolloff,
                                    full=True)
        up = julius.resample_frac(down, low, rate, zeros=p.zeros, rolloff=p.rolloff,
                                  output_length=audio.shape[1])
        return up.clamp(-1, 1)
