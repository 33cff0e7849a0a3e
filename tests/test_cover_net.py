"""cover-net trains on a tiny m21-covers, passes the model checks, and embeds on the sphere."""

from __future__ import annotations

import torch

from musicbench.cache import cache_dir
from musicbench.plugins import PluginSystem
from musicbench.validate import validate_plugin
from musicbench.workspace import Workspace

TINY_COVERS = {"works": 12, "versions_per_work": 3, "clip_seconds": 3.0}
TINY_NET = {"train_dataset_params": TINY_COVERS, "input_seconds": 3.0, "epochs": 2,
            "works_per_batch": 4}


def test_cover_net_trains_validates_and_loads_from_its_checkpoint():
    plugins = PluginSystem()
    report = validate_plugin("cover-net", kind="model", device="cpu", plugins=plugins,
                             params=TINY_NET)
    assert report.ok, [(c.name, c.detail) for c in report.checks if not c.ok]
    ws = Workspace(plugins, cache_dir=cache_dir(), device=torch.device("cpu"),
                   allow_training=False)  # the checkpoint written above must be found
    model = ws.model("cover-net", TINY_NET)
    summary = model.training_summary
    assert summary["train_works"] >= 2 and 0 <= summary["test_top1"] <= 1
    emb = model.embed(torch.randn(2, model.input_samples) * 0.1)
    assert emb.shape == (2, 128)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


def test_stretch_and_crop_resamples_time_and_keeps_pitch_rows():
    from musicbench_plugins.models.cover_net import _stretch_and_crop

    frames = 100
    t = torch.arange(frames, dtype=torch.float32)
    # Row k carries a ramp scaled by k: stretching in time must not mix rows (pitch).
    spec = (torch.arange(1, 5, dtype=torch.float32)[:, None] * t[None]).expand(3, 1, 4, frames)
    out = _stretch_and_crop(spec.contiguous(), 1.25, 0.5, torch.Generator().manual_seed(0))
    assert out.shape == (3, 1, 4, 50)
    ratios = out[:, :, 1:] / out[:, :, :1].clamp(min=1e-6)
    assert torch.allclose(ratios[..., 5:], torch.arange(2, 5.0)[None, None, :, None]
                          .expand_as(ratios[..., 5:]), rtol=1e-4)
    # The time axis really was resampled: the slope of the ramp is 1/factor, in [0.8, 1.25].
    slopes = (out[:, 0, 0, 40] - out[:, 0, 0, 10]) / 30
    assert ((slopes > 0.79) & (slopes < 1.26)).all() and not torch.allclose(slopes, torch.ones(3))
    same = _stretch_and_crop(spec.contiguous(), 1.25, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(out, same)
    assert _stretch_and_crop(spec, 1.0, 1.0, torch.Generator()) is spec


def test_stretch_and_crop_pads_short_clips_with_their_floor():
    from musicbench_plugins.models.cover_net import _stretch_and_crop

    spec = torch.rand(8, 1, 3, 20) + 1.0
    out = _stretch_and_crop(spec, 4.0, 1.0, torch.Generator().manual_seed(3))
    assert out.shape == spec.shape
    assert (out >= 1.0 - 1e-6).all()  # padding uses each clip's floor, not zeros
