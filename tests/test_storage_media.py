"""Report media written atomically (issue 26): a symbolic link planted where the report writes
a clip, a difference, a spectrogram or a figure is replaced by the file, never followed, so
the file it points to (outside the report folder) is left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_toy_config
from test_planning import BASE

from musicbench.files import atomic_copy, atomic_write_bytes

pytest.importorskip("matplotlib")
pytest.importorskip("pandas")

from musicbench.report import write_report

CONFIG = BASE.format(run="", datasets="")  # fgsm and pgd on toy-model, kept clips


def _plant(at: Path, victim: Path) -> None:
    """A symbolic link at ``at`` to ``victim``, a file outside the report folder."""
    at.parent.mkdir(parents=True, exist_ok=True)
    at.unlink(missing_ok=True)
    at.symlink_to(victim)


@pytest.mark.parametrize("write", ["atomic_copy", "atomic_write_bytes"])
def test_an_atomic_write_replaces_a_planted_link_instead_of_following_it(tmp_path, write):
    victim = tmp_path / "outside" / "important.txt"
    victim.parent.mkdir()
    victim.write_text("keep me")
    source = tmp_path / "source.flac"
    source.write_bytes(b"fLaC new")
    target = tmp_path / "report" / "media" / "clip.flac"
    _plant(target, victim)
    if write == "atomic_copy":
        atomic_copy(source, target)
    else:
        atomic_write_bytes(target, b"fLaC new")
    assert not target.is_symlink() and target.read_bytes() == b"fLaC new"
    assert victim.read_text() == "keep me"


def test_the_report_replaces_links_planted_at_its_media_and_writes_nothing_outside(tmp_path):
    _, out = run_toy_config(tmp_path, CONFIG)
    report = tmp_path / "report"
    write_report(out, report)
    media = sorted(p.relative_to(report) for p in report.rglob("*")
                   if p.is_file() and p.suffix in (".flac", ".png", ".svg"))
    assert {p.suffix for p in media} == {".flac", ".png", ".svg"}  # clips, figures, vectors
    assert any(p.name.endswith("-clean.flac") for p in media)
    outside = tmp_path / "outside"
    outside.mkdir()
    victims = {}
    for i, rel in enumerate(media):
        victims[rel] = outside / f"victim-{i}.txt"
        victims[rel].write_text(f"victim {i}")
        _plant(report / rel, victims[rel])
    write_report(out, report)
    for i, rel in enumerate(media):
        assert not (report / rel).is_symlink(), rel
        assert (report / rel).stat().st_size > 0, rel
        assert victims[rel].read_text() == f"victim {i}", rel
    assert sorted(p.name for p in outside.iterdir()) == sorted(v.name for v in victims.values())
