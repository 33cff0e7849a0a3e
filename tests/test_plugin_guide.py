"""docs/plugins.md stays true to the code: its trainable-model sample trains with `musicbench
train` as a third-party plugin, and its tables of Context fields, public names and built-in
dataset labels match what the code has."""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import cli, make_site

from musicbench import api
from musicbench.errors import NotTrainedError
from musicbench.interfaces import Context
from musicbench.plugins import PluginSystem
from musicbench.workspace import Workspace

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
TOY_PARAMS = {"train_dataset": "toy-tones", "epochs": 3}


def guide_block(marker: str) -> str:
    """The first fenced code block after ``<!-- marker`` in the guide."""
    text = GUIDE.read_text()
    start = text.index(f"<!-- {marker}")
    m = re.compile(r"```[a-z]*\n(.*?)```", re.S).search(text, start)
    assert m is not None, f"no code block after <!-- {marker} in {GUIDE}"
    return m.group(1)


def guide_table(marker: str) -> list[list[str]]:
    """The rows (cells stripped, header and rule dropped) of the first table after
    ``<!-- marker`` in the guide."""
    text = GUIDE.read_text()
    lines = text[text.index(f"<!-- {marker}"):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# -- the trainable third-party model of section 9 ----------------------------------------------

ENTRY_MODULE = """
from musicbench import hookimpl


@hookimpl
def register_models(register):
    register("wave-cnn", "wave_cnn_guide:WaveCNN")
"""


@pytest.fixture
def wave_site(tmp_path: Path) -> Path:
    """The guide's sample as an installed third-party plugin (entry point ``wave``)."""
    return make_site(tmp_path / "wave", "wave-cnn-plugin", {"wave": "wave_cnn_plugin"},
                     {"wave_cnn_guide.py": guide_block("tested: trainable-model"),
                      "wave_cnn_plugin.py": ENTRY_MODULE})


@pytest.fixture
def wave_plugins(wave_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginSystem]:
    """A plugin system with the toy dataset and the guide's model, in this process."""
    import toyplugins

    monkeypatch.syspath_prepend(str(wave_site))
    try:
        module = importlib.import_module("wave_cnn_plugin")
        system = PluginSystem(discover=False)
        for plugin, name in ((toyplugins, "toy"), (module, "wave")):
            assert system.add_plugin(plugin, name).status == "loaded"
        yield system
    finally:
        for name in ("wave_cnn_plugin", "wave_cnn_guide"):
            sys.modules.pop(name, None)


def _workspace(plugins: PluginSystem, cache: Path, *, allow_training: bool) -> Workspace:
    return Workspace(plugins, cache_dir=cache, device=torch.device("cpu"),
                     allow_training=allow_training)


def test_the_guides_third_party_model_is_trained_by_musicbench_train_and_then_loaded(
        wave_site, toy_site, wave_plugins):
    home = Path(os.environ["MUSICBENCH_HOME"])  # the test's private cache (conftest)
    result = cli("train", "wave-cnn", "-p", "train_dataset=toy-tones", "-p", "epochs=3",
                 sites=(wave_site, toy_site))
    assert result.returncode == 0, result.stderr
    assert "trained wave-cnn" in result.stderr
    [checkpoint] = (home / "models").glob("wave-cnn-*.safetensors")

    model = _workspace(wave_plugins, home, allow_training=False).model("wave-cnn", TOY_PARAMS)
    assert model.checkpoint_key() == checkpoint.stem  # the weights `train` wrote
    assert model.labels == ("class-0", "class-1", "class-2")
    assert model.training_summary["dataset"] == "toy-tones"
    assert not model.module().training
    assert model.forward(torch.zeros(2, model.input_samples)).shape == (2, 3)


def test_the_guides_model_raises_not_trained_and_trains_deterministically(wave_plugins,
                                                                          tmp_path):
    with pytest.raises(NotTrainedError, match="musicbench train wave-cnn"):
        _workspace(wave_plugins, tmp_path / "a", allow_training=False).model(
            "wave-cnn", TOY_PARAMS)
    first = _workspace(wave_plugins, tmp_path / "a", allow_training=True).model(
        "wave-cnn", TOY_PARAMS)  # trains on first use
    ws = _workspace(wave_plugins, tmp_path / "b", allow_training=True)
    again = ws.make("model", "wave-cnn", TOY_PARAMS)
    summary = again.fit(ws.ctx)
    assert summary["checkpoint"].endswith(first.checkpoint_key() + ".safetensors")
    for (name, a), (_, b) in zip(first.module().state_dict().items(),
                                 again.module().state_dict().items(), strict=True):
        assert torch.equal(a, b), f"{name} differs between two trainings with one seed"


def test_a_model_without_fit_has_nothing_to_train(toy_site):
    result = cli("train", "toy-model", sites=(toy_site,))
    assert result.returncode == 2
    assert "nothing to train" in result.stderr and "TrainedModel" in result.stderr


def test_a_trained_component_without_training_fields_is_a_clear_type_error():
    class Untrainable(api.TrainedModel):
        checkpoint_prefix = "untrainable"

        def make_net(self, ds):
            return torch.nn.Identity()

        def fit(self, ctx):
            return {}

    with pytest.raises(TypeError, match="lacks train_dataset, train_dataset_params, seed"):
        Untrainable()


# -- tables ------------------------------------------------------------------------------------


def test_every_context_field_is_in_the_guides_context_table():
    text = GUIDE.read_text()
    section = text[text.index("### The `Context`"):]
    documented = {_ticked(row)[0] for row in section.splitlines()
                  if row.startswith("| `")}
    missing = {f.name for f in dataclasses.fields(Context)} - documented
    assert not missing, f"Context fields missing from docs/plugins.md: {sorted(missing)}"


def test_the_guides_public_api_table_lists_exactly_musicbench_api_all():
    documented = [name for row in guide_table("public-api") for name in _ticked(row[0])]
    assert sorted(documented) == sorted(api.__all__)


def test_the_guides_builtin_dataset_labels_are_the_codes():
    plugins = PluginSystem()
    builtin = {e.name: e.load() for e in plugins.registry("dataset")
               if e.plugin == "builtin-datasets"}
    rows = {_ticked(row[0])[0]: row for row in guide_table("dataset-labels")}
    assert set(rows) == set(builtin)
    for name, (_, task, labels) in rows.items():
        cls = builtin[name]
        assert task == cls.task, name
        if cls.labels:  # fixed label sets; folder's come from its manifest
            assert tuple(_ticked(labels)) == tuple(cls.labels), name
        else:
            assert not labels.startswith("`"), name
