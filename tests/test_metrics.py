"""Metric definitions of docs/metrics.md, checked against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import signal

from musicbench import metrics
from musicbench.testing import tone_batch


def test_lsd_zero_for_identical_and_matches_numpy_reference():
    x = tone_batch(2, 16_000, seed=1)
    y = (x + 0.01 * tone_batch(2, 16_000, seed=2)).clamp(-1, 1)
    assert torch.allclose(metrics.lsd(x, x), torch.zeros(2, dtype=torch.float64))
    ours = metrics.lsd(x, y).numpy()
    ref = []
    for a, b in zip(x.double().numpy(), y.double().numpy(), strict=True):
        spectra = []
        for s in (a, b):
            padded = np.pad(s, 1024, mode="reflect")
            _, _, z = signal.stft(padded, nperseg=2048, noverlap=2048 - 512, window="hann",
                                  boundary=None, padded=False, detrend=False,
                                  return_onesided=True, scaling="spectrum")
            z = z * np.hanning(2049)[:-1].sum()  # undo scipy's window normalisation
            spectra.append(np.log10(np.abs(z) ** 2 + 1e-10))
        ref.append(np.mean(np.sqrt(np.mean((spectra[0] - spectra[1]) ** 2, axis=0))))
    assert np.allclose(ours, ref, rtol=1e-6)


def test_snr_matches_definition():
    x = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    y = x + torch.tensor([[0.1, 0.0, 0.0, 0.0]])
    assert metrics.snr_db(x, y).item() == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-5)
    assert math.isinf(metrics.snr_db(x, x).item())


def test_norms():
    x = torch.zeros(1, 3)
    y = torch.tensor([[0.3, -0.4, 0.0]])
    assert metrics.linf(x, y).item() == pytest.approx(0.4)
    assert metrics.l2(x, y).item() == pytest.approx(0.5)


def test_classification_summary_follows_definitions():
    correct = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
    success = np.array([1, 0, 0, 1, 0, 0], dtype=bool)
    s = metrics.classification_summary(correct, success)
    assert s["clean_accuracy"] == pytest.approx(4 / 6)
    assert s["asr"] == pytest.approx(2 / 4)  # over clean-correct only
    assert s["robust_accuracy"] == pytest.approx(2 / 6)  # clean-wrong count as wrong
    low, high = s["asr_ci"]
    assert 0 <= low <= 0.5 <= high <= 1


def test_bootstrap_ci_is_seeded_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = rng.random(20) < 0.5
    big = rng.random(2000) < 0.5
    assert metrics.bootstrap_ci(small) == metrics.bootstrap_ci(small)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(metrics.bootstrap_ci(big)) < width(metrics.bootstrap_ci(small))
    assert all(math.isnan(v) for v in metrics.bootstrap_ci(np.array([])))
