"""Every bad value of every option of every command is refused before any work (issue 26, item
4): exit code 2, a message on stderr, no traceback, nothing created.

The commands and their options are read from the typer app itself, so an option added later
is fuzzed without editing this file; a new *path* option must be given a role in
:data:`PATH_ROLES` (what it names decides which values are bad), and the test says so.
Commands run in-process (``CliRunner``) with the toy plugins, on a tiny stored run, in the
test's own temp folder (the working directory, so a default output folder would show).
"""

from __future__ import annotations

import os
import typing
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import typer.main
from conftest import run_toy_config
from test_plugins import TOY_CONFIG
from typer.testing import CliRunner

from musicbench.cli import app
from musicbench.errors import ConfigError

HUGE = "1" + "0" * 30
MISSING = "no-such-xyz"

# What each path argument or option names; its bad values follow from that.
PATH_ROLES: dict[tuple[str, str], str] = {
    ("run", "config"): "input file",
    ("run", "out"): "output folder",
    ("leaderboard", "out"): "store",
    ("leaderboard", "output"): "output file",
    ("leaderboard", "store_copy"): "output file",
    ("report", "out"): "store",
    ("report", "directory"): "output folder",
    ("merge", "into"): "output folder",
    ("merge", "sources"): "store",
    ("verify", "out"): "store",
    ("compare", "out"): "store",
    ("attack", "source"): "input file",
    ("attack", "output"): "output file",
    ("export-adv", "out"): "store",
    ("export-adv", "target"): "output folder",
}

# Values that look odd but mean something documented (a zero seed; 0 cells; --shard-clips -1
# is the config's "not set"), and options whose text is free (an attack label compared).
ACCEPTED: dict[tuple[str, str], set[str]] = {
    ("run", "shard_clips"): {"0", "-1"},
    ("verify", "cells"): {"0", HUGE},
    ("verify", "rtol"): {"0"},
    ("attack", "seed"): {"0"},
    ("run", "ray_address"): {MISSING},  # ignored (with a warning) by the local executor
}


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> Path:
    """A finished toy run (two cells: two attacks to compare) to point the commands that read a store at."""
    folder = tmp_path_factory.mktemp("stored")
    _, out = run_toy_config(folder, TOY_CONFIG + '\n[[attacks]]\nname = "pgd"\nsteps = 2\n')
    return out


def _bad_paths(role: str, w: Path) -> list[str]:
    common = ["", "/proc/musicbench-fuzz/x", str(w / "a-file" / "x")]
    if role == "input file":
        return common + [str(w / MISSING), str(w / "a-folder"), "/dev/zero", str(w / "fifo")]
    if role == "store":
        return common + [str(w / MISSING), str(w / "a-folder"), str(w / "a-file"),
                         str(w / "not-a-store.sqlite")]
    if role == "output file":
        return common + [str(w / "a-folder"), "/dev/null", str(w / "fifo")]
    if role == "output folder":
        return common + [str(w / "a-file"), "/dev/null", str(w / "fifo")]
    raise AssertionError(f"unknown role {role}")


def _bad_values(command: str, name: str, hint: typing.Any, w: Path) -> list[str]:
    """Bad values for parameter ``name`` of ``command`` whose annotation is ``hint``."""
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    listed = typing.get_origin(hint) is list
    base = typing.get_args(hint)[0] if listed else hint
    if base is bool:
        return []
    if base is Path:
        role = PATH_ROLES.get((command, name))
        assert role is not None, f"give {command} {name} a role in PATH_ROLES"
        values = _bad_paths(role, w)
    elif base is int:
        values = ["abc", "1.5", "-2", "0", HUGE]
    elif base is float:
        values = ["abc", "-1", "nan", "inf", HUGE + "e300"]
    elif base is str and name in ("param", "model_param", "defense_param", "dataset_param"):
        values = ["", "novalue", "=1", "no_such_key=1"]
    elif base is str and name == "only":
        values = ["", "model", "=toy-model", "bogus=x", f"model={MISSING}"]
    elif base is str:
        values = ["", MISSING]
    else:
        raise AssertionError(f"{command} {name}: no bad values for {hint}")
    return [v for v in values if v not in ACCEPTED.get((command, name), set())]


def _bases(stored: Path, w: Path) -> dict[str, list[str]]:
    """A valid invocation of each command, on toy-sized inputs (what the fuzz varies)."""
    return {
        "run": [str(w / "toy.toml"), "--out", str(w / "new-run")],
        "list": ["model"],
        "leaderboard": [str(stored)],
        "report": [str(stored), "-o", str(w / "new-report")],
        "merge": [str(w / "new-merge"), str(stored)],
        "verify": [str(stored), "--cells", "1"],
        "compare": [str(stored), "fgsm", "pgd", "--model", "toy-model"],
        "validate": ["toy-model", "--kind", "model"],
        "attack": [str(w / "tone.wav"), "--model", "toy-model", "--attack", "fgsm",
                   "-o", str(w / "adv.wav")],
        "train": ["toy-model"],
        "export-adv": [str(stored), str(w / "new-export")],
    }


def _cases(stored: Path, w: Path) -> list[tuple[str, list[str]]]:
    bases = _bases(stored, w)
    group = typer.main.get_command(app)
    cases = []
    for command, cmd in group.commands.items():
        assert command in bases, f"add a toy-sized valid invocation of `{command}` to _bases"
        hints = typing.get_type_hints(cmd.callback)
        base = bases[command]
        arguments = [p for p in cmd.params if p.param_type_name == "argument"]
        for param in cmd.params:
            for value in _bad_values(command, param.name, hints[param.name], w):
                if param.param_type_name == "argument":
                    # arguments come first in the bases, in order
                    args = list(base)
                    args[arguments.index(param)] = value
                else:
                    args = _without_option(base, param.opts) + [param.opts[0], value]
                cases.append((command, args))
    return cases


def _without_option(args: list[str], opts: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in opts:
            skip = True
        else:
            out.append(a)
    return out


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """What is in ``folder``: every path's size and modification time."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for n in dirs + files:
            p = Path(root) / n
            st = p.lstat()
            out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def _store_files(folder: Path) -> dict[str, tuple[int, int]]:
    """:func:`_tree` less SQLite's shared-memory and WAL files, which any reader may leave."""
    return {p: v for p, v in _tree(folder).items() if not p.endswith(("-shm", "-wal"))}


def _workspace(w: Path) -> None:
    w.mkdir()
    (w / "toy.toml").write_text(TOY_CONFIG)
    (w / "a-folder").mkdir()
    (w / "a-file").write_text("not audio, not a store\n")
    (w / "not-a-store.sqlite").write_text("not a store\n")
    os.mkfifo(w / "fifo")
    t = np.arange(16_000) / 16_000
    sf.write(w / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16_000)


def test_every_bad_value_of_every_option_exits_2_before_any_work(
        stored: Path, tmp_path: Path, toy_plugins, monkeypatch) -> None:
    import musicbench.plugins

    monkeypatch.setattr(musicbench.plugins, "_SYSTEM", toy_plugins)
    w = tmp_path / "w"
    _workspace(w)
    monkeypatch.chdir(w)
    before_store, before = _store_files(stored), _tree(w)
    failures = []
    cases = _cases(stored, w)
    for command, args in cases:
        result = CliRunner().invoke(app, [command, *args], env={"COLUMNS": "200"})
        exc = result.exception
        code = result.exit_code
        if isinstance(exc, ConfigError):  # main() turns these into one line and exit 2
            code, exc = 2, None
        problems = []
        if code != 2:
            problems.append(f"exit {code}")
        if exc is not None and not isinstance(exc, SystemExit):
            problems.append(f"traceback ({type(exc).__name__}: {exc})")
        if isinstance(result.exception, ConfigError) or result.stderr.strip():
            pass
        else:
            problems.append("nothing on stderr")
        after = _tree(w)
        if after != before:
            changed = sorted(set(after.items()) ^ set(before.items()))
            problems.append(f"changed {[p for p, _ in changed][:3]}")
            for path in sorted(set(after) - set(before), reverse=True):
                (os.rmdir if Path(path).is_dir() else os.unlink)(path)
            before = _tree(w)
        if problems:
            failures.append(f"musicbench {command} {' '.join(map(repr, args))}: "
                            + "; ".join(problems))
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures)
    assert _store_files(stored) == before_store, "the stored run was changed"


def test_the_invocations_the_fuzz_varies_succeed_as_they_are(
        stored: Path, tmp_path: Path, toy_plugins, monkeypatch) -> None:
    """Each base invocation works (exit 0), so a refusal above is the bad value's doing; train
    has no toy-sized trainable plugin, and its base is refused for that reason."""
    import musicbench.plugins

    monkeypatch.setattr(musicbench.plugins, "_SYSTEM", toy_plugins)
    w = tmp_path / "w"
    _workspace(w)
    monkeypatch.chdir(w)
    for command, args in _bases(stored, w).items():
        result = CliRunner().invoke(app, [command, *args], env={"COLUMNS": "200"})
        expected = 2 if command == "train" else 0
        assert result.exit_code == expected, (command, result.output, result.exception)
