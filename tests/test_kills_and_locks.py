"""Kills, locks and concurrent runs (docs/reliability.md): render workers die with their
parent, a second run on one output folder refuses, a cache entry is built once however many
processes want it, outputs are replaced atomically, failed plugins are recorded, and everything
written follows the umask."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TESTS, cli, make_site
from test_plugins import TOY_CONFIG
from musicbench import files
from musicbench.checkpoints import save_module
from musicbench.datacache import write_clip_cache

# -- item 4: render workers die with their parent ------------------------------------------------


def _proc_children(pid: int) -> dict[int, str]:
    """``{child pid: command line}`` of the live children of ``pid`` (Linux /proc)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat_text = Path(f"/proc/{entry}/stat").read_text()
            fields = stat_text[stat_text.rindex(")") + 2:].split()
            if int(fields[1]) != pid or fields[0] == "Z":
                continue
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        out[int(entry)] = cmd
    return out


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that is not coming counts as dead)."""
    try:
        stat_text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_text[stat_text.rindex(")") + 2:].split()[0] not in ("Z", "X")


BUILD_SCRIPT = """
import sys
if __name__ == "__main__":  # spawned workers re-import this file
    from pathlib import Path
    import torch
    from musicbench.interfaces import Context
    from musicbench_plugins.datasets.m21_styles import M21Styles, Params
    ds = M21Styles(Params(works_per_class=3, clips_per_work=1, clip_seconds=2.0))
    ds.workers = 2
    ds.prepare(Context(cache_dir=Path(sys.argv[1]), device=torch.device("cpu")))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_during_a_dataset_build_leaves_no_worker_behind(tmp_path):
    script = tmp_path / "build.py"
    script.write_text(BUILD_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            children = _proc_children(proc.pid)
            if sum("spawn_main" in c for c in children.values()) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the build ended before its workers were seen"
        assert sum("spawn_main" in c for c in children.values()) >= 2, children
        children = _proc_children(proc.pid)  # the resource tracker too, by now
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and any(_alive(p) for p in children):
            time.sleep(0.1)
        left = {p: c for p, c in children.items() if _alive(p)}
        assert not left, f"outlived their killed parent: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in children:  # do not leave a failed test's orphans running
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_worker_whose_parent_is_gone_before_it_starts_exits(tmp_path):
    """The initializer's check for the race the death signal cannot cover: the parent died
    between spawning the worker and the worker arming its death signal (here: the worker is
    told of a parent it does not have)."""
    from musicbench_plugins.datasets import m21_render

    code = ("import os, sys\n"
            "from musicbench_plugins.datasets import m21_render\n"
            "m21_render._worker_init(os.getppid() + 1 if os.getppid() != 1 else 2)\n"
            "print('still here')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert "still here" not in result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert callable(getattr(m21_render, "_worker_init", None))


# -- item 5: one run per output folder; one build per cache entry -------------------------------

SLOW_RUN_CONFIG = TOY_CONFIG.replace('name = "fgsm"\neps = 0.01', """name = "slow-pgd"
eps = 0.003
steps = 2
sleep = 3.0""")  # 8 clips in 2 batches: 6 s of attack
assert "slow-pgd" in SLOW_RUN_CONFIG


def _runs(db: Path) -> int:
    try:
        with sqlite3.connect(db) as c:
            return c.execute("SELECT count(*) FROM runs").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_a_second_run_on_the_same_out_refuses_while_the_first_runs(tmp_path, toy_site):
    config = tmp_path / "run.toml"
    go = tmp_path / "go"  # the first run's attack waits for it: however slow the second starts
    config.write_text(SLOW_RUN_CONFIG.replace("sleep = 3.0", f'sleep = 0.0\nuntil = "{go}"'))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(toy_site), str(TESTS)]),
               OMP_NUM_THREADS="1")
    first = subprocess.Popen(
        [sys.executable, "-c", "from musicbench.cli import main; main()", "run", str(config),
         "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    try:
        deadline = time.monotonic() + 120
        while _runs(out / "results.sqlite") < 1 and time.monotonic() < deadline \
                and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second started"
        second = cli("run", str(config), "--out", str(out), sites=(toy_site,))
        assert first.poll() is None, "the second run ended after the first: not a test"
        assert second.returncode == 2, second.stderr
        assert "another musicbench run" in second.stderr and f"pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        go.touch()
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert _runs(out / "results.sqlite") == 1  # the second never started a run

    # The lock died with its holder: a rerun now resumes (nothing left to do).
    again = cli("run", str(config), "--out", str(out), sites=(toy_site,))
    assert again.returncode == 0, again.stderr
    assert "1 cells planned, 1 already done" in again.stderr


BUILD_ONCE_SCRIPT = """
import json, os, sys, time
from pathlib import Path
import numpy as np
from musicbench.datacache import load_or_build, write_clip_cache

path, log = Path(sys.argv[1]), Path(sys.argv[2])

def build(p):
    with open(log, "a") as f:
        f.write(f"build {os.getpid()}\\n")
    time.sleep(3)
    write_clip_cache(p, np.arange(8, dtype=np.int16).reshape(2, 4), {"who": os.getpid()})

def load(p):
    json.loads((p / "index.json").read_text())

load_or_build(path, load, build, what="toy dataset")
print("loaded", json.loads((path / "index.json").read_text())["who"])
"""


def test_two_processes_wanting_one_cache_entry_build_it_once(tmp_path):
    script = tmp_path / "build_once.py"
    script.write_text(BUILD_ONCE_SCRIPT)
    entry, log = tmp_path / "home" / "datasets" / "toy-0123", tmp_path / "builds.log"
    procs = [subprocess.Popen([sys.executable, str(script), str(entry), str(log)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out.startswith("loaded")
    builds = log.read_text().splitlines()
    assert len(builds) == 1, builds
    builder = builds[0].split()[1]
    assert all(out.split()[1] == builder for out, _ in outs)  # both load the one build
    waited = [err for _, err in outs if "waiting" in err]
    assert len(waited) == 1 and "toy dataset" in waited[0] and f"pid {builder}" in waited[0]


@dataclass(frozen=True)
class _ToyTrainedParams:
    train_dataset: str = "toy-tones"
    train_dataset_params: dict = field(default_factory=dict)
    seed: int = 0


def test_weights_trained_on_first_use_are_trained_once_by_concurrent_loaders(tmp_path,
                                                                            toy_plugins):
    from musicbench.training import TrainedModel
    from musicbench.workspace import Workspace

    fits = []

    class Slow(TrainedModel):
        Params = _ToyTrainedParams
        checkpoint_prefix = "slow-toy"
        version = "1"
        sample_rate = 16_000
        task = "classification"
        labels = ("class-0", "class-1", "class-2")

        def make_net(self, ds):  # noqa: ANN001
            return torch.nn.Linear(2, 3)

        def fit(self, ctx):  # noqa: ANN001
            fits.append(threading.get_ident())
            ds = self.training_dataset(ctx)
            net = self.build_net(ds, ctx.device)
            time.sleep(1.0)
            return self.save_trained(ctx, ds, net, {"epochs": 0})

        def forward(self, audio):  # noqa: ANN001
            raise NotImplementedError

    ws = Workspace(toy_plugins, cache_dir=tmp_path / "home", device=torch.device("cpu"))
    ws.ctx.dataset("toy-tones", {})  # prepared once, before the threads
    loaded, errors = [], []

    def load() -> None:
        try:
            model = Slow()
            model.load(ws.ctx)
            loaded.append(model.checkpoint)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(fits) == 1, "both loaders trained"
    assert len(loaded) == 2 and loaded[0] == loaded[1] and loaded[0].exists()


# -- item 6: outputs replaced atomically ---------------------------------------------------------


def test_a_failed_leaderboard_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    from musicbench import leaderboard

    target = tmp_path / "leaderboard.md"
    target.write_text("# the old leaderboard\n")
    # Fails after the file was opened for writing: the old code truncated it to 0 bytes first.
    monkeypatch.setattr(leaderboard, "render", lambda store, fmt="md": "# new\n\ud800 half")
    with pytest.raises(UnicodeEncodeError):
        leaderboard.write_leaderboard(None, target)  # type: ignore[arg-type]
    assert target.read_text() == "# the old leaderboard\n"
    assert os.listdir(tmp_path) == ["leaderboard.md"]  # no temp file left


def test_atomic_write_text_never_shows_half_a_file(tmp_path, monkeypatch):
    target = tmp_path / "board.csv"
    target.write_text("old\n")

    def crash(*args, **kwargs):  # noqa: ANN002, ANN003
        raise KeyboardInterrupt  # a signal between the write and the rename

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write_text(target, "new\n" * 1000)
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["board.csv"]
    monkeypatch.undo()
    files.atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"


def test_cli_leaderboard_output_is_written_atomically(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from musicbench import leaderboard
    from musicbench.cli import app
    from musicbench.store import Store

    target = tmp_path / "published.md"
    target.write_text("published\n")
    monkeypatch.setattr(leaderboard, "build", lambda store: None)
    monkeypatch.setitem(leaderboard.RENDERERS, "md", lambda board: "new\n\ud800 half")
    Store(tmp_path / "run" / "results.sqlite").close()  # an empty store
    result = CliRunner().invoke(app, ["leaderboard", str(tmp_path / "run"), "-o", str(target),
                                      "--allow-dirty"])
    assert result.exit_code != 0
    assert target.read_text() == "published\n"
    assert sorted(os.listdir(tmp_path)) == ["published.md", "run"]


# -- item 7: failed plugins are said and recorded; caches follow the umask ----------------------

def test_run_says_which_plugin_failed_and_records_every_plugin(tmp_path, toy_site):
    site = make_site(tmp_path / "broken", "broken-plugin", {"broken": "broken_mod"},
                     {"broken_mod.py": "raise ImportError('this plugin cannot import')\n"})
    config = tmp_path / "run.toml"
    config.write_text(TOY_CONFIG)
    out = tmp_path / "out"
    result = cli("run", str(config), "--out", str(out), sites=(site, toy_site))
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if "broken" in line]
    assert len(said) == 1, result.stderr
    assert "failed to load" in said[0] and "this plugin cannot import" in said[0]

    with sqlite3.connect(out / "results.sqlite") as c:
        env = json.loads(c.execute("SELECT environment FROM runs").fetchone()[0])
    plugins = env["plugins"]
    assert plugins["broken"]["status"] == "failed"
    assert "this plugin cannot import" in plugins["broken"]["error"]
    assert plugins["broken"]["provider"] == "broken-plugin 0.0.1"
    assert plugins["toy"] == {"provider": "toy-plugins 0.0.1", "status": "loaded"}
    assert plugins["builtin-attacks"]["status"] == "loaded"
    assert plugins["builtin-attacks"]["provider"].startswith("musicbench ")
    board = (out / "leaderboard.md").read_text()
    assert "plugin `broken` (broken-plugin 0.0.1) failed to load" in board


@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(old)


@pytest.mark.parametrize("mask", [0o002, 0o022, 0o077])
def test_caches_and_outputs_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    dirs, plain = 0o777 & ~mask, 0o666 & ~mask
    data = tmp_path / "datasets" / "toy-abc"
    write_clip_cache(data, np.zeros((2, 3), np.int16), {"n": 2})
    assert stat.S_IMODE(data.stat().st_mode) == dirs
    for f in data.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == plain, f
    for folder in ("models", "inpainters", "defenses"):  # all weights go through save_module
        w = tmp_path / folder / "w.safetensors"
        save_module(torch.nn.Linear(2, 2), w, {})
        assert stat.S_IMODE(w.stat().st_mode) == plain
        assert stat.S_IMODE(w.parent.stat().st_mode) == dirs
    board = files.atomic_write_text(tmp_path / "out" / "leaderboard.md", "x")
    assert stat.S_IMODE(board.stat().st_mode) == plain
    with files.file_lock(tmp_path / "datasets" / ".toy-abc.lock"):
        pass
    assert stat.S_IMODE((tmp_path / "datasets" / ".toy-abc.lock").stat().st_mode) == plain


def test_file_lock_excludes_a_second_holder_and_names_the_first(tmp_path):
    lock = tmp_path / "x.lock"
    with files.file_lock(lock, what="a test"):
        with pytest.raises(files.LockBusy) as busy:
            with files.file_lock(lock, blocking=False):
                pass
        assert busy.value.holder["pid"] == str(os.getpid())
        assert busy.value.holder["what"] == "a test"
    with files.file_lock(lock, blocking=False):  # released with its holder
        pass


def test_a_waiter_arriving_before_the_holder_note_still_names_the_holder(tmp_path):
    """The holder writes its note just after taking the lock; a waiter that fails the lock in
    between must wait for the note rather than report "another process" (the CI flake)."""
    lock = tmp_path / "x.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    note = threading.Timer(0.2, lambda: os.pwrite(fd, b"pid=4242\nwhat=a slow writer\n", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held, no note yet
        note.start()
        with pytest.raises(files.LockBusy) as busy:
            with files.file_lock(lock, blocking=False):
                pass
        assert busy.value.holder == {"pid": "4242", "what": "a slow writer"}
    finally:
        note.cancel()
        if note.is_alive():
            note.join()
        os.close(fd)


def test_a_released_lock_leaves_no_note_naming_a_finished_holder(tmp_path):
    lock = tmp_path / "x.lock"
    with files.file_lock(lock, what="gone"):
        assert files.read_holder(lock)["what"] == "gone"
    assert files.read_holder(lock) == {}
