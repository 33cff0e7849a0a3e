"""musicbench verify checks every stored cell against itself before recomputing any: figures
derived again from the stored clips (an edited clip or figure fails the store even when the
cell is not recomputed), a stored spec that no longer hashes to its key and a stored config
that plans a cell otherwise at the same versions are edits; NaN intervals survive the store,
so an untouched store verifies; --rtol must be finite."""

from __future__ import annotations

import math
import sqlite3

import pytest
from test_verify import _run
from typer.testing import CliRunner

import musicbench.plugins
from musicbench.cells import CELL_KINDS, CellInfo, CellRun, CellSpec, ComponentRef
from musicbench.cli import app
from musicbench.interfaces.attack import ThreatModel
from musicbench.planner import harness_version
from musicbench.runner import _cell_metrics
from musicbench.store import CellRecord, MetricValue, SampleRecord, Store
from musicbench.verify import record_differences, rederive_differences, verify


@pytest.fixture
def out(tmp_path, toy_plugins, monkeypatch):
    monkeypatch.setattr(musicbench.plugins, "get_plugins", lambda **_: toy_plugins)
    return _run(tmp_path, toy_plugins)


def _verify_cli(out, *args):
    result = CliRunner().invoke(app, ["verify", str(out), *args])
    return result.exit_code, " ".join(result.output.split())  # rich wraps lines


def _sql(out, statement: str, *params) -> None:
    db = sqlite3.connect(out / "results.sqlite")
    db.execute(statement, params)
    db.commit()
    db.close()


def _not_recomputed_by_default(out, toy_plugins) -> str:
    """The attack label of the cell a plain ``verify`` does not recompute."""
    (check,) = [c for c in verify(out, toy_plugins) if c.verdict == "not recomputed"]
    return check.labels[3]


def test_an_edited_clip_of_a_cell_not_recomputed_fails_the_store(out, toy_plugins):
    attack = _not_recomputed_by_default(out, toy_plugins)
    # every attacked clip of that cell now reads as fooled: its ASR says otherwise
    _sql(out, "UPDATE samples SET success = 1 - success WHERE attacked = 1 AND cell_key = "
              "(SELECT key FROM cells WHERE attack = ?)", attack)
    checks = {c.labels[3]: c for c in verify(out, toy_plugins)}
    assert checks[attack].verdict == "inconsistent"
    assert any(d.startswith("figure asr:") and d.endswith("from its clips")
               for d in checks[attack].details)
    code, said = _verify_cli(out)
    assert code == 1 and "inconsistent" in said and f"/ {attack}" in said


def test_an_edited_figure_fails_the_store_naming_it(out, toy_plugins):
    attack = _not_recomputed_by_default(out, toy_plugins)
    _sql(out, "UPDATE metrics SET value = 99.0 WHERE name = 'asr' AND cell_key = "
              "(SELECT key FROM cells WHERE attack = ?)", attack)
    code, said = _verify_cli(out)
    assert code == 1 and "figure asr: 99.0" in said and f"/ {attack}" in said


def test_edited_counts_fail_the_store(out, toy_plugins):
    attack = _not_recomputed_by_default(out, toy_plugins)
    _sql(out, "UPDATE cells SET info = json_set(info, '$.n_attacked', 12) WHERE attack = ?",
         attack)
    (check,) = [c for c in verify(out, toy_plugins) if c.labels[3] == attack]
    assert check.verdict == "inconsistent" and check.details[0].startswith(
        "info n_attacked: 12 stored")


def test_an_edited_spec_is_an_edit_not_a_key_that_differs(out, toy_plugins):
    _sql(out, "UPDATE cells SET spec = json_set(spec, '$.attack.params.eps', 0.5) "
              "WHERE attack = 'pgd'")
    checks = {c.labels[3]: c for c in verify(out, toy_plugins)}
    assert checks["pgd"].verdict == "edited"
    assert "the spec was edited" in checks["pgd"].details[0]
    code, said = _verify_cli(out)
    assert code == 1 and "1 edited" in said


def test_an_edited_config_is_an_edit_not_a_key_that_differs(out, toy_plugins):
    _sql(out, "UPDATE runs SET config_text = replace(config_text, 'steps = 3', 'steps = 4')")
    checks = {c.labels[3]: c for c in verify(out, toy_plugins)}
    assert checks["pgd"].verdict == "edited"
    assert any("params" in d for d in checks["pgd"].details)
    code, said = _verify_cli(out)
    assert code == 1 and "1 edited" in said


@pytest.mark.parametrize("rtol", ["inf", "nan", "-1"])
def test_rtol_must_be_a_finite_number_not_below_zero(out, rtol):
    code, _ = _verify_cli(out, "--rtol", rtol)
    assert code == 2


def _record(samples: list[SampleRecord], names: tuple[str, ...] = ()) -> CellRecord:
    """A finished cell of this harness whose figures the runner's function derived."""
    refs = {kind: ComponentRef(kind, kind, kind, "1", {}, "test") for kind in CELL_KINDS}
    spec = CellSpec(**refs, run=CellRun(0, len(samples), 8, 0, "none", names),
                    threat="white-box", threat_model=ThreatModel("unbounded"),
                    musicbench=harness_version())
    info = CellInfo()
    metrics = _cell_metrics(samples, list(names), 1.0, False, info)
    return CellRecord(spec, "ok", "", "", 1.0, attack_seconds=1.0, info=info,
                      samples=samples, metrics=metrics)


def test_nan_intervals_round_trip_and_an_untouched_store_verifies(tmp_path):
    # an SNR of inf on every fooled clip: its mean is inf, its bootstrap interval NaN
    samples = [SampleRecord(f"c{i}", i, 0, 0, True, True, 1, True, 5, 1, {"snr": math.inf})
               for i in range(3)]
    record = _record(samples, ("snr",))
    assert record.metrics["snr"].value == math.inf
    assert all(math.isnan(x) for x in record.metrics["snr"].ci)
    record.metrics["empty"] = MetricValue(math.nan, (math.nan, math.nan))
    record.metrics["plain"] = MetricValue(0.5)
    store = Store(tmp_path / "results.sqlite")
    store.write_cell(record)
    (back,) = store.cells()
    store.close()
    assert all(math.isnan(x) for x in back.metrics["snr"].ci)
    assert math.isnan(back.metrics["empty"].value) and all(
        math.isnan(x) for x in back.metrics["empty"].ci)
    assert back.metrics["plain"].ci is None
    assert record_differences(back, record) == []
    assert rederive_differences(back) == []


def test_a_survivor_cascades_cell_rederives_and_an_edit_is_named():
    # clip 1 was fooled by an earlier attack of the cascade: clean-correct, not attacked
    samples = [SampleRecord("c0", 0, 0, 0, True, True, 1, True, 5, 1, {"snr": 20.0}),
               SampleRecord("c1", 1, 0, 0, True, False, 0, False, 0, 0, {}, work_id="w"),
               SampleRecord("c2", 2, 0, 0, True, True, 0, False, 5, 1, {"snr": 30.0}),
               SampleRecord("c3", 3, 0, 1, False, False, 1, False, 0, 0)]
    record = _record(samples, ("snr",))
    assert (record.info.n, record.info.n_attacked, record.info.n_success) == (4, 2, 1)
    assert rederive_differences(record) == []
    record.metrics["robust_accuracy"] = MetricValue(0.5, record.metrics["robust_accuracy"].ci)
    record.metrics["snr"].value = 25.0
    found = rederive_differences(record)
    assert [d.split(":")[0] for d in found] == ["figure robust_accuracy", "figure snr"]
