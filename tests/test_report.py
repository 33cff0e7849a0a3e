"""musicbench report: a static HTML report whose every link, player and picture resolves, with
no network reference, every cell in its tables, and pages that load in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("pandas")

from conftest import cli, run_toy_config  # noqa: E402
from test_results_api import CONFIG as RESULTS_CONFIG  # noqa: E402

from musicbench.report import ReportDependencyError, write_report  # noqa: E402
from musicbench.results import load  # noqa: E402

# the results API's toy run (2 defenses x 3 attacks, one a contrast), keeping 2 clips a cell
CONFIG = RESULTS_CONFIG.replace("[run]\n", "[run]\nkeep_audio = 2\n", 1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return run_toy_config(tmp_path_factory.mktemp("report-run"), CONFIG)[1]


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory) -> Path:
    return write_report(run_dir, tmp_path_factory.mktemp("report") / "site")


class _Refs(HTMLParser):
    """Every src/href of a page, the ids it defines, and its element counts."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.ids: set[str] = set()
        self.tags: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.refs.append(value)
            if name == "id" and value:
                self.ids.add(value)


def _parse(page: Path) -> _Refs:
    parser = _Refs()
    parser.feed(page.read_text())
    return parser


def _kept(run_dir: Path) -> int:
    return len(list(run_dir.glob("audio/*/*-clean.flac")))


def test_every_reference_resolves_offline(report: Path, run_dir: Path):
    pages = sorted(report.parent.glob("*.html"))
    assert len(pages) == 2  # the index and one page for (toy-tones, toy-model)
    parsed = {p.name: _parse(p) for p in pages}
    for page in pages:
        text = page.read_text()
        assert "http://" not in text and "https://" not in text, page
        for ref in parsed[page.name].refs:
            target, _, anchor = ref.partition("#")
            target = target or page.name
            assert (report.parent / target).is_file(), f"{page.name}: {ref}"
            if anchor:
                assert anchor in parsed[target].ids, f"{page.name}: {ref}"
    model = parsed["toy-tones--toy-model.html"]
    kept = _kept(run_dir)
    assert kept >= 6  # up to 2 per cell (the fooled ones)
    assert model.tags["audio"] == 3 * kept  # clean, adversarial, difference
    # a spectrogram per clip, a per-clip figure per cell (6, and the noise row's 2 gates)
    assert model.tags["img"] == kept + 8


def test_tables_hold_every_cell_with_marks(report: Path, run_dir: Path):
    index = report.read_text()
    model = (report.parent / "toy-tones--toy-model.html").read_text()
    cells = load(run_dir).cells
    assert len(cells) == 6 + 2  # and the sanity gates of the noise row (fgsm 10x, identity)
    for key in cells.key:
        assert f"toy-tones--toy-model.html#cell-{key}" in index
        assert f'id="cell-{key}"' in model
    assert index.count("<h3>") == cells.threat_model.nunique()  # one table per threat model
    assert "Worst-case robust accuracy by threat model" in index
    assert "contrasts, not in the worst case: pgd, oblivious" in index
    assert index.count("badge contrast") == 2  # "pgd, oblivious" under both defenses
    assert index.count('<span class="badge nonadaptive">oblivious</span>') == 2
    assert re.search(r"difference × \d+ \([+-]\d+\.\d dB\)", model)


def test_difference_file_is_amplified(report: Path):
    import numpy as np
    import soundfile

    media = report.parent / "media"
    diff = next(media.glob("*/*-diff.flac"))
    data, _ = soundfile.read(diff)
    assert np.max(np.abs(data)) == pytest.approx(0.5, abs=1e-3)


def test_cli_writes_the_report(run_dir: Path, tmp_path: Path):
    result = cli("report", str(run_dir), "-o", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "r" / "index.html").is_file()
    missing = cli("report", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no results store" in missing.stderr


def test_missing_matplotlib_names_the_extra(run_dir: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ReportDependencyError, match=r"musicbench\[report\]"):
        write_report(run_dir, tmp_path / "r")


# -- headless Chromium ----------------------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium); "
                "the browser check of the report did not run")


def _open(page: Path) -> tuple[str, list[str]]:
    """The DOM of ``page`` after its scripts and media loads ran, and its console messages."""
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--mute-audio",
           "--enable-logging=stderr", "--v=0", "--window-size=1400,30000",
           "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if re.search(r"CONSOLE[:(]", line)]
    return done.stdout, console


def _loaded(dom: str, tag: str) -> tuple[int, int]:
    tags = re.findall(rf"<{tag}\b[^>]*>", dom)
    return len(tags), sum("data-loaded=" in t for t in tags)


def test_pages_load_in_headless_chromium(report: Path, run_dir: Path):
    for page in (report, report.parent / "toy-tones--toy-model.html"):
        dom, console = _open(page)
        assert console == [], console
        assert 'class="load-error"' not in dom
        audio, audio_ok = _loaded(dom, "audio")
        images, images_ok = _loaded(dom, "img")
        assert audio_ok == audio and images_ok == images, (page.name, audio, audio_ok,
                                                            images, images_ok)
        if page == report:
            # worst case, by attack, and every cell: one table per threat model, the run's
            # L∞ 0.01 and the harness's own 10×ε sanity gate at 0.1 (docs/protocol.md)
            tables = load(run_dir).cells.threat_model.nunique()
            assert tables == 2 and dom.count("<table") == 2 + tables
            assert "10×ε" in dom
    kept = _kept(run_dir)  # the model page's players and pictures all loaded: three players
    # and a spectrogram a kept clip, a per-clip figure a cell (6 of the grid, 2 sanity gates)
    assert audio == 3 * kept and images == kept + len(load(run_dir).cells) == kept + 8


def test_chromium_check_sees_a_broken_report(report: Path, tmp_path: Path):
    """The check above can fail: a missing picture and a missing clip show as load errors."""
    broken = tmp_path / "broken"
    shutil.copytree(report.parent, broken)
    next((broken / "media").glob("*/clips.png")).unlink()
    next((broken / "media").glob("*/*-adv.flac")).unlink()
    dom, _ = _open(broken / "toy-tones--toy-model.html")
    assert dom.count('class="load-error"') == 2


def test_a_sweep_gets_robustness_curves(tmp_path: Path):
    """Cells that differ only in ε are drawn as ASR and robust accuracy against ε."""
    from musicbench.report import eps_series, write_report

    sweep = RESULTS_CONFIG.replace('[[attacks]]\nname = "pgd"\neps = 0.01\nsteps = 4\n',
                                   '[[attacks]]\nname = "pgd"\neps = [0.002, 0.01, 0.05]\n'
                                   'steps = 4\n', 1)
    assert sweep != RESULTS_CONFIG
    out = run_toy_config(tmp_path, sweep)[1]
    index = write_report(out, tmp_path / "report")
    text = index.read_text(encoding="utf-8")
    assert "Robustness against ε" in text
    refs = _parse(index)
    curves = [src for src in refs.refs if "/eps-" in src]
    assert curves and all((index.parent / src).is_file() for src in curves)
    from musicbench.report import _load

    _, records = _load(out)
    series = eps_series(records)
    # one pgd series per defense, three points each; the oblivious pgd is a contrast
    assert sorted(len(v) for v in series.values()) == [3, 3]


def test_black_box_attacks_get_query_curves(tmp_path: Path):
    from musicbench.report import write_report

    config = RESULTS_CONFIG + '[[attacks]]\nname = "nes"\neps = 0.05\nbudget = 40\n'
    out = run_toy_config(tmp_path, config)[1]
    index = write_report(out, tmp_path / "report")
    text = index.read_text(encoding="utf-8")
    assert "Black-box success against queries" in text
    # two defenses on one model: the worst-case bars are drawn too
    assert "Defenses: clean and worst-case robust accuracy" in text
    assert any("/defenses-" in src for src in _parse(index).refs)
    curves = [src for src in _parse(index).refs if "/queries-" in src and src.endswith(".png")]
    assert len(curves) == 2 and all((index.parent / src).is_file() for src in curves)


def test_cost_against_success_has_a_point_per_attack_and_svg_copies(report: Path, run_dir: Path):
    from musicbench.report import _load, cost_groups

    board, _ = _load(run_dir)
    groups = cost_groups(board)
    assert len(groups) == 2  # one figure per defense
    for rows in groups.values():  # every attack but the oblivious contrast and the gates
        assert sorted(r["attack"] for r in rows) == ["fgsm", "pgd"]
    index = report.read_text(encoding="utf-8")
    assert "Perceptual cost against success" in index
    refs = _parse(report).refs
    assert len([r for r in refs if "/cost-" in r and r.endswith(".png")]) == 2
    svgs = [r for r in refs if r.endswith(".svg")]  # every figure of the index has one
    assert svgs and len(svgs) == len([r for r in refs if r.endswith(".png")])
    for svg in svgs:
        head = (report.parent / svg).read_text(encoding="utf-8")[:200]
        assert "<svg" in head or head.startswith("<?xml"), svg


def test_the_help_names_the_report_extra_in_full():
    """Rich reads ``[report]`` as markup unless escaped; the install hint must survive."""
    for args in (("report", "--help"), ("--help",)):
        shown = cli(*args)
        assert shown.returncode == 0
        assert 'musicbench[report]' in " ".join((shown.stdout + shown.stderr).split()), args
