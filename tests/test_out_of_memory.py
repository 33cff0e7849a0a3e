"""Out-of-memory backoff: a batch that does not fit runs in halves, the cell is flagged, and a
deterministic attack gives the records a run at the smaller batch size gives."""

from __future__ import annotations

from conftest import run_toy_config
from musicbench.store import Store

CONFIG = """
[run]
fad_encoder = ""
name = "oom"
samples = 7
batch_size = {batch}
device = "cpu"

[[datasets]]
name = "toy-tones"

[[models]]
name = "toy-model"

[[defenses]]
name = "none"

[[attacks]]
name = "memory-bound-pgd"
label = "pgd"
eps = 0.01
steps = 3
random_start = false
max_batch = {max_batch}
"""


def _cell(folder, batch: int, max_batch: int):
    folder.mkdir(parents=True, exist_ok=True)
    _, out = run_toy_config(folder, CONFIG.format(batch=batch, max_batch=max_batch))
    store = Store(out / "results.sqlite", readonly=True)
    try:
        (record,) = store.cells()
    finally:
        store.close()
    return record


def _rows(record):
    return [(s.sample_id, s.position, s.attacked, s.success, s.adv_pred, s.steps,
             {k: round(v, 6) for k, v in s.metrics.items()}) for s in record.samples]


def test_a_batch_that_does_not_fit_runs_in_halves_and_is_flagged(tmp_path):
    halved = _cell(tmp_path / "a", batch=7, max_batch=2)  # 7 -> 4+3 -> 2+2+2+1
    assert halved.status == "ok", halved.error
    fitting = _cell(tmp_path / "b", batch=2, max_batch=2)
    assert fitting.status == "ok"
    assert [s.position for s in halved.samples] == list(range(7))
    assert _rows(halved) == _rows(fitting)  # PGD without random start is deterministic
    flags = [f for f in halved.info.flags if f.startswith("out of memory")]
    assert flags == ["out of memory at a batch of 7 clips: that batch ran in halves (halved "
                     "until it fit), so its random draws differ from a run at the planned "
                     "batch size"]
    assert not any(f.startswith("out of memory") for f in fitting.info.flags)


def test_out_of_memory_on_one_clip_fails_the_cell(tmp_path):
    record = _cell(tmp_path, batch=3, max_batch=0)
    assert record.status == "failed"
    assert "OutOfMemoryError" in record.error or "do not fit" in record.error
