"""Flags the leaderboard adds to cells: black-box beating white-box, costly defenses, load."""

from __future__ import annotations

from musicbench.leaderboard import LOADED, _add_flags
from musicbench.runner import load_average
from musicbench.store import CellRecord


def _pair(attack: str, threat: str, asr: float, **info) -> tuple[CellRecord, dict]:
    record = CellRecord("k-" + attack, {}, "ok", "", "", 1.0, info={"threat": threat, **info})
    row = {"dataset": "d", "model": "m", "defense": "none", "attack": attack, "status": "ok",
           "asr": asr, "clean_accuracy": 0.8, "flags": []}
    return record, row


def test_black_box_above_every_white_box_is_flagged():
    cells = [_pair("pgd", "white-box", 0.5), _pair("nes", "black-box", 0.6),
             _pair("zoo", "black-box", 0.4)]
    records, rows = zip(*cells, strict=True)
    _add_flags(list(records), list(rows))
    assert [bool(r["flags"]) for r in rows] == [False, True, False]


def test_cells_timed_under_load_are_flagged_and_quiet_ones_are_not():
    busy = _pair("pgd", "white-box", 0.5, load_average=[1.0, 2 * LOADED * 2], cpus=2)
    quiet = _pair("cw", "white-box", 0.5, load_average=[1.9, 2.1], cpus=2)
    old = _pair("fgsm", "white-box", 0.5)  # stored before loads were recorded
    records, rows = zip(busy, quiet, old, strict=True)
    _add_flags(list(records), list(rows))
    assert rows[0]["flags"] == [("timed on a loaded machine (load average 6.0 on 2 CPUs): "
                                 "s/clip is inflated")]
    assert rows[1]["flags"] == [] and rows[2]["flags"] == []


def test_load_average_is_read_where_the_os_has_one():
    import os

    value = load_average()
    if hasattr(os, "getloadavg"):
        assert isinstance(value, float) and value >= 0.0
    else:
        assert value is None
