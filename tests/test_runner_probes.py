"""The vanishing-gradient probe: on the undefended row the attack's gradient and the
undefended model's are one computation, shared (same figures, half the backward passes); a
row with a defense measures both."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_toy_config
from test_planning import BASE

from musicbench import runner
from musicbench.leaderboard import planned_run

CONFIG = BASE.format(run="sanity = false", datasets="")


@pytest.mark.parametrize("defense, per_batch", [("none", 1), ("toy-noise", 2)])
def test_the_undefended_rows_probes_are_computed_once(tmp_path: Path, monkeypatch, defense,
                                                      per_batch):
    calls: list[int] = []
    measure = runner._input_gradient_norms

    def counted(batch, probe, device):  # noqa: ANN001
        calls.append(len(batch.examples))
        return measure(batch, probe, device)

    monkeypatch.setattr(runner, "_input_gradient_norms", counted)
    config = CONFIG.replace('[[defenses]]\nname = "none"', f'[[defenses]]\nname = "{defense}"')
    out = run_toy_config(tmp_path, config)[1]
    records, _ = planned_run(out)
    assert len(records) == 2 and all(r.status == "ok" for r in records)
    # 6 clips in batches of 3: two batches a cell, two white-box cells
    assert len(calls) == 2 * 2 * per_batch
    for r in records:
        assert r.info.input_gradient_median is not None
        if defense == "none":
            assert r.info.input_gradient_median == r.info.input_gradient_median_undefended
