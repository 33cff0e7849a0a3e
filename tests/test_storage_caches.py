"""Dataset caches after a killed build (issue 26): ``kill -9`` during ``atomic_folder`` leaves
its hidden ``.NAME.tmp-XXXX`` folder beside the entry; the next build of NAME, holding the
build lock (so nobody else is building NAME), removes it, and touches nothing else."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from musicbench.datacache import load_or_build, write_clip_cache


def _build(path: Path) -> None:
    write_clip_cache(path, np.arange(6, dtype=np.int16).reshape(2, 3), {"format": 1})


def _load(path: Path) -> None:
    assert json.loads((path / "index.json").read_text()) == {"format": 1}


def _leftover(folder: Path, name: str) -> Path:
    """What a build killed while writing leaves: a hidden temp folder with half a cache."""
    stale = folder / name
    stale.mkdir(parents=True)
    (stale / "clips.npy").write_bytes(b"\x93NUMPY half")
    return stale


def test_a_build_removes_what_killed_builds_of_its_entry_left(tmp_path):
    datasets = tmp_path / "datasets"
    entry = datasets / "toy-0123"
    stale = [_leftover(datasets, ".toy-0123.tmp-abc123"), _leftover(datasets, ".toy-0123.tmp-x")]
    others = [_leftover(datasets, ".toy-01234.tmp-abc"),  # another entry's (a longer name)
              _leftover(datasets, ".toy-0123.lockless"),  # not a temp folder
              _leftover(datasets, ".other.tmp-abc")]
    load_or_build(entry, _load, _build, what="toy")
    _load(entry)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in others)
    hidden = sorted(p.name for p in datasets.iterdir() if p.name.startswith(".toy-0123."))
    assert hidden == [".toy-0123.lock", ".toy-0123.lockless"]


def test_a_cache_that_loads_leaves_the_temp_folders_alone(tmp_path):
    """Only a build, which holds the lock, may remove them: a reader does not know whether
    another process is building the entry right now."""
    datasets = tmp_path / "datasets"
    entry = datasets / "toy-0123"
    _build(entry)
    live = _leftover(datasets, ".toy-0123.tmp-live")
    load_or_build(entry, _load, _build, what="toy")
    assert live.exists()


KILLED_BUILD = """
import sys, time
from pathlib import Path
import numpy as np
from musicbench.datacache import load_or_build, atomic_folder

def build(path):
    with atomic_folder(path) as tmp:
        np.save(tmp / "clips.npy", np.zeros(4, np.int16))
        print("writing", flush=True)
        time.sleep(600)  # killed here

load_or_build(Path(sys.argv[1]), lambda p: None, build, what="toy")
"""


def test_a_build_killed_by_sigkill_leaves_a_temp_folder_the_next_build_removes(tmp_path):
    entry = tmp_path / "datasets" / "toy-0123"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(entry)], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (stale,) = entry.parent.glob(".toy-0123.tmp-*")
    assert (stale / "clips.npy").exists()
    load_or_build(entry, _load, _build, what="toy")  # the lock died with the killed build
    _load(entry)
    assert not stale.exists() and list(entry.parent.glob(".toy-0123.tmp-*")) == []
