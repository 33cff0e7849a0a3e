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


# -- spectral helpers -------------------------------------------------------------------------


def test_overlap_add_inverts_the_stft_where_frames_overlap_fully():
    from musicbench_plugins.inpainters.spectral import SpectralView

    view = SpectralView(256, 64, 16, 50.0)
    x = tone_batch(2, view.samples(40), seed=6)
    y = view.overlap_add(view.stft(x))
    assert torch.allclose(y[:, 256:-256], x[:, 256:-256], atol=1e-5)


def test_phase_continuation_predicts_a_steady_sinusoid():
    from musicbench_plugins.inpainters.spectral import SpectralView, continue_phase

    view = SpectralView(256, 64, 16, 50.0)
    f = 1000.0  # not on a bin centre
    x = torch.sin(2 * math.pi * f * torch.arange(view.samples(20)) / SR)[None]
    spec = view.stft(x)
    predicted = continue_phase(spec[..., 8:10], 4, 64, 256)
    peak = int(spec[0, :, 0].abs().argmax())
    err = torch.remainder(predicted[0, peak] - torch.angle(spec[0, peak, 10:14]) + math.pi,
                          2 * math.pi) - math.pi
    assert err.abs().max() < 1e-2


# -- gacela -----------------------------------------------------------------------------------

TINY = {"n_fft": 256, "hop": 64, "n_mels": 16, "gap_frames": 8, "context_frames": 16,
        "latent_dim": 8, "width": 2, "stft_critic_context": [4], "mel_critic_context": [8],
        "critic_frames": 8, "steps": 3, "batch_size": 4, "critic_steps": 1,
        "learning_rate": 1e-3, "gl_iterations": 4, "edge_ramp": 32,
        "train_dataset": "toy-tones", "train_dataset_params": {"clips": 12, "seconds": 1.0}}


@pytest.fixture
def workspace(toy_plugins, tmp_path):
    from musicbench.workspace import Workspace

    return Workspace(toy_plugins, cache_dir=tmp_path / "cache", device=torch.device("cpu"))


@pytest.fixture
def gacela(workspace):
    return workspace.inpainter("gacela", TINY)  # trains 3 steps on first use


def test_gacela_trains_on_first_use_and_reloads_the_same_weights(workspace, gacela):
    from musicbench.workspace import Workspace

    files = list((workspace.ctx.cache_dir / "inpainters").glob("gacela-*.safetensors"))
    assert len(files) == 1
    assert gacela.training_summary["train_seconds"] >= 0
    fresh = Workspace(workspace.plugins, cache_dir=workspace.ctx.cache_dir,
                      device=torch.device("cpu"), allow_training=False)
    again = fresh.inpainter("gacela", TINY)  # loads, must not train
    x = tone_batch(2, SR, seed=3)
    mask = _masks(2, SR)
    z = gacela.sample_latent(2, torch.Generator().manual_seed(1))
    assert torch.equal(gacela.inpaint(x, mask, z), again.inpaint(x, mask, z))
    assert again.training_summary["dataset"] == "toy-tones"


def test_gacela_without_checkpoint_refuses_to_train_when_told(toy_plugins, tmp_path):
    from musicbench.errors import NotTrainedError
    from musicbench.workspace import Workspace

    ws = Workspace(toy_plugins, cache_dir=tmp_path, device=torch.device("cpu"),
                   allow_training=False)
    with pytest.raises(NotTrainedError, match="musicbench train gacela"):
        ws.inpainter("gacela", TINY)


def test_gacela_keeps_unmasked_samples_and_fills_middle_edge_and_several_gaps(gacela):
    x = tone_batch(3, 2 * SR, seed=1)
    mask = _masks(3, 2 * SR)  # gaps of 1000 .. 4096 samples: the longer ones take chunks
    z = gacela.sample_latent(3, torch.Generator().manual_seed(0))
    y = gacela.inpaint(x, mask, z)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(y[~mask], x[~mask])
    assert torch.isfinite(y).all() and y.abs().max() <= 1.0
    for b in range(3):
        for s, e in gap_runs(mask[b]):
            assert y[b, s:e].square().mean().sqrt() > 1e-3, (b, s, e)


def test_gacela_is_deterministic_and_ignores_what_the_gap_held(gacela):
    x = tone_batch(2, SR, seed=2)
    mask = _masks(2, SR)
    z = gacela.sample_latent(2, torch.Generator().manual_seed(0))
    y = gacela.inpaint(x, mask, z)
    assert torch.equal(y, gacela.inpaint(x, mask, z))
    scribbled = torch.where(mask, torch.rand_like(x) - 0.5, x)
    assert torch.equal(y, gacela.inpaint(scribbled, mask, z))


def test_gacela_fills_each_row_as_if_alone(gacela):
    x = tone_batch(3, 2 * SR, seed=4)
    mask = _masks(3, 2 * SR)
    z = gacela.sample_latent(3, torch.Generator().manual_seed(2))
    together = gacela.inpaint(x, mask, z)
    for b in range(3):
        alone = gacela.inpaint(x[b : b + 1], mask[b : b + 1], z[b : b + 1])
        assert torch.allclose(alone[0], together[b], atol=1e-5), b


def test_gacela_gradients_reach_z_and_the_audio_through_the_fill(gacela):
    x = tone_batch(2, SR, seed=5).requires_grad_(True)
    z = gacela.sample_latent(2, torch.Generator().manual_seed(3)).requires_grad_(True)
    mask = _masks(2, SR)
    y = gacela.inpaint(x, mask, z)
    gx, gz = torch.autograd.grad((y * mask).square().sum(), (x, z))
    assert torch.isfinite(gx).all() and torch.isfinite(gz).all()
    assert (gz.abs().sum(1) > 0).all()
    assert gx[~mask].abs().sum() > 0  # through the context encoders
    other = gacela.inpaint(x.detach(), mask, -z.detach())
    assert not torch.equal(other, y.detach()), "the latent does not change the fill"


def test_gacela_passes_validation(toy_plugins, gacela):
    report = validate_plugin("gacela", kind="inpainter", device="cpu", plugins=toy_plugins,
                             params=TINY)
    failed = [f"{c.name}: {c.detail}" for c in report.checks if not c.ok]
    assert not failed, failed


def test_gacela_params_are_range_checked():
    from musicbench_plugins.inpainters.gacela import GacelaParams

    with pytest.raises(ValueError, match="multiple of 4"):
        GacelaParams(gap_frames=30)
    with pytest.raises(ValueError, match="critic contexts"):
        GacelaParams(stft_critic_context=(100,))
