"""musicbench.results: a run's cells and clips as typed DataFrames; docs/analysis.md runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pd = pytest.importorskip("pandas")

from musicbench.leaderboard import build  # noqa: E402
from musicbench.results import CELL_COLUMNS, SAMPLE_COLUMNS, load  # noqa: E402
from musicbench.store import Store  # noqa: E402

DOC = Path(__file__).parents[1] / "docs" / "analysis.md"

CONFIG = """
[run]
samples = 8
device = "cpu"
fad_encoder = ""
[[datasets]]
name = "toy-tones"
[[models]]
name = "toy-model"
[[defenses]]
name = "none"
[[defenses]]
name = "toy-noise"
[[attacks]]
name = "fgsm"
eps = 0.01
[[attacks]]
name = "pgd"
eps = 0.01
steps = 4
[[attacks]]
name = "pgd"
label = "pgd, oblivious"
eps = 0.01
steps = 4
adaptive = "oblivious"
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import run_toy_config

    return run_toy_config(tmp_path_factory.mktemp("results"), CONFIG)[1]


def test_cells_and_samples_are_typed_and_complete(run_dir):
    res = load(run_dir)
    cells, samples = res.cells, res.samples
    configured = cells[cells.role == ""]
    assert len(configured) == 6 and set(configured.attack) == {"fgsm", "pgd", "pgd, oblivious"}
    # the noise row's sanity gates on its first gradient attack
    assert dict(zip(cells.attack[cells.role != ""], cells.role[cells.role != ""],
                    strict=True)) == {"fgsm, 10×ε": "large-radius",
                                      "fgsm, BPDA identity": "identity-bpda"}
    for name, dtype in CELL_COLUMNS.items():
        assert str(cells[name].dtype) == dtype, name
    for name, dtype in SAMPLE_COLUMNS.items():
        assert str(samples[name].dtype) == dtype, name
    assert str(cells["lsd"].dtype) == "Float64" and "snr" in samples
    assert len(samples) == int(cells.n.sum())
    assert cells.loc[cells.attack == "pgd, oblivious", "contrast"].all()
    assert (cells.asr_low <= cells.asr).all() and (cells.asr <= cells.asr_high).all()
    noisy = samples[samples.defense == "toy-noise"]
    assert noisy.clean_wrong.notna().all()
    assert samples[samples.defense == "none"].clean_wrong.isna().all()
    # the same store read with cells="all" holds at least the grid
    assert len(load(run_dir / "results.sqlite", cells="all").cells) >= len(cells)


def test_a_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results store"):
        load(tmp_path)


def test_the_worked_example_in_docs_runs_and_matches_the_leaderboard(run_dir, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 3
    scope: dict = {"OUT": run_dir}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), scope)  # noqa: S102 - our own docs
    store = Store(run_dir / "results.sqlite", readonly=True)
    try:
        board = build(store)
    finally:
        store.close()
    expected = {(s.dataset, s.model, s.defense): w.value for s in board.summary
                for w in s.worst_case if w.threat_model.label == "L∞ ε=0.002"}
    got = scope["worst_case"].to_dict()
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert got[k] == pytest.approx(v)
