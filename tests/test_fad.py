"""FAD: zero on itself, equal to a direct computation, monotone in added noise, NaN when the
covariance cannot be estimated."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import linalg

from musicbench.fad import fad, frechet_distance


def test_fad_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 16))
    assert abs(fad(x, x).value) < 1e-6


def test_fad_matches_a_direct_scipy_computation_on_gaussians():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2000, 8)) @ rng.normal(size=(8, 8))
    b = rng.normal(loc=0.3, size=(1500, 8)) @ rng.normal(size=(8, 8))
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # the closed form through the symmetric root: tr((S1^1/2 S2 S1^1/2)^1/2)
    r1 = linalg.sqrtm(s1).real
    direct = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
              - 2 * np.trace(linalg.sqrtm(r1 @ s2 @ r1).real))
    assert fad(a, b).value == pytest.approx(direct, rel=1e-6)


def test_fad_grows_monotonically_with_added_noise():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(800, 12))
    noise = rng.normal(size=x.shape)
    values = [fad(x, x + s * noise).value for s in (0.0, 0.1, 0.3, 1.0, 3.0)]
    assert values[0] < 1e-6
    assert all(b > a for a, b in zip(values, values[1:], strict=False))


def test_too_few_frames_give_nan_with_a_reason():
    x = np.random.default_rng(3).normal(size=(30, 20))
    result = fad(x, x)
    assert math.isnan(result.value) and "too few" in result.reason


def test_singular_covariances_use_the_eps_fallback():
    mu = np.zeros(4)
    singular = np.diag([1.0, 1.0, 0.0, 0.0])
    result = frechet_distance(mu, singular, mu, singular)
    assert result.value == pytest.approx(0.0, abs=1e-5)


def _cell_audio(clean, adv, ids, attacked, **kw):  # noqa: ANN001
    from musicbench.interfaces import CellAudio

    n = clean.shape[0]
    return CellAudio(dataset="toy", dataset_fingerprint="fp", model="m", task="classification",
                     sample_rate=16_000, ids=ids, clean=clean, adv=adv, attacked=attacked,
                     success=torch.zeros(n, dtype=torch.bool),
                     targets=torch.zeros(n, dtype=torch.long), **kw)


def _counting_system(calls):  # noqa: ANN001
    from test_validate_encoder import FrameEnergy

    from musicbench import hookimpl
    from musicbench.plugins import PluginSystem

    class Counting(FrameEnergy):
        network = "frame-energy"

        def embed(self, audio):  # noqa: ANN001
            calls.append(audio.shape[0])
            return super().embed(audio)

    class _Plugin:
        @hookimpl
        def register_encoders(self, register):
            register("counting", Counting)

    system = PluginSystem()
    system.add_plugin(_Plugin(), "fad-under-test", provider="tests")
    return system


def test_cell_fad_reuses_the_clean_gaussian_of_a_clip_set_and_not_what_was_cached(tmp_path):
    """FAD embeds clips one at a time and keeps the clean Gaussian of each set of clips across
    cells (every attack of a row attacks the same clips) and runs (in the cache): a second cell
    on the set embeds only its adversarial clips, a cell on another set embeds its clean clips
    again, and a cell's FAD is the same whatever was computed before it."""
    from musicbench.workspace import Workspace
    from musicbench_plugins.metrics.fad import FAD

    calls: list[int] = []
    system = _counting_system(calls)
    gen = torch.Generator().manual_seed(0)
    clean = torch.randn(40, 8000, generator=gen) * 0.1
    adv = clean + torch.randn(40, 8000, generator=gen) * 0.01
    ids = [f"clip{i}" for i in range(40)]

    def cell(ws, rows):  # noqa: ANN001
        attacked = torch.zeros(40, dtype=torch.bool)
        attacked[rows] = True
        result = FAD().compute(_cell_audio(clean, adv, ids, attacked, fad_encoder="counting"),
                               ws.ctx)
        assert result.encoder == "counting" and result.n == len(rows)
        return result.values["fad"]

    fresh = Workspace(system, cache_dir=tmp_path, device=torch.device("cpu"))
    alone = cell(fresh, torch.arange(10, 40))
    assert calls.count(1) == 60 and set(calls) == {1}  # one clip at a time, clean + adv
    calls.clear()
    assert cell(fresh, torch.arange(10, 40)) == alone  # the same set: adversarial clips only
    assert len(calls) == 30
    # a new process on the same cache reads the clean Gaussian the first one stored
    warm = Workspace(system, cache_dir=tmp_path, device=torch.device("cpu"))
    calls.clear()
    assert cell(warm, torch.arange(10, 40)) == alone
    assert len(calls) == 30
    calls.clear()
    cell(warm, torch.arange(0, 25))  # a set not seen before: its clean clips too
    assert len(calls) == 25 + 25
    stored = sorted((tmp_path / "metrics" / "fad-clean").glob("counting-*.npz"))
    assert len(stored) == 2
    for path in stored:  # a damaged entry is computed again, to the same value
        path.write_bytes(b"not an npz")
    calls.clear()
    with pytest.warns(UserWarning, match="unreadable"):
        assert cell(Workspace(system, cache_dir=tmp_path, device=torch.device("cpu")),
                    torch.arange(10, 40)) == alone
    assert len(calls) == 60


def test_cell_fad_stands_on_every_attacked_clip_and_counts_clips_not_frames(tmp_path):
    """FAD over the attacked clips, failed attacks included; too few clips is NaN with the
    reason even when their frames would be plenty."""
    from musicbench.fad import FAD_MIN_CLIPS
    from musicbench.workspace import Workspace
    from musicbench_plugins.metrics.fad import FAD

    system = _counting_system([])
    ws = Workspace(system, cache_dir=tmp_path, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    clean = torch.randn(30, 16000, generator=gen) * 0.1
    adv = clean + torch.randn(30, 16000, generator=gen) * 0.05
    ids = [f"c{i}" for i in range(30)]
    attacked = torch.arange(30) < FAD_MIN_CLIPS - 1
    few = FAD().compute(_cell_audio(clean, adv, ids, attacked, fad_encoder="counting"), ws.ctx)
    assert math.isnan(few.values["fad"]) and few.n == FAD_MIN_CLIPS - 1
    assert f"{FAD_MIN_CLIPS - 1} clips < {FAD_MIN_CLIPS}" in few.note
    every = FAD().compute(_cell_audio(clean, adv, ids, torch.ones(30, dtype=torch.bool),
                                      fad_encoder="counting"), ws.ctx)
    assert every.n == 30 and every.values["fad"] > 0 and every.note is None


def test_an_fad_encoder_of_the_targets_own_network_is_flagged(tmp_path):
    from musicbench.workspace import Workspace
    from musicbench_plugins.metrics.fad import FAD

    ws = Workspace(_counting_system([]), cache_dir=tmp_path, device=torch.device("cpu"))
    clean = torch.randn(12, 8000, generator=torch.Generator().manual_seed(2)) * 0.1
    ids = [f"c{i}" for i in range(12)]
    attacked = torch.ones(12, dtype=torch.bool)
    same = FAD().compute(_cell_audio(clean, clean * 0.5, ids, attacked, fad_encoder="counting",
                                     model_network="frame-energy"), ws.ctx)
    other = FAD().compute(_cell_audio(clean, clean * 0.5, ids, attacked,
                                      fad_encoder="counting", model_network="other"), ws.ctx)
    assert any("target's own network" in f for f in same.flags) and not other.flags


def test_gaussians_accumulated_clip_by_clip_equal_the_whole_set_even_far_from_zero():
    """FAD's statistics are summed clip by clip (no frame set held); a large common offset
    (1e4 against unit spread) must not cost the covariance its precision."""
    from musicbench.fad import FrameGaussian

    rng = np.random.default_rng(0)
    frames = rng.normal(size=(3000, 6)) @ rng.normal(size=(6, 6)) + 1e4
    g = FrameGaussian()
    for chunk in np.array_split(frames, 17):
        g.add(chunk)
    mean, cov = g.mean_cov()
    assert g.frames == 3000 and g.dim == 6
    assert np.allclose(mean, frames.mean(0), rtol=0, atol=1e-9)
    assert np.allclose(cov, np.cov(frames, rowvar=False), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="dimension"):
        g.add(np.zeros((2, 5)))
