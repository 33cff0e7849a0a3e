"""musicbench verify: a stored run's cells recomputed at this revision agree clip by clip with
the store; a tampered clip or figure is found and named; a cell whose key this revision does
not reproduce is not recomputed, and the parts of its key that differ are named."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from test_planning import BASE
from typer.testing import CliRunner

import musicbench
import musicbench.plugins
from musicbench.cells import CellSpec
from musicbench.cli import app
from musicbench.session import RunOptions, execute
from musicbench.verify import verify

CONFIG = BASE.format(run="", datasets="")  # fgsm and pgd (random start) on toy-model


def rekey(db_path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Store every cell as if computed under the spec ``edit`` makes of its own: the spec
    and the key it hashes to, everywhere the key is written (a store made elsewhere)."""
    db = sqlite3.connect(db_path)
    moved = {}
    for key, text in db.execute("SELECT key, spec FROM cells").fetchall():
        spec = json.loads(text)
        edit(spec)
        spec["key"] = new = CellSpec.from_dict(spec).key
        moved[key] = new
        db.execute("UPDATE cells SET key = ?, spec = ? WHERE key = ?",
                   (new, json.dumps(spec, sort_keys=True), key))
        for table in ("samples", "metrics", "audio"):
            db.execute(f"UPDATE {table} SET cell_key = ? WHERE cell_key = ?", (new, key))
    for run_id, plan in db.execute("SELECT id, plan FROM runs").fetchall():
        db.execute("UPDATE runs SET plan = ? WHERE id = ?",
                   (json.dumps([moved.get(k, k) for k in json.loads(plan)]), run_id))
    db.commit()
    db.close()


def _run(tmp_path, plugins):
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    execute(RunOptions(config=config, out=tmp_path / "out"), plugins)
    return tmp_path / "out"


def test_a_store_recomputed_here_is_identical_and_tampering_is_found(tmp_path, toy_plugins,
                                                                    monkeypatch):
    monkeypatch.setattr(musicbench.plugins, "get_plugins", lambda **_: toy_plugins)
    out = _run(tmp_path, toy_plugins)
    checks = verify(out, toy_plugins, everything=True)
    assert sorted(c.labels[3] for c in checks) == ["fgsm", "pgd"]
    assert all(c.verdict == "identical" and not c.details for c in checks)

    # by default only the cheapest reproducible cell is recomputed
    assert sorted(c.verdict for c in verify(out, toy_plugins)) == ["identical", "not recomputed"]

    # one clip's outcome and one figure changed behind the store's back
    db = sqlite3.connect(out / "results.sqlite")
    key = db.execute("SELECT key FROM cells WHERE attack = 'pgd'").fetchone()[0]
    clip = db.execute("SELECT sample_id FROM samples WHERE cell_key = ? AND attacked = 1 "
                      "ORDER BY position LIMIT 1", (key,)).fetchone()[0]
    db.execute("UPDATE samples SET success = 1 - success WHERE cell_key = ? AND sample_id = ?",
               (key, clip))
    db.execute("UPDATE metrics SET value = value + 0.125 WHERE cell_key = ? AND name = 'asr'",
               (key,))
    db.commit()
    db.close()
    (pgd,) = [c for c in verify(out, toy_plugins, everything=True) if c.labels[3] == "pgd"]
    # its figures are no longer those of its clips, and recomputing it names the clip
    assert pgd.verdict == "inconsistent"
    assert any(d.startswith("figure asr:") and d.endswith("from its clips")
               for d in pgd.details)
    assert any(d.startswith(f"recomputed: 1 of 6 clips differ (first: {clip}: success")
               for d in pgd.details)
    assert any(d.startswith("recomputed: figure asr:") for d in pgd.details)

    result = CliRunner().invoke(app, ["verify", str(out), "--all"])
    assert result.exit_code == 1 and "inconsistent" in result.output


def test_a_cell_this_revision_plans_differently_is_named_not_recomputed(tmp_path, toy_plugins,
                                                                        monkeypatch):
    monkeypatch.setattr(musicbench.plugins, "get_plugins", lambda **_: toy_plugins)
    out = _run(tmp_path, toy_plugins)
    result = CliRunner().invoke(app, ["verify", str(out)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["verify", str(out), "--device", "tpu"])
    assert result.exit_code == 2 and "device" in result.output

    stored_version = musicbench.RESULTS_VERSION
    monkeypatch.setattr(musicbench, "RESULTS_VERSION", "next")
    checks = verify(out, toy_plugins, everything=True)
    assert {c.verdict for c in checks} == {"key differs"}
    assert checks[0].details == [
        (f"harness: {musicbench.__version__}+results.{stored_version} stored, "
        f"{musicbench.__version__}+results.next here")]
    result = CliRunner().invoke(app, ["verify", str(out)])
    assert result.exit_code == 1 and "check out the revision" in " ".join(result.output.split())


def test_a_missing_store_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["verify", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no store at" in result.output


def test_weights_that_differ_from_the_cache_are_named_with_the_remedy(tmp_path, toy_plugins,
                                                                      monkeypatch):
    monkeypatch.setattr(musicbench.plugins, "get_plugins", lambda **_: toy_plugins)
    out = _run(tmp_path, toy_plugins)
    # as if computed with other weights: spec and key agree (an edited spec alone is
    # `edited`, tests/test_verify_rederive.py)
    rekey(out / "results.sqlite", lambda spec: spec["model"].update(weights="feedfacefeedface"))
    checks = verify(out, toy_plugins)
    assert {c.verdict for c in checks} == {"key differs"}
    assert checks[0].details[0].startswith("model toy-model: weights 'feedfacefeedface' stored")
    result = CliRunner().invoke(app, ["verify", str(out)])
    said = " ".join(result.output.split())  # rich wraps lines
    assert result.exit_code == 1 and "seed the cache with the board's weights" in said
    assert "check out the revision" not in said
