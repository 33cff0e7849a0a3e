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
