"""Leaderboard figures and flags: threat models are never pooled (worst case, black-box vs
white-box), intervals are exact, load and defense-cost flags, ε monotonicity."""

from __future__ import annotations

from musicbench.cells import CellInfo, CellRun, CellSpec, ComponentRef
from musicbench.interfaces import DEFAULT_THREAT_MODEL, Bound, ThreatModel
from musicbench.leaderboard import LOADED, _add_flags, _summaries, cell_row, render_markdown
from musicbench.metrics import classification_summary
from musicbench.runner import load_average
from musicbench.store import CellRecord, MetricValue, SampleRecord

LINF = DEFAULT_THREAT_MODEL
UNBOUNDED = ThreatModel("unbounded")


def _ref(kind: str, name: str, label: str | None = None, **params) -> ComponentRef:
    return ComponentRef(kind, name, label or name, "1", params, "tests")


def record(attack: str, threat: str, survivors: list[bool], *, tm: ThreatModel = LINF,
           defense: str = "none", clean: list[bool] | None = None, name: str | None = None,
           params: dict | None = None, **info) -> CellRecord:
    """A finished cell on 8 clips: ``survivors[i]`` = clip i is right after the attack."""
    n = len(survivors)
    clean = clean if clean is not None else [True] * n
    spec = CellSpec(_ref("dataset", "d"), _ref("model", "m"), _ref("defense", defense),
                    _ref("attack", name or attack, attack, **(params or {})),
                    CellRun(0, n, 8, 0, "", ("lsd", "snr")), threat, tm, "0")
    samples = [SampleRecord(f"c{i}", i, 0, 0, clean[i], clean[i], 1 - int(s), clean[i] and not s,
                            10, 1) for i, s in enumerate(survivors)]
    summary = classification_summary([s.clean_correct for s in samples],
                                     [s.success for s in samples])
    metrics = {k: MetricValue(summary[k], summary.get(f"{k}_ci"))
               for k in ("clean_accuracy", "asr", "robust_accuracy")}
    cell_info = CellInfo(n=n, n_attacked=summary["n_attacked"], n_success=summary["n_success"],
                         **info)
    return CellRecord(spec, "ok", "", "", 1.0, info=cell_info, samples=samples, metrics=metrics)


def _rows(records):
    rows = [cell_row(r) for r in records]
    _add_flags(records, rows)
    return rows


def test_black_box_is_compared_with_white_box_of_its_own_threat_model_only():
    records = [
        record("pgd", "white-box", [True] * 4 + [False] * 4),          # ASR 50%
        record("nes", "black-box", [True] * 2 + [False] * 6),          # 75% > pgd: flagged
        record("zoo", "black-box", [True] * 6 + [False] * 2),          # 25%
        record("cw", "white-box", [False] * 8, tm=UNBOUNDED),          # 100%, other threat
        record("maia-bb", "black-box", [True] + [False] * 7, tm=ThreatModel.region(0.5)),
    ]
    rows = _rows(records)
    flagged = [bool(r["flags"]) for r in rows]
    # nes is stronger than pgd at the same bound; maia-bb has no white-box attack of its
    # region budget, and the unbounded C&W is never its yardstick
    assert flagged == [False, True, False, False, False]
    assert "pgd" in rows[1]["flags"][0]


def test_the_black_box_flag_is_paired_on_shared_clips_and_holm_adjusted():
    """Only clips both attacks attacked count; the flag says how many only each fooled and
    whether that is beyond chance over all the board's black-box vs white-box comparisons."""
    n = 40
    clean = [True] * 36 + [False] * 4  # 4 clips wrong clean: attacked by neither
    # pgd fools clips 0-9; nes fools 0-9 and 10-21 (12 more): beyond chance (p ~ 5e-4)
    pgd = record("pgd", "white-box", [False] * 10 + [True] * 30, clean=clean)
    nes = record("nes", "black-box", [False] * 22 + [True] * 18, clean=clean)
    # square fools 2-11: 2 that pgd does not, pgd 0-1 that it does not: same ASR, not flagged;
    # zoo fools 0-10: one more than pgd, flagged but within chance
    square = record("square", "black-box", [True] * 2 + [False] * 10 + [True] * 28,
                    clean=clean)
    zoo = record("zoo", "black-box", [False] * 11 + [True] * 29, clean=clean)
    rows = _rows([pgd, nes, square, zoo])
    assert rows[0]["flags"] == [] and rows[2]["flags"] == []
    (nes_flag,) = rows[1]["flags"]
    assert ("on the 36 clips both attacked it fools 12 that pgd does not, pgd 0 that it does "
            "not, exact McNemar p 0.00049, Holm p 0.0015 over the board's 3 black-box vs "
            "white-box comparison(s): beyond chance") in nes_flag
    (zoo_flag,) = rows[3]["flags"]
    assert "fools 1 that pgd does not, pgd 0 that it does not" in zoo_flag
    assert zoo_flag.endswith("within chance): gradient masking?")


def test_worst_case_is_per_threat_model_and_an_unbounded_attack_has_none():
    records = [
        record("pgd", "white-box", [True, True, True, False, True, True, False, True]),
        record("nes", "black-box", [True, False, True, True, True, True, False, True]),
        record("cw", "white-box", [False] * 8, tm=UNBOUNDED),
    ]
    rows = [cell_row(r) for r in records]
    summary, tms, attacks = _summaries(records, rows)
    # an unbounded attack can fool every clip: no robust accuracy, no worst case
    assert tms == [LINF] and rows[2]["robust_accuracy"] is None
    worst = {w.threat_model: w for w in summary[0].worst_case}
    assert (worst[LINF].survivors, worst[LINF].n) == (5, 8)  # clips surviving pgd AND nes
    assert worst[LINF].attacks == ["pgd", "nes"] and UNBOUNDED not in worst
    low, high = worst[LINF].ci
    assert 0.2 < low < 0.3 and 0.9 < high < 0.95  # 5/8 exact (Clopper–Pearson)


def test_intervals_of_proportions_are_exact_and_never_collapse():
    perfect = record("pgd", "white-box", [False] * 8)  # ASR 8/8
    row = cell_row(perfect)
    assert row["asr"] == 1.0 and row["asr_ci"][1] == 1.0 and 0.6 < row["asr_ci"][0] < 0.64
    assert row["n_attacked"] == 8 and row["n_success"] == 8


def test_the_headline_threat_model_comes_first_and_every_column_says_its_bound():
    records = [record("cw", "white-box", [False] * 8, tm=UNBOUNDED),
               record("pgd-l2", "white-box", [True] * 8,
                      tm=ThreatModel.of_bound(Bound("l2", 0.5))),
               record("pgd", "white-box", [True] * 8)]
    summary, tms, attacks = _summaries(records, [cell_row(r) for r in records])
    assert tms[0] == DEFAULT_THREAT_MODEL and tms[-1] == ThreatModel.of_bound(Bound("l2", 0.5))
    assert [a for a, _ in attacks] == ["pgd", "pgd-l2"]  # the unbounded one has its section


def test_robust_accuracy_rising_with_eps_is_flagged():
    small = record("pgd, 0.002", "white-box", [True] * 4 + [False] * 4, name="pgd",
                   params={"eps": 0.002, "steps": 10})
    big = record("pgd, 0.01", "white-box", [True] * 6 + [False] * 2, name="pgd",
                 params={"eps": 0.01, "steps": 10},
                 tm=ThreatModel.of_bound(Bound("linf", 0.01)))
    other = record("pgd, 0.01, 50 steps", "white-box", [True] * 7 + [False], name="pgd",
                   params={"eps": 0.01, "steps": 50},
                   tm=ThreatModel.of_bound(Bound("linf", 0.01)))
    rows = _rows([small, big, other])
    (flag,) = rows[1]["flags"]
    # clips 4 and 5 survive only the larger ε: one ε step on the board, p = 0.5
    assert flag == ("robust accuracy rises with ε (pgd, 0.002: 50.0% → 75.0%; 2 clip(s) kept "
                    "only at the larger ε, 0 only at the smaller, Holm p 0.5 over the board's "
                    "1 ε step(s): within chance)")
    assert rows[2]["flags"] == []  # other parameters differ: not the same attack at two ε


def test_cells_timed_under_load_get_a_header_note_not_a_flag():
    from musicbench.leaderboard import _header, _header_lines

    busy = record("pgd", "white-box", [True] * 8, load_average=[1.0, 2 * LOADED * 2], cpus=2)
    quiet = record("cw", "white-box", [True] * 8, load_average=[1.9, 2.1], cpus=2)
    old = record("fgsm", "white-box", [True] * 8)  # no load recorded
    rows = _rows([busy, quiet, old])
    assert all(not r["flags"] for r in rows)
    run = {"environment": {}, "settings": {"device": "cpu"}, "finished": "", "started": "",
           "argv": [],
           "config_source": "c"}
    header = _header([run], [busy, quiet, old], 3)
    assert header["loaded"] == {"d / m / none / pgd": 6.0}
    assert ("- timed on a loaded machine (1-minute load average up to 6.0 on 2 CPUs): 1 of 3 "
            "cells (d / m / none / pgd); their s/clip is inflated") in _header_lines(header)


def test_a_defense_that_costs_clean_accuracy_is_flagged():
    """Against the undefended model's clean accuracy on the same clips, which the runner
    measures in every cell: no defense is recognised by its name."""
    base = record("pgd", "white-box", [True] * 8, clean_accuracy_undefended=1.0)
    costly = record("pgd", "white-box", [True] * 8, defense="lowpass",
                    clean=[True] * 6 + [False] * 2, clean_accuracy_undefended=1.0)
    cheap = record("pgd", "white-box", [True] * 8, defense="none",
                   clean=[True] * 7 + [False], clean_accuracy_undefended=0.9)  # 2.5 points
    rows = _rows([base, costly, cheap])
    assert rows[0]["flags"] == [] and rows[2]["flags"] == []
    assert rows[1]["flags"] == ["defense costs 25.0 points of clean accuracy "
                                "(100.0% undefended)"]


def test_markdown_has_one_worst_case_column_per_threat_model():
    from musicbench.leaderboard import Leaderboard

    records = [record("pgd", "white-box", [True] * 8),
               record("cw", "white-box", [False] * 8, tm=UNBOUNDED)]
    rows = _rows(records)
    summary, tms, attacks = _summaries(records, rows)
    header = {"date": "", "musicbench": "0", "git_revision": "abc", "revisions": {"abc": 2},
              "torch": "2", "device": "cpu", "seed": 0, "config": "c", "planned": 2,
              "stored": 2, "dataset_fingerprints": {}, "samples": {}}
    text = render_markdown(Leaderboard(header, rows, summary, attacks, tms, {}, []))
    assert "| L∞ ε=0.002 ↑ |\n" in text and "unbounded ↑" not in text
    assert "| 100.0 [63.1, 100.0] |\n" in text  # 8/8 survive: exact, not [100, 100]
    assert "| d | m | none | cw | 8 | 8 | 100.0 [63.1, 100.0] | 0 |" in text


def test_load_average_is_read_where_the_os_has_one():
    import os

    value = load_average()
    if hasattr(os, "getloadavg"):
        assert isinstance(value, float) and value >= 0.0
    else:
        assert value is None


def test_a_failed_cell_makes_its_threat_models_worst_case_an_upper_bound():
    import dataclasses

    from musicbench.leaderboard import Leaderboard

    ok = record("pgd", "white-box", [True] * 4 + [False] * 4)
    failed = dataclasses.replace(record("apgd", "white-box", [True] * 8), status="failed",
                                 samples=[], metrics={}, error="RuntimeError: boom")
    rows = _rows([ok, failed])
    summary, tms, attacks = _summaries([ok, failed], rows)
    (worst,) = summary[0].worst_case
    assert not worst.complete and worst.survivors == 4
    header = {"date": "", "musicbench": "0", "git_revision": "abc", "revisions": {"abc": 2},
              "torch": "2", "device": "cpu", "seed": 0, "config": "c", "planned": 2,
              "stored": 2, "dataset_fingerprints": {}, "samples": {}}
    text = render_markdown(Leaderboard(header, rows, summary, attacks, tms, {}, []))
    assert "(a cell failed: upper bound)" in text and "**failed**: RuntimeError: boom" in text
