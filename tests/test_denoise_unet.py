"""denoise-unet trains on first use (tiny config on toy tones), saves and reloads without
training, refuses to train when told, trains deterministically, keeps the Preprocessor contract
(shape, range, input untouched, input gradients) and lowers noise once trained; `musicbench
train denoise-unet` trains it ahead of a run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import cli

from musicbench.errors import NotTrainedError
from musicbench.metrics import snr_db
from musicbench.workspace import Workspace
from musicbench_plugins.defenses.denoise_unet import DenoiseUNetNet, DenoiseUNetParams

SR = 16_000
TOY_DATA = {"clips": 12, "seconds": 0.25}  # 3 train, 3 valid clips
TINY = {"train_dataset": "toy-tones", "train_dataset_params": TOY_DATA, "filters": 32,
        "channels": 4, "depth": 1, "max_channels": 8, "local_channels": 2, "epochs": 1,
        "batch_size": 4, "crop_seconds": 0.1, "valid_clips": 3}


def _workspace(plugins, cache: Path, *, allow_training: bool = True) -> Workspace:
    return Workspace(plugins, cache_dir=cache, device=torch.device("cpu"),
                     allow_training=allow_training)


def _defense(ws: Workspace, params: dict):
    defense = ws.make("defense", "denoise-unet", params)
    defense.bind(SR)
    defense.load(ws.ctx)
    return defense


def _tones(batch: int, samples: int, seed: int) -> torch.Tensor:
    """Clean harmonic tones (no noise floor), peak 0.5: ``[batch, samples]``."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / SR
    f0 = 110 * 2 ** (torch.rand(batch, 1, generator=g) * 3)
    x = sum(torch.sin(2 * torch.pi * f0 * k * t) / k for k in range(1, 5))
    return 0.5 * x / x.abs().amax(1, keepdim=True)


def test_trains_on_first_use_then_loads_from_the_cache_without_training(toy_plugins, tmp_path):
    ws = _workspace(toy_plugins, tmp_path)
    first = _defense(ws, TINY)
    [checkpoint] = (tmp_path / "defenses").glob("denoise-unet-*.safetensors")
    assert first.checkpoint_key() == checkpoint.stem
    assert first.training_summary["dataset"] == "toy-tones"
    assert len(first.training_summary["history"]) == 1
    again = _defense(_workspace(toy_plugins, tmp_path, allow_training=False), TINY)
    x = _tones(2, 4000, seed=1)
    gen = torch.Generator()
    assert torch.equal(first.forward(x, gen), again.forward(x, gen))
    assert again.weights_digest() == first.weights_digest()


def test_without_weights_and_training_refused_it_raises_not_trained(toy_plugins, tmp_path):
    ws = _workspace(toy_plugins, tmp_path, allow_training=False)
    with pytest.raises(NotTrainedError, match="musicbench train denoise-unet"):
        _defense(ws, TINY)


def test_training_is_deterministic_for_one_seed(toy_plugins, tmp_path):
    a = _defense(_workspace(toy_plugins, tmp_path / "a"), TINY)
    b = _defense(_workspace(toy_plugins, tmp_path / "b"), TINY)
    c = _defense(_workspace(toy_plugins, tmp_path / "c"), TINY | {"seed": 1})
    assert a.weights_digest() == b.weights_digest()
    assert a.weights_digest() != c.weights_digest()


def test_forward_keeps_the_preprocessor_contract(toy_plugins, tmp_path):
    defense = _defense(_workspace(toy_plugins, tmp_path), TINY)
    assert not defense.randomized and defense.differentiable
    x = (_tones(3, 4001, seed=2) * 2.2).clamp(-1, 1)  # odd length, clipped peaks
    x[0, :100] = 1.0
    original = x.clone()
    gen = torch.Generator().manual_seed(0)
    y = defense.forward(x, gen)
    assert torch.equal(x, original), "forward modified its input"
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all() and y.abs().max() <= 1.0
    assert torch.equal(y, defense.forward(x, torch.Generator().manual_seed(5)))  # not random
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(defense.forward(xg, gen).square().sum(), xg)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"audio\[B, T\]"):
        defense.forward(x[0], gen)


def test_it_passes_validation(toy_plugins, tmp_path):
    from musicbench.validate import validate_plugin

    _defense(_workspace(toy_plugins, Path(os.environ["MUSICBENCH_HOME"])), TINY)
    report = validate_plugin("denoise-unet", kind="defense", device="cpu", plugins=toy_plugins,
                             params=TINY)
    failed = [f"{c.name}: {c.detail}" for c in report.checks if not c.ok]
    assert not failed, failed


def test_the_untrained_network_is_nearly_the_identity():
    net = DenoiseUNetNet(filters=32, channels=4, depth=2, max_channels=8, local_channels=2)
    x = _tones(2, 3000, seed=3)
    with torch.no_grad():
        assert snr_db(x, x - net(x)).min() > 40  # clean audio passes (mask ~ 0)


def test_it_lowers_sign_and_gaussian_noise_once_trained(toy_plugins, tmp_path):
    params = TINY | {"epochs": 60, "learning_rate": 1e-2, "eps_min": 0.02, "eps_max": 0.05,
                     "crop_seconds": 0.2}
    defense = _defense(_workspace(toy_plugins, tmp_path), params)
    assert defense.training_summary["valid_snr_gain_db"] > 0
    clean = _tones(8, 4000, seed=4)
    g = torch.Generator().manual_seed(0)
    for noise in (0.03 * torch.sign(torch.randn(8, 4000, generator=g)),
                  0.03 * torch.randn(8, 4000, generator=g)):
        noisy = clean + noise
        with torch.no_grad():
            gain = snr_db(clean, defense.forward(noisy, g)) - snr_db(clean, noisy)
        assert gain.median() > 0.5, gain  # 3 train clips: most, not all, clips gain


def test_params_are_range_checked():
    with pytest.raises(ValueError, match="filters must be even"):
        DenoiseUNetParams(filters=31)
    with pytest.raises(ValueError, match="eps_min <= eps_max"):
        DenoiseUNetParams(eps_min=0.01, eps_max=0.001)
    with pytest.raises(ValueError, match="noise_mix"):
        DenoiseUNetParams(noise_mix=(1.0, 0.0))


def test_musicbench_train_trains_it_ahead_and_says_where_the_weights_went(toy_site):
    home = Path(os.environ["MUSICBENCH_HOME"])  # the test's private cache (conftest)
    args = [f"{k}={v}" for k, v in TINY.items() if k not in ("train_dataset",
                                                             "train_dataset_params")]
    params = [x for kv in args for x in ("-p", kv)]
    result = cli("train", "denoise-unet", "-p", "train_dataset=toy-tones",
                 "-p", "train_dataset_params={clips = 12, seconds = 0.25}", *params,
                 sites=(toy_site,))
    assert result.returncode == 0, result.stderr
    [checkpoint] = (home / "defenses").glob("denoise-unet-*.safetensors")
    assert "trained denoise-unet" in result.stderr
    assert "weights:" in result.stderr and checkpoint.name in result.stderr.replace("\n", "")


def test_musicbench_train_refuses_a_defense_with_nothing_to_train():
    result = cli("train", "none")
    assert result.returncode == 2
    assert "nothing to train" in result.stderr
