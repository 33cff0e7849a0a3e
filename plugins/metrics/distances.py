"""Per-sample distances between clean and adversarial audio, as plugins over the core code."""

from __future__ import annotations

import torch

from musicbench import metrics
from musicbench.interfaces import SampleMetric


class LSD(SampleMetric):
    """Log-spectral distance, docs/metrics.md."""

    higher_is_better = False
    unit = ""

    def compute(self, clean: torch.Tensor, adv: torch.Tensor, sample_rate: int) -> torch.Tensor:
        return metrics.lsd(clean, adv)


class SNR(SampleMetric):
    """10 log10(||x||^2 / ||x_hat - x||^2)."""

    higher_is_better = True
    unit = "dB"

    def compute(self, clean: torch.Tensor, adv: torch.Tensor, sample_rate: int) -> torch.Tensor:
        return metrics.snr_db(clean, adv)


class LInf(SampleMetric):
    """max |x_hat - x|."""

    higher_is_better = False
    unit = ""

    def compute(self, clean: torch.Tensor, adv: torch.Tensor, sample_rate: int) -> torch.Tensor:
        return metrics.linf(clean, adv)


class L2(SampleMetric):
    """||x_hat - x||_2."""

    higher_is_better = False
    unit = ""

    def compute(self, clean: torch.Tensor, adv: torch.Tensor, sample_rate: int) -> torch.Tensor:
        return metrics.l2(clean, adv)
