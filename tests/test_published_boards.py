"""Every published leaderboard (leaderboards/NAME.md) is what today's renderer makes of its
published store (leaderboards/runs/NAME.sqlite): a change to the board layer either leaves
them identical or re-renders them in the same commit, so the published boards never say what
the code no longer would (e.g. a robust accuracy for an unbounded attack)."""

from __future__ import annotations

from pathlib import Path

import pytest

from musicbench.leaderboard import build, render_markdown
from musicbench.store import Store

BOARDS = Path(__file__).resolve().parent.parent / "leaderboards"
PUBLISHED = sorted(p.stem for p in (BOARDS / "runs").glob("*.sqlite")
                   if (BOARDS / f"{p.stem}.md").is_file())


def test_every_store_has_its_board():
    assert "default" in PUBLISHED and len(PUBLISHED) >= 7


@pytest.mark.parametrize("name", PUBLISHED)
def test_a_published_board_is_its_store_rendered_today(name):
    store = Store(BOARDS / "runs" / f"{name}.sqlite", readonly=True)
    try:
        text = render_markdown(build(store))
    finally:
        store.close()
    published = (BOARDS / f"{name}.md").read_text(encoding="utf-8")
    assert text.rstrip("\n") == published.rstrip("\n"), (
        f"leaderboards/{name}.md is not what the renderer makes of its store; re-render it: "
        f"musicbench leaderboard leaderboards/runs/{name}.sqlite -o leaderboards/{name}.md")
