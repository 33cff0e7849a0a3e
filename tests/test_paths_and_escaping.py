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


@pytest.mark.parametrize("name", ["../../x", "/etc/abs", "", ".", "..", "a/b", "a\\b",
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


# -- 2. labels in markdown tables and report page names --------------------------------------

# (a line break in a label is refused by the config now, tests/test_input_config_generator.py;
# escape_cell's handling of one, for labels from elsewhere, is tested below)
HOSTILE = {"fgsm": "<script>alert(1)</script>|x", "pgd": "<img src=x onerror=alert(1)> row"}


def _hostile_config() -> str:
    text = CONFIG
    for name, label in HOSTILE.items():
        text = text.replace(f'name = "{name}"\n', f'name = "{name}"\nlabel = {_toml(label)}\n')
    # two models whose labels differ only in a character a file name cannot hold
    return text.replace('[[models]]\nname = "toy-model"\n',
                        '[[models]]\nname = "toy-model"\nlabel = "cnn<a"\n\n'
                        '[[models]]\nname = "toy-model"\nlabel = "cnn>a"\nseed = 1\n')


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> Path:
    from conftest import run_toy_config

    _, out = run_toy_config(tmp_path_factory.mktemp("hostile"), _hostile_config())
    return out


def _tables(markdown: str) -> list[list[str]]:
    tables, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_markdown_tables_escape_pipes_html_and_newlines_in_every_cell_and_header(
        hostile_run: Path) -> None:
    board = (hostile_run / "leaderboard.md").read_text()
    tables = _tables(board)
    assert len(tables) >= 3
    for table in tables:
        columns = {line.count("|") for line in table}
        assert len(columns) == 1, table  # no label added a column or split a row
        for line in table:
            assert "<" not in line and ">" not in line, line
    every_cell = "\n".join(tables[-1])
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#124;x" in every_cell
    assert "&lt;img src=x onerror=alert(1)&gt; row" in every_cell
    assert "cnn&lt;a" in every_cell and "cnn&gt;a" in every_cell
    by_attack = "\n".join(tables[1])  # the labels are this table's column headers
    assert by_attack.splitlines()[0].count("&lt;script&gt;") == 1


def test_escape_cell_is_injective_on_what_it_escapes() -> None:
    from musicbench.leaderboard import escape_cell

    assert escape_cell("&lt;") != escape_cell("<")
    assert escape_cell("a|b") == "a&#124;b" and escape_cell("a\\|b") == "a\\&#124;b"
    assert escape_cell("x\r\ny\nz\u2028w") == "x y z w"


@pytest.mark.parametrize("pairs", [
    [("x", "cnn<a"), ("x", "cnn>a")],
    [("x", "CNN"), ("x", "cnn")],  # one file on a file system that ignores case
    [("a--b", "c"), ("a", "b--c")],
    [("a-", "b"), ("a", "-b")],
    [("x", "a_b"), ("x", "a b"), ("x", "a/b")],
])
def test_report_page_names_are_distinct_for_distinct_labels(pairs) -> None:
    from musicbench.report import model_page

    names = [model_page(*p) for p in pairs]
    assert len({n.lower() for n in names}) == len(pairs), names
    for name in names:
        assert "/" not in name and "\\" not in name and name.endswith(".html")
    assert model_page("toy-tones", "toy-model") == "toy-tones--toy-model.html"


def test_the_report_writes_one_page_per_model_when_labels_share_a_slug(
        hostile_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from musicbench.report import model_page, write_report

    index = write_report(hostile_run, tmp_path / "report")
    pages = sorted(p.name for p in index.parent.glob("*.html") if p.name != "index.html")
    assert pages == sorted({model_page("toy-tones", m) for m in ("cnn<a", "cnn>a")})
    for model, page in (("cnn<a", "cnn&lt;a"), ("cnn>a", "cnn&gt;a")):
        assert f"/ {page}</h1>" in (index.parent / model_page("toy-tones", model)).read_text()


# -- 3. stored audio paths stay inside their run folder --------------------------------------


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> Path:
    from conftest import run_toy_config

    _, out = run_toy_config(tmp_path_factory.mktemp("plain"), CONFIG)
    return out


def _edited_copy(run: Path, dest: Path, path: str) -> tuple[Path, str]:
    """A copy of ``run`` at ``dest`` whose first stored audio path reads ``path``; returns the
    folder and the edited cell's key."""
    import shutil
    import sqlite3

    shutil.copytree(run, dest)
    conn = sqlite3.connect(dest / "results.sqlite")
    with conn:
        rowid, key = conn.execute("SELECT rowid, cell_key FROM audio LIMIT 1").fetchone()
        conn.execute("UPDATE audio SET path = ? WHERE rowid = ?", (path, rowid))
    conn.close()
    return dest, key


@pytest.mark.parametrize("stored", ["../important.txt", "audio/../../important.txt",
                                    "results.sqlite", "/srv/important.txt"])
def test_merge_refuses_a_stored_audio_path_out_of_its_folder_and_writes_nothing(
        plain_run: Path, tmp_path: Path, stored: str) -> None:
    from musicbench.merge import merge

    source, key = _edited_copy(plain_run, tmp_path / "parts" / "src", stored)
    (tmp_path / "parts" / "important.txt").write_text("the attacker's")
    victim = tmp_path / "important.txt"
    victim.write_text("precious")
    with pytest.raises(ConfigError, match=key) as err:
        merge(tmp_path / "merged", [source])
    assert repr(stored) in str(err.value)
    assert victim.read_text() == "precious" and not (tmp_path / "merged").exists()
    result = cli("merge", str(tmp_path / "merged"), str(source))
    assert result.returncode == 2 and key in result.stderr and "Traceback" not in result.stderr
    assert victim.read_text() == "precious" and not (tmp_path / "merged").exists()


def test_merge_replaces_a_symlink_in_the_destination_never_writes_through_it(
        plain_run: Path, tmp_path: Path) -> None:
    import sqlite3

    from musicbench.merge import merge

    conn = sqlite3.connect(plain_run / "results.sqlite")
    rel = conn.execute("SELECT path FROM audio LIMIT 1").fetchone()[0]
    conn.close()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "merged" / rel
    link.parent.mkdir(parents=True)
    link.symlink_to(victim)
    with pytest.raises(ConfigError, match="not inside"):
        merge(tmp_path / "merged", [plain_run])
    assert victim.read_text() == "precious" and not (tmp_path / "merged" / "results.sqlite"
                                                      ).exists()


def test_report_refuses_a_stored_audio_path_out_of_its_folder(plain_run: Path,
                                                              tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from musicbench.report import write_report

    source, key = _edited_copy(plain_run, tmp_path / "run", "../../etc/passwd")
    with pytest.raises(ConfigError, match=key):
        write_report(source, tmp_path / "report")
    assert not (tmp_path / "report").exists()
    result = cli("report", str(source), "-o", str(tmp_path / "report"))
    assert result.returncode == 2 and "../../etc/passwd" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "report").exists()


# -- 4. outputs are regular files in folders ---------------------------------------------------


def test_leaderboard_o_refuses_a_device_or_pipe_and_leaves_it_as_it_was(
        plain_run: Path, tmp_path: Path) -> None:
    import os
    import stat

    from musicbench.files import check_output_file

    with pytest.raises(ConfigError, match="character device"):
        check_output_file("/dev/null")  # checked, never written
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for target, kind in ((fifo, "named pipe"), (tmp_path, "a folder")):
        result = cli("leaderboard", str(plain_run), "-o", str(target), "--allow-dirty")
        assert result.returncode == 2, result.stderr
        assert kind in result.stderr and "Traceback" not in result.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    notdir = tmp_path / "file"
    notdir.write_text("")
    result = cli("leaderboard", str(plain_run), "-o", str(notdir / "board.md"), "--allow-dirty")
    assert result.returncode == 2 and "not a folder" in result.stderr, result.stderr
    # --store-copy too, checked before any work: nothing written to -o either
    board = tmp_path / "board.md"
    result = cli("leaderboard", str(plain_run), "-o", str(board), "--store-copy", str(fifo),
                 "--allow-dirty")
    assert result.returncode == 2 and "named pipe" in result.stderr, result.stderr
    assert not board.exists() and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_run_and_merge_refuse_an_output_folder_that_is_a_file_or_holds_a_pipe(
        plain_run: Path, tmp_path: Path, toy_site: Path) -> None:
    import os

    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    not_a_folder = tmp_path / "out"
    not_a_folder.write_text("mine")
    result = cli("run", str(config), "--out", str(not_a_folder), sites=(toy_site,))
    assert result.returncode == 2 and "not a folder" in result.stderr, result.stderr
    assert not_a_folder.read_text() == "mine"
    piped = tmp_path / "piped"
    piped.mkdir()
    os.mkfifo(piped / "leaderboard.md")
    result = cli("run", str(config), "--out", str(piped), sites=(toy_site,))
    assert result.returncode == 2 and "named pipe" in result.stderr, result.stderr
    assert sorted(p.name for p in piped.iterdir()) == ["leaderboard.md"]  # no work done
    result = cli("merge", str(not_a_folder), str(plain_run))
    assert result.returncode == 2 and "not a folder" in result.stderr, result.stderr
    assert not_a_folder.read_text() == "mine"


def test_labels_are_escaped_outside_the_tables_too():
    from test_leaderboard_flags import record

    from musicbench.leaderboard import (
        Leaderboard,
        _add_flags,
        _summaries,
        cell_row,
        render_markdown,
    )

    cells = [record("<script>x</script>", "white-box", [True] * 8)]
    rows = [cell_row(r) for r in cells]
    _add_flags(cells, rows)
    summary, tms, attacks = _summaries(cells, rows)
    header = {"date": "", "musicbench": "0", "git_revision": "abc", "revisions": {"abc": 1},
              "torch": "2", "device": "cpu", "seed": 0, "config": "c", "planned": 1,
              "stored": 1, "dataset_fingerprints": {"<b>d": "f"}, "samples": {}}
    text = render_markdown(Leaderboard(header, rows, summary, attacks, tms, {}, []))
    assert "<script>" not in text and "<b>" not in text
    assert "- L∞ ε=0.002: &lt;script&gt;x&lt;/script&gt;" in text
