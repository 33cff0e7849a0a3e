"""`musicbench list` into a pipe or a file: one line per plugin, nothing folded or cut."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import musicbench.plugins
from musicbench import hookimpl
from musicbench.cli import app
from musicbench.plugins import PluginSystem
from musicbench.testing import TinyClassifier

LONG_NAME = "a-deliberately-long-attack-name-for-narrow-tables"
LONG_SUMMARY = ("a summary longer than eighty characters, which a rich table squeezed to the "
                "width of a terminal that is not there would fold over several lines")


class _Listed:
    @hookimpl
    def register_attacks(self, register):
        register(LONG_NAME, "musicbench_plugins.attacks.pgd:PGD", aliases=("long",),
                 summary=LONG_SUMMARY)
        register("short", "musicbench_plugins.attacks.fgsm:FGSM", summary="a short one")


class _Broken:
    @hookimpl
    def register_models(self, register):
        register("short", TinyClassifier)
        raise RuntimeError("this plugin fails\nover two lines")


@pytest.fixture
def listed(monkeypatch) -> PluginSystem:
    system = PluginSystem()  # the installed plugins and these two
    system.add_plugin(_Listed(), "listed", provider="listed-plugins 1.0")
    system.add_plugin(_Broken(), "broken", provider="broken-plugins 0.1")
    monkeypatch.setattr(musicbench.plugins, "get_plugins", lambda **_: system)
    monkeypatch.setenv("COLUMNS", "80")
    return system


def test_list_into_a_pipe_prints_one_aligned_line_per_plugin(listed):
    result = CliRunner().invoke(app, ["list", "attacks"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = lines[0]
    assert header.split() == ["kind", "name", "provider", "status", "summary"]
    rows = {line.split()[1]: line for line in lines[1:]}
    long_row = rows[LONG_NAME]
    assert long_row.split("  ")[0] == "attack"
    assert f"{LONG_NAME} (long)" in long_row and "listed-plugins 1.0" in long_row
    assert long_row.endswith(LONG_SUMMARY)  # on its own line, whole
    # every column starts where its header does
    for column in ("name", "provider", "status", "summary"):
        start = header.index(column)
        for line in lines[1:]:
            assert line[start - 2 : start] == "  " and line[start] != " ", (column, line)
    # a failed plugin is one line too, its error's line breaks flattened, no rich markup
    broken = [line for line in lines if line.startswith("plugin")]
    assert len(broken) == 1, lines
    assert "failed" in broken[0] and "[red]" not in broken[0]
    assert broken[0].endswith("RuntimeError: this plugin fails over two lines")
    assert all(line.split()[0] in ("attack", "plugin") for line in lines[1:]), lines  # no folds


def test_the_end_of_run_table_in_a_pipe_is_markdown_at_full_width(tmp_path, toy_site):
    """A CI log is not a terminal: labels must not be cut to 'm21…'."""
    from conftest import cli

    config = tmp_path / "run.toml"
    config.write_text('[run]\nsamples = 4\ndevice = "cpu"\nfad_encoder = ""\n'
                      '[[datasets]]\nname = "toy-tones"\n[[models]]\nname = "toy-model"\n'
                      'label = "a-model-label-longer-than-any-narrow-column"\n'
                      '[[defenses]]\nname = "none"\n[[attacks]]\nname = "fgsm"\neps = 0.01\n')
    proc = cli("run", str(config), "--out", str(tmp_path / "out"), sites=(toy_site,))
    assert proc.returncode == 0, proc.stderr
    assert ("| toy-tones | a-model-label-longer-than-any-narrow-column | none | fgsm | ok |"
            in proc.stderr)
    assert "…" not in proc.stderr.split("musicbench run →")[1]
