"""Random time shift of the waveform: a randomized, differentiable preprocessing defense.

Each clip is shifted by an integer number of samples drawn uniformly from
[-max_shift, max_shift], either circularly (``mode = "circular"``: what leaves one end comes
back at the other) or with the vacated samples zeroed (``mode = "crop"``). It is the 1-D form
of the random padding of Xie, Wang, Zhang, Ren & Yuille, "Mitigating Adversarial Effects
Through Randomization", ICLR 2018, whose premise is that a perturbation tuned to exact sample
positions does not survive a random offset; a waveform perturbation aimed at a model with a
frame-based front end (STFT hop, window) is likewise tied to its alignment. Athalye, Carlini
& Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018, broke Xie et al.'s
defense with EOT, which is how the harness attacks this one (every gradient averages
``eot_samples`` draws). We found no audio paper that proposes a bare time shift as a defense;
it is here as the simplest randomized transformation, and as a test of EOT.

Shifts are drawn per clip from the given generator; the shift is one ``gather`` (differentiable
in the audio), batched over clips. No library is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from musicbench.api import Preprocessor
from musicbench_plugins.defenses._checks import bound_rate, check_number, config_error


@dataclass(frozen=True)
class TimeShiftParams:
    """``max_shift_seconds``: the largest shift, either way, in seconds (rounded to samples at
    the model's rate; at least one sample, checked at bind). ``mode``: ``"circular"`` (roll)
    or ``"crop"`` (shift and zero-pad, so up to max_shift samples of one end are lost)."""

    max_shift_seconds: float = 0.05
    mode: Literal["circular", "crop"] = "circular"

    def __post_init__(self) -> None:
        check_number("max_shift_seconds", self.max_shift_seconds, above=0, at_most=60)
        if self.mode not in ("circular", "crop"):
            raise ValueError(f"mode must be 'circular' or 'crop', got {self.mode!r}")


class TimeShift(Preprocessor):
    """Shift each clip by a random whole number of samples; randomized, differentiable.

    Shape: ``audio[B, T]`` -> ``[B, T]``.
    """

    name = "time-shift"
    version = "1"
    randomized = True
    Params = TimeShiftParams

    def bind(self, sample_rate: int) -> None:
        super().bind(sample_rate)
        if self._max_shift(sample_rate) < 1:
            raise config_error(
                self, "max_shift_seconds",
                f"{self.params.max_shift_seconds} s is less than one sample at {sample_rate} Hz,"
                " so nothing would ever move; use at least "
                f"{1 / sample_rate:.2g} s")

    def _max_shift(self, sample_rate: int) -> int:
        return round(self.params.max_shift_seconds * sample_rate)

    def forward(self, audio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, length = audio.shape
        most = min(self._max_shift(bound_rate(self)), length - 1)
        shift = torch.randint(-most, most + 1, (batch, 1), generator=generator,
                              device=audio.device)
        source = torch.arange(length, device=audio.device) - shift  # out[t] = in[t - shift]
        if self.params.mode == "circular":
            return audio.gather(1, source.remainder(length))
        inside = (source >= 0) & (source < length)
        return audio.gather(1, source.clamp(0, length - 1)) * inside
