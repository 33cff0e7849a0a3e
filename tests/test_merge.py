"""musicbench merge: a config run as --only runs in separate folders becomes one run whose
leaderboard equals the one run in a single folder; finished cells are never overwritten;
different configs and missing sources are refused with nothing written."""

from __future__ import annotations

import pytest
from test_planning import BASE
from typer.testing import CliRunner

from musicbench.cli import app
from musicbench.errors import ConfigError
from musicbench.leaderboard import build
from musicbench.merge import merge
from musicbench.session import RunOptions, execute
from musicbench.store import Store

CONFIG = BASE.format(run="keep_audio = 1", datasets="")  # fgsm and pgd on toy-model


def _rows(folder):
    store = Store(folder / "results.sqlite", readonly=True)
    try:
        board = build(store)
        rows = {(r["attack"], r["defense"]): {k: v for k, v in r.items()
                                              if k not in ("seconds", "attack_seconds", "seconds_per_clip",
                                                           "peak_memory_mb")}
                for r in board.rows}
        samples = {c.key: [(s.sample_id, s.success, s.adv_pred, s.queries) for s in c.samples]
                   for c in store.cells()}
        return rows, samples, len(store.runs())
    finally:
        store.close()


def test_only_runs_in_two_folders_merge_into_the_single_run(tmp_path, toy_plugins):
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    execute(RunOptions(config=config, out=tmp_path / "whole"), toy_plugins)
    for part, attack in (("a", "fgsm"), ("b", "pgd")):
        execute(RunOptions(config=config, out=tmp_path / part, only=[f"attack={attack}"]),
                toy_plugins, argv=["/venv/bin/musicbench", "run", "run.toml", "--out", part,
                                   "--only", f"attack={attack}"])

    report = merge(tmp_path / "merged", [tmp_path / "a", tmp_path / "b" / "results.sqlite"])
    assert sum(report.copied.values()) == 2 and report.audio_files > 0
    whole_rows, whole_samples, _ = _rows(tmp_path / "whole")
    rows, samples, runs = _rows(tmp_path / "merged")
    assert rows == whole_rows and samples == whole_samples
    assert runs == 2  # both runs' provenance kept
    board = (tmp_path / "merged" / "leaderboard.md").read_text()
    assert "| fgsm |" in board and "| pgd |" in board
    # the header names every part's command, not only the first
    assert ("- commands (2 runs: `--only` parts, merged or rerun):\n"
            "  - `musicbench run run.toml --out a --only attack=fgsm`\n"
            "  - `musicbench run run.toml --out b --only attack=pgd`\n") in board
    store = Store(tmp_path / "merged" / "results.sqlite", readonly=True)
    try:
        for _, _, rel in (a for c in store.cells() for a in c.audio):
            assert (tmp_path / "merged" / rel).is_file()
    finally:
        store.close()

    # merging again copies nothing: finished cells are kept as they are
    again = merge(tmp_path / "merged", [tmp_path / "a"])
    assert sum(again.copied.values()) == 0 and sum(again.already_there.values()) == 1
    # ... and adds no second record of a run it already holds (issue 26)
    assert sum(again.runs.values()) == 0 and _rows(tmp_path / "merged")[2] == 2


def test_different_configs_and_missing_sources_are_refused(tmp_path, toy_plugins):
    first, second = tmp_path / "one.toml", tmp_path / "two.toml"
    first.write_text(CONFIG)
    second.write_text(CONFIG.replace("steps = 3", "steps = 4"))
    execute(RunOptions(config=first, out=tmp_path / "a", only=["attack=fgsm"]), toy_plugins)
    execute(RunOptions(config=second, out=tmp_path / "b", only=["attack=pgd"]), toy_plugins)
    with pytest.raises(ConfigError, match="different configs"):
        merge(tmp_path / "merged", [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "merged").exists()
    result = CliRunner().invoke(app, ["merge", str(tmp_path / "a"), str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no results at" in result.output
