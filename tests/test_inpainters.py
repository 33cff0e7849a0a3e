"""The built-in inpainters keep the Inpainter contract (unmasked samples untouched, gaps
filled with finite audio in range, gradients, determinism) and do their job: the baseline
copies a repeated passage back almost exactly; gacela trains, saves and reloads."""

from __future__ import annotations

import math

import pytest
import torch

from musicbench.interfaces import Context
from musicbench.testing import tone_batch
from musicbench.validate import validate_plugin
from musicbench_plugins.inpainters.baseline import BaselineInpainter, BaselineParams
from musicbench_plugins.inpainters.gaps import gap_runs

SR = 16_000


def _masks(batch: int, samples: int) -> torch.Tensor:
    """Row 0: one gap in the middle; row 1: gaps at both clip edges; row 2: three gaps."""
    m = torch.zeros(batch, samples, dtype=torch.bool)
    m[0, samples // 2 - 2048 : samples // 2 + 2048] = True
    m[1, :2500] = True
    m[1, -3000:] = True
    if batch > 2:
        m[2, 4000:5000] = True
        m[2, 9000:13096] = True
        m[2, 20000:21500] = True
    return m


def _repeating(samples: int, period: int, seed: int = 0) -> torch.Tensor:
    """``[1, samples]``: a 0.5 s phrase of three harmonic notes with decaying envelopes,
    looped (peak 0.8)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(period) / SR
    phrase = torch.zeros(period)
    for i in range(3):
        f0 = 150 * 2 ** (float(torch.rand(1, generator=g)) * 2)
        start = i * period // 3
        env = torch.exp(-6 * (t - t[start]).clamp(min=0)) * (t >= t[start])
        phrase += env * sum(torch.sin(2 * math.pi * f0 * k * t) / k for k in (1, 2, 3))
    phrase += 0.02 * torch.randn(period, generator=g)
    x = phrase.repeat(samples // period + 1)[:samples]
    return (0.8 * x / x.abs().max())[None]


def test_gap_runs_finds_maximal_runs():
    m = torch.tensor([1, 1, 0, 0, 1, 0, 1, 1, 1], dtype=torch.bool)
    assert gap_runs(m) == [(0, 2), (4, 5), (6, 9)]
    assert gap_runs(torch.zeros(5, dtype=torch.bool)) == []


# -- baseline ---------------------------------------------------------------------------------


@pytest.fixture
def baseline() -> BaselineInpainter:
    inp = BaselineInpainter()
    inp.load(Context(cache_dir=None, device=torch.device("cpu")))  # type: ignore[arg-type]
    return inp


def test_baseline_keeps_unmasked_samples_and_fills_every_gap(baseline):
    x = tone_batch(3, 2 * SR, seed=1)
    mask = _masks(3, 2 * SR)
    z = baseline.sample_latent(3, torch.Generator().manual_seed(0))
    y = baseline.inpaint(x, mask, z)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(y[~mask], x[~mask])
    assert torch.isfinite(y).all() and y.abs().max() <= 1.0
    for b in range(3):
        for s, e in gap_runs(mask[b]):
            assert y[b, s:e].square().mean().sqrt() > 0.05, (b, s, e)


def test_baseline_ignores_what_the_gap_held(baseline):
    x = tone_batch(2, 2 * SR, seed=2)
    mask = _masks(2, 2 * SR)
    z = torch.zeros(2, 1)
    scribbled = torch.where(mask, torch.rand_like(x) - 0.5, x)
    assert torch.equal(baseline.inpaint(x, mask, z), baseline.inpaint(scribbled, mask, z))


def test_baseline_copies_a_repeated_passage_back_almost_exactly(baseline):
    x = _repeating(4 * SR, SR // 2)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[0, 30_000:34_096] = True  # 256 ms, not aligned to the 0.5 s period
    y = baseline.inpaint(x, mask, torch.zeros(1, 1))
    err = (y - x)[mask]
    snr = 10 * torch.log10(x[mask].square().sum() / err.square().sum().clamp(min=1e-20))
    assert snr > 40, f"fill differs from the repeated original (SNR {float(snr):.1f} dB)"


def test_baseline_latent_chooses_among_candidates(baseline):
    x = tone_batch(1, 4 * SR, seed=3) * torch.linspace(0.3, 1.0, 4 * SR)  # no exact repeat
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[0, 30_000:34_000] = True
    fills = {tuple(baseline.inpaint(x, mask, torch.tensor([[v]]))[mask][:64].tolist())
             for v in (0.0, 0.3, 0.6, 0.9)}
    assert len(fills) > 1, "every latent value gave the same fill"


def test_baseline_gradient_reaches_the_copied_audio(baseline):
    x = tone_batch(2, 2 * SR, seed=4).requires_grad_(True)
    mask = _masks(2, 2 * SR)
    y = baseline.inpaint(x, mask, torch.zeros(2, 1))
    (g,) = torch.autograd.grad((y * mask).square().sum(), x)
    assert torch.isfinite(g).all()
    assert g[~mask].abs().sum() > 0  # the fill is a copy of unmasked audio
    assert g[mask].abs().sum() == 0  # and never of the gap's own content


def test_baseline_is_deterministic_and_fills_a_nearly_fully_masked_clip(baseline):
    x = tone_batch(1, SR, seed=5)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[0, 6000:8000] = False  # 2000 valid samples for 14000 masked ones
    z = torch.full((1, 1), 0.5)
    y = baseline.inpaint(x, mask, z)
    assert torch.equal(y, baseline.inpaint(x, mask, z))
    assert torch.equal(y[~mask], x[~mask])
    assert torch.isfinite(y).all() and y[mask].abs().mean() > 0.05


def test_baseline_rejects_bad_shapes(baseline):
    x = tone_batch(2, 4000)
    with pytest.raises(ValueError, match="mask"):
        baseline.inpaint(x, torch.zeros(2, 4000), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="z must be"):
        baseline.inpaint(x, torch.zeros(2, 4000, dtype=torch.bool), torch.zeros(2, 3))


def test_baseline_params_are_range_checked():
    with pytest.raises(ValueError, match="hop"):
        BaselineParams(hop=1024, n_fft=512)


def test_baseline_passes_validation():
    report = validate_plugin("baseline", kind="inpainter", device="cpu")
    failed = [f"{c.name}: {c.detail}" for c in report.checks if not c.ok]
    assert not failed, failed
    assert len(report.checks) >= 5
