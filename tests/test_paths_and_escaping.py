"""Where the harness writes and what it writes into tables (issue 26, security items): a run
name is one safe folder name; markdown tables escape every cell and header; report page names
are injective; stored audio paths stay inside their run folder; every output path is a regular
file or nothing, in a folder. Documented in docs/reliability.md ("What is guaranteed")."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import cli
from test_planning import BASE

from musicbench.config import parse_config
from musicbench.errors import ConfigError
from musicbench.session import RunOptions, output_dir

CONFIG = BASE.format(run="keep_audio = 1", datasets="")  # fgsm and pgd on toy-model

# -- 1. the run name -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "", ".", "..", "a/b", "a\\b",
                                  "x\x00y", "caf\u00e9", "-" * 101])
def test_a_run_name_that_is_not_one_safe_folder_name_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=r"\[run\] key 'name'"):
        parse_config(CONFIG.replace("[run]\n", f"[run]\nname = {_toml(name)}\n", 1))


@pytest.mark.parametrize("name", ["default", "my-run_2.1", "a", "..x", "x.."])
def test_a_safe_run_name_names_one_folder_under_runs(name: str) -> None:
    config = parse_config(CONFIG.replace("[run]\n", f"[run]\nname = {_toml(name)}\n", 1))
    for quick in (False, True):
        out = output_dir(config, RunOptions(quick=quick))
        assert out.parent == Path("runs") and out.name.startswith(name)


def test_a_traversing_run_name_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.replace("[run]\n", '[run]\nname = "../../escaped"\n', 1))
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    result = cli("run", str(config), cwd=work)
    assert result.returncode == 2, result.stderr
    assert "[run] key 'name'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "escaped").exists() and not list(work.iterdir())


def _toml(text: str) -> str:
    return '"' + "".join(c if c.isalnum() or c in "-_./ " else f"\\u{ord(c):04x}"
                         for c in text) + '"'
