"""Shared fixtures: an isolated cache, plugin systems with the toy plugins, entry-point sites."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from musicbench.plugins import PluginSystem

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets a private MUSICBENCH_HOME unless it asks for the shared one, and
    trains what it needs: the repository's published weights (leaderboards/weights) are not
    copied in unless a test sets MUSICBENCH_SHIPPED_WEIGHTS itself."""
    monkeypatch.setenv("MUSICBENCH_HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.setenv("MUSICBENCH_SHIPPED_WEIGHTS", "")


@pytest.fixture
def toy_plugins() -> PluginSystem:
    import toyplugins

    system = PluginSystem()  # the installed entry points, as a user has them
    system.add_plugin(toyplugins, "toy", provider="toy-plugins 0")
    return system


def make_site(root: Path, dist: str, entry_points: dict[str, str], files: dict[str, str]) -> Path:
    """A folder that, on PYTHONPATH, looks like an installed distribution with entry points."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{dist.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
    eps = "[musicbench]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(eps)
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def toy_site(tmp_path) -> Path:
    """A site folder exposing tests/toyplugins.py as the entry point ``toy``."""
    return make_site(tmp_path / "site", "toy-plugins", {"toy": "toyplugins"}, {})


def cli(*args: str, sites: tuple[Path, ...] = (), cwd: Path | None = None,
        timeout: float = 600, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run the musicbench CLI in a subprocess with extra sites (and tests/) on PYTHONPATH;
    ``python_flags`` go to the interpreter (e.g. ``("-O",)``)."""
    env = dict(os.environ)
    paths = [str(s) for s in sites] + [str(TESTS)]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["COLUMNS"] = "200"
    cmd = [sys.executable, *python_flags, "-c", "from musicbench.cli import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


def run_toy_config(folder: Path, config_text: str):
    """Write ``config_text`` to ``folder/run.toml`` and run it in-process with the toy plugins
    (for module-scoped fixtures, which cannot use the function-scoped ``toy_plugins``);
    returns ``(outcome, out folder)``."""
    import toyplugins

    from musicbench.session import RunOptions, execute

    plugins = PluginSystem()
    plugins.add_plugin(toyplugins, "toy", provider="toy-plugins 0")
    (folder / "run.toml").write_text(config_text)
    outcome = execute(RunOptions(config=folder / "run.toml", out=folder / "out"), plugins)
    return outcome, folder / "out"


def benchmark_script(name: str):
    """``benchmarks/<name>.py`` imported as a module, registered in ``sys.modules`` (its
    dataclasses look their module up there)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, TESTS.parent / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
