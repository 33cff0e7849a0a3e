"""benchmarks/degradation_ladder.py: rungs ordered by severity, nested inpainting gaps, and a
rho of 1 only for a metric that orders every clip's ladder."""

from __future__ import annotations

import math

import torch
from conftest import benchmark_script

from musicbench.cache import cache_dir
from musicbench.plugins import PluginSystem
from musicbench.testing import tone_batch
from musicbench.workspace import Workspace


def _script():
    return benchmark_script("degradation_ladder")


def _clips(n: int = 4, seconds: float = 1.0) -> torch.Tensor:
    """Tones plus a little broadband noise: energy at every frequency, so a low-pass at any
    cutoff removes something."""
    x = tone_batch(n, int(16_000 * seconds), seed=1)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    return (0.7 * x + 0.05 * noise).clamp(-1, 1)


def test_ladders_are_ordered_and_scored_per_clip():
    ladder = _script()
    ws = Workspace(PluginSystem(), cache_dir=cache_dir(), device=torch.device("cpu"))
    rate = 16_000
    clean = _clips()
    rungs = (ladder.masked_noise_rungs(rate)
             + ladder.preprocessor_rungs(ws, "lowpass", "lowpass", "cutoff_hz",
                                         (6000, 2000, 500), rate, "Hz"))
    lsd, snr = ws.metric("lsd"), ws.metric("snr")
    metrics = {"lsd": lambda a, b: lsd.compute(a, b, rate),
               "-snr": lambda a, b: -snr.compute(a, b, rate),
               "constant": lambda a, b: torch.zeros(a.shape[0])}
    # a set-level distance: the mean squared error over every clip
    set_metrics = {"mse": lambda a, b: float((a - b).square().mean())}
    result = ladder.evaluate(clean, rate, rungs, metrics, set_metrics, seed=0)
    assert result.rungs["masked-noise"][0].startswith("-20 dB")
    # louder noise, lower SNR: every clip ordered perfectly
    assert all(math.isclose(r, 1.0) for r in result.per_clip["-snr"]["masked-noise"])
    assert len(result.per_clip["-snr"]["masked-noise"]) == 4
    assert all(math.isclose(r, 1.0) for r in result.per_clip["-snr"]["lowpass"])
    assert all(math.isnan(r) for r in result.per_clip["constant"]["lowpass"])
    assert math.isclose(result.set_level["mse"]["masked-noise"][0], 1.0)
    noise_lsd = result.values["lsd"]["masked-noise"]
    assert noise_lsd == sorted(noise_lsd)
    again = ladder.evaluate(clean, rate, rungs, metrics, set_metrics, seed=0)
    assert again.values == result.values  # seeded: the same noise every run
    text = ladder.render(result)
    assert "| -snr | +1.00 [+1.00, +1.00] (4/4)" in text and "proxy" in text


def test_inpainting_gaps_are_nested_and_grow():
    ladder = _script()
    ws = Workspace(PluginSystem(), cache_dir=cache_dir(), device=torch.device("cpu"))
    inpainter = ws.inpainter("baseline", {})
    clean = _clips(2, seconds=4.0)
    rungs = ladder.inpaint_rungs(inpainter, clean.shape[1], 16_000, gaps=(1, 2, 4))
    changed = []
    for rung in rungs:
        out = rung.apply(clean, torch.Generator().manual_seed(0))
        changed.append((out - clean).abs().amax(0) > 0)  # samples changed in any clip
    assert changed[0].sum() < changed[1].sum() < changed[2].sum()
    assert not (changed[0] & ~changed[1]).any() and not (changed[1] & ~changed[2]).any()


def test_bootstrap_interval_contains_the_mean_and_spearman_handles_ties():
    ladder = _script()
    mean, lo, hi = ladder.bootstrap_mean([0.2, 0.4, 0.6, math.nan])
    assert math.isclose(mean, 0.4) and lo <= mean <= hi
    assert ladder.spearman([0, 1, 2], [3.0, 3.0, 3.0]) != ladder.spearman([0, 1, 2], [1, 2, 3])
    assert ladder.spearman([0, 1, 2, 3], [1.0, 1.0, 2.0, 3.0]) < 1.0


def test_equal_energy_pairs_match_energy_and_snr_cannot_choose():
    ladder = _script()
    rate = 16_000
    clean = _clips()
    masked, white = ladder.equal_energy_pair(clean, -10.0, rate, torch.Generator().manual_seed(0))
    e_masked = (masked - clean).square().sum(1)
    e_white = (white - clean).square().sum(1)
    assert torch.allclose(e_masked, e_white, rtol=1e-3)
    assert not torch.allclose(masked, white)
    ws = Workspace(PluginSystem(), cache_dir=cache_dir(), device=torch.device("cpu"))
    snr = ws.metric("snr")

    # a metric that weighs error by the clean clip's own spectrum (louder bins count less),
    # as a masking model would: it must prefer the masked noise
    def weighted(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        spec_a = torch.stft(a, 512, window=torch.hann_window(512), return_complex=True).abs()
        spec_e = torch.stft(b - a, 512, window=torch.hann_window(512), return_complex=True).abs()
        return (spec_e.square() / (spec_a.square() + 1e-6)).mean(dim=(1, 2))

    choices = ladder.choose(clean, rate, (-10.0,),
                            {"-snr": lambda a, b: -snr.compute(a, b, rate), "weighted": weighted},
                            {"mse": lambda a, b: float((a - b).square().mean())})
    assert choices["-snr"][-10.0].ties == 4  # the same energy: SNR cannot tell them apart
    assert choices["weighted"][-10.0].right == 4
    assert choices["mse"][-10.0].n == 1 and choices["mse"][-10.0].ties == 1
    table = ladder.render_choices(choices)
    assert "| -snr | 0.0 [0.0, 60.2] (0/4; ties 4) |" in table
    assert "| mse | tie |" in table
