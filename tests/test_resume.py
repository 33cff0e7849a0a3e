"""A run killed with SIGKILL part-way resumes to the leaderboard of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

from conftest import TESTS, cli

RESUME_CONFIG = """
[run]
fad_encoder = ""
name = "resume"
samples = 6
batch_size = 3
device = "cpu"

[[datasets]]
name = "toy-tones"

[[models]]
name = "toy-model"

[[models]]
name = "toy-model"
label = "toy-model-seed1"
seed = 1

[[defenses]]
name = "none"

[[attacks]]
name = "slow-pgd"
eps = 0.003
steps = 5
sleep = 0.6

[[attacks]]
name = "fgsm"
eps = 0.004
"""


def _ok_cells(db) -> int:
    try:
        with sqlite3.connect(db) as c:
            return c.execute("SELECT count(*) FROM cells WHERE status='ok'").fetchone()[0]
    except sqlite3.Error:
        return 0


def _comparable(board_json: str) -> list[dict]:
    rows = json.loads(board_json)
    for r in rows:
        # Wall time, and the note on the machine's load beside it, are what may differ.
        r.pop("seconds_per_clip")
        r["flags"] = [f for f in r["flags"] if not f.startswith("timed on a loaded machine")]
    return rows


def test_kill_9_then_rerun_finishes_only_missing_cells(tmp_path, toy_site):
    config = tmp_path / "run.toml"
    config.write_text(RESUME_CONFIG)
    killed, full = tmp_path / "killed", tmp_path / "full"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(toy_site), str(TESTS)]))
    proc = subprocess.Popen(
        [sys.executable, "-c", "from musicbench.cli import main; main()", "run", str(config),
         "--out", str(killed)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    db = killed / "results.sqlite"
    deadline = time.monotonic() + 120
    while _ok_cells(db) < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _ok_cells(db)
    assert 1 <= done_before < 4, f"kill came too late or too early: {done_before} cells"

    resumed = cli("run", str(config), "--out", str(killed), sites=(toy_site,))
    assert resumed.returncode == 0, resumed.stderr
    assert f"4 cells planned, {done_before} already done, 0 failed" in resumed.stderr

    uninterrupted = cli("run", str(config), "--out", str(full), sites=(toy_site,))
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    a = cli("leaderboard", str(killed), "--format", "json", sites=(toy_site,))
    b = cli("leaderboard", str(full), "--format", "json", sites=(toy_site,))
    assert _comparable(a.stdout) == _comparable(b.stdout)
    assert len(json.loads(a.stdout)) == 4

    # Rerunning a finished run does no work at all.
    again = cli("run", str(config), "--out", str(full), sites=(toy_site,))
    assert "4 cells planned, 4 already done" in again.stderr
