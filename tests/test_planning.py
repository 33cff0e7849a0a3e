"""The planner resolves every component once into typed cells: keys that change with what
changes results (metrics, weights, versions), datasets told apart by label, --only narrowing
what runs but not what the leaderboard shows, and publishing only from clean revisions."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from musicbench.cache import cache_dir
from musicbench.cells import CellSpec
from musicbench.config import parse_config
from musicbench.errors import ConfigError
from musicbench.planner import plan_cells, resolve
from musicbench.session import RunOptions, execute
from musicbench.store import Store
from musicbench.workspace import Workspace

BASE = """
[run]
fad_encoder = ""
samples = 6
batch_size = 3
device = "cpu"
{run}

[[datasets]]
name = "toy-tones"
{datasets}

[[models]]
name = "toy-model"

[[defenses]]
name = "none"

[[attacks]]
name = "fgsm"
eps = 0.01

[[attacks]]
name = "pgd"
eps = 0.01
steps = 3
"""


def _plan(text: str, plugins):  # noqa: ANN001
    config = parse_config(text)
    ws = Workspace(plugins, cache_dir=cache_dir(), device=torch.device("cpu"))
    return plan_cells(resolve(config, plugins), ws, config.run, quick=False)


def test_cells_are_typed_and_round_trip_through_json(toy_plugins):
    plan = _plan(BASE.format(run="", datasets=""), toy_plugins)
    spec = plan.specs[1]
    assert spec.attack.name == "pgd" and spec.threat == "white-box"
    assert spec.threat_model.label == "L∞ ε=0.01"
    assert spec.model.weights is not None  # the toy model's state dict is part of the key
    again = CellSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.key == spec.key and again.seed == spec.seed


def test_two_entries_of_one_dataset_plugin_with_different_params_stay_apart(tmp_path,
                                                                           toy_plugins):
    text = BASE.format(run="", datasets="clips = 24") + """
[[datasets]]
name = "toy-tones"
label = "toy-long"
clips = 24
seconds = 0.5
"""
    plan = _plan(text, toy_plugins)
    by_label = {s.dataset.label: s.dataset.fingerprint for s in plan.specs}
    assert set(by_label) == {"toy-tones", "toy-long"}
    assert by_label["toy-tones"] != by_label["toy-long"]
    assert set(plan.datasets) == {"toy-tones", "toy-long"}
    config = tmp_path / "two.toml"
    config.write_text(text)
    outcome = execute(RunOptions(config=config, out=tmp_path / "out"), toy_plugins)
    assert [r.status for r in outcome.records] == ["ok"] * 4
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "dataset `toy-tones`" in board and "dataset `toy-long`" in board


def test_the_metrics_of_a_run_are_configured_keyed_and_shown(tmp_path, toy_plugins):
    default = _plan(BASE.format(run="", datasets=""), toy_plugins)
    more = _plan(BASE.format(run='metrics = ["lsd", "snr", "linf"]', datasets=""), toy_plugins)
    assert default.specs[0].key != more.specs[0].key  # a new column is a new cell
    config = tmp_path / "m.toml"
    config.write_text(BASE.format(run='metrics = ["linf", "l2"]', datasets="")
                      .replace('fad_encoder = ""', 'fad_encoder = "toy-frames"'))
    execute(RunOptions(config=config, out=tmp_path / "out"), toy_plugins)
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "L∞ ↓" in board and "L2 ↓" in board and "LSD ↓" not in board
    assert "fad ↓" not in board and "FAD (toy-frames) ↓" in board  # set-level: own column
    with pytest.raises(ConfigError, match="Did you mean 'lsd'"):
        _plan(BASE.format(run='metrics = ["lds"]', datasets=""), toy_plugins)
    with pytest.raises(ConfigError, match="set_metrics"):
        _plan(BASE.format(run='metrics = ["fad"]', datasets=""), toy_plugins)


def test_only_runs_a_subset_but_the_leaderboard_keeps_every_stored_cell(tmp_path, toy_plugins):
    config = tmp_path / "run.toml"
    config.write_text(BASE.format(run="", datasets=""))
    out = tmp_path / "out"
    execute(RunOptions(config=config, out=out), toy_plugins)
    first = (out / "leaderboard.md").read_text()
    assert "| fgsm |" in first and "| pgd |" in first
    again = execute(RunOptions(config=config, out=out, only=["attack=pgd"]), toy_plugins)
    assert again.planned == 1
    board = (out / "leaderboard.md").read_text()
    assert "| fgsm |" in board and "| pgd |" in board


def test_publishing_refuses_cells_computed_from_a_modified_tree(tmp_path, toy_plugins,
                                                                monkeypatch):
    import musicbench.environment as environment
    from musicbench.cli import app

    config = tmp_path / "run.toml"
    config.write_text(BASE.format(run="", datasets=""))
    out = tmp_path / "out"
    monkeypatch.setattr(environment, "git_revision", lambda: "abc123+dirty")
    execute(RunOptions(config=config, out=out), toy_plugins)
    monkeypatch.setattr(environment, "git_revision", lambda: "abc123")
    runner = CliRunner()
    target = tmp_path / "board.md"
    refused = runner.invoke(app, ["leaderboard", str(out), "-o", str(target)])
    assert refused.exit_code == 2 and not target.exists()
    assert "abc123+dirty" in refused.output and "--rerun-dirty" in refused.output
    draft = runner.invoke(app, ["leaderboard", str(out), "-o", str(target), "--allow-dirty"])
    assert draft.exit_code == 0 and "git abc123+dirty" in target.read_text()
    execute(RunOptions(config=config, out=out, rerun_dirty=True), toy_plugins)
    store = Store(out / "results.sqlite")
    try:
        assert {r.environment["git_revision"] for r in store.cells()} == {"abc123"}
    finally:
        store.close()
    copy = tmp_path / "published" / "run.sqlite"
    published = runner.invoke(app, ["leaderboard", str(out), "-o", str(target),
                                    "--store-copy", str(copy)])
    assert published.exit_code == 0, published.output
    assert "(git abc123)" in target.read_text()
    again = runner.invoke(app, ["leaderboard", str(copy)])  # the copy renders the same board
    assert again.exit_code == 0 and again.stdout.strip() == target.read_text().strip()


def test_weights_digest_follows_the_weights_a_component_runs_with():
    """New weights (a model's, or the inpainter an attack loads) make new cell keys."""
    from musicbench.interfaces import Component

    class Net(Component):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(3, 2)

    class UsesNet(Component):  # an attack holding a loaded component (MAIA's inpainter)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

    torch.manual_seed(0)
    a, b = Net(), Net()
    b.net.load_state_dict(a.net.state_dict())
    assert a.weights_digest() == b.weights_digest() is not None
    assert UsesNet(a).weights_digest() == UsesNet(b).weights_digest()
    with torch.no_grad():
        b.net.bias.add_(1e-6)
    assert a.weights_digest() != b.weights_digest()
    assert UsesNet(a).weights_digest() != UsesNet(b).weights_digest()
    assert Component().weights_digest() is None


def test_compare_sees_every_cell_of_runs_split_by_only(tmp_path, toy_plugins):
    """A long config run as several --only runs (one per model, say) is compared and shown as
    one run."""
    from musicbench.compare import compare

    config = tmp_path / "run.toml"
    config.write_text(BASE.format(run="", datasets=""))
    out = tmp_path / "out"
    execute(RunOptions(config=config, out=out, only=["attack=fgsm"]), toy_plugins)
    execute(RunOptions(config=config, out=out, only=["attack=pgd"]), toy_plugins)
    result = compare(out, ["pgd", "fgsm"], model="toy-model")
    assert [(p.a, p.b) for p in result.pairs] == [("pgd", "fgsm")]
    board = (out / "leaderboard.md").read_text()
    assert "| fgsm |" in board and "| pgd |" in board


def test_reading_a_published_store_does_not_change_it(tmp_path, toy_plugins):
    import hashlib

    from musicbench.cli import app

    config = tmp_path / "run.toml"
    config.write_text(BASE.format(run="", datasets=""))
    execute(RunOptions(config=config, out=tmp_path / "out"), toy_plugins)
    copy = tmp_path / "pub" / "run.sqlite"
    from musicbench.store import snapshot

    snapshot(tmp_path / "out" / "results.sqlite", copy)
    before = hashlib.sha256(copy.read_bytes()).hexdigest()
    assert CliRunner().invoke(app, ["leaderboard", str(copy), "--format", "json"]).exit_code == 0
    assert CliRunner().invoke(app, ["compare", str(copy), "--model", "toy-model", "pgd",
                                    "fgsm"]).exit_code == 0
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in copy.parent.iterdir()) == ["run.sqlite"]  # no WAL beside it


def test_a_worst_case_standing_on_fewer_attacks_says_which(tmp_path, toy_plugins):
    """A model entry that runs only some attacks of a threat model: its worst-case cell names
    them, so the list under the table (every attack of the threat model) does not mislead."""
    config = tmp_path / "run.toml"
    config.write_text(BASE.format(run="", datasets="") + """
[[models]]
name = "toy-model"
label = "toy, pgd only"
seed = 1
attacks = ["pgd"]
""")
    execute(RunOptions(config=config, out=tmp_path / "out"), toy_plugins)
    rows = [line for line in (tmp_path / "out" / "leaderboard.md").read_text().splitlines()
            if line.startswith("| toy-tones |")]
    worst = [line for line in rows if "toy, pgd only" in line][0]
    full = [line for line in rows if "| toy-model |" in line][0]
    assert "(pgd only)" in worst and "only)" not in full


def test_a_model_entry_may_name_the_defenses_its_cells_use(toy_plugins):
    """``defenses = [...]`` on a model: a defense whose parameters suit one model and not
    another gets one entry per model, each model naming its own (and only its cells exist)."""
    text = BASE.format(run="", datasets="") + """
[[models]]
name = "toy-model"
label = "toy-model-seed1"
seed = 1
defenses = ["none", "lowpass, seed-1 cutoff"]

[[defenses]]
name = "lowpass"
label = "lowpass, seed-1 cutoff"
cutoff_hz = 2000
"""
    plan = _plan(text, toy_plugins)
    pairs = {(s.model.label, s.defense.label) for s in plan.specs}
    assert pairs == {("toy-model", "none"), ("toy-model", "lowpass, seed-1 cutoff"),
                     ("toy-model-seed1", "none"), ("toy-model-seed1", "lowpass, seed-1 cutoff")}
    only_seed1 = text.replace('name = "toy-model"\n\n[[defenses]]',
                              'name = "toy-model"\ndefenses = ["none"]\n\n[[defenses]]', 1)
    plan = _plan(only_seed1, toy_plugins)
    pairs = {(s.model.label, s.defense.label) for s in plan.specs}
    assert pairs == {("toy-model", "none"), ("toy-model-seed1", "none"),
                     ("toy-model-seed1", "lowpass, seed-1 cutoff")}
    # two attacks each, and the lowpass row's sanity gates on its first gradient attack
    # (fgsm at 10x its radius, and through the identity with BPDA)
    assert len(plan.specs) == 3 * 2 + 2
    with pytest.raises(ConfigError, match=r"\[models.toy-model-seed1\] key 'defenses'.*"
                                          r"Did you mean 'lowpass, seed-1 cutoff'"):
        parse_config(text.replace('"lowpass, seed-1 cutoff"]', '"lowpass seed-1 cutoff"]'))
    with pytest.raises(ConfigError, match=r"key 'defenses'"):
        parse_config(text.replace('defenses = ["none", "lowpass, seed-1 cutoff"]',
                                  "defenses = []"))
