"""Progress output when stderr is a log file (no live display): a line per bar's start and
end, and its description updates as lines, rate-limited."""

from __future__ import annotations

import io

from rich.console import Console

from musicbench.ui import RichProgress, _Task


def _logged_progress() -> tuple[RichProgress, io.StringIO]:
    sink = io.StringIO()
    return RichProgress(Console(file=sink, force_terminal=False, width=200)), sink


def test_a_log_shows_each_update_of_a_bar(monkeypatch):
    monkeypatch.setattr(_Task, "LOG_EVERY_S", 0.0)
    progress, sink = _logged_progress()
    with progress, progress("training toy", total=2) as bar:
        for epoch in (1, 2):
            bar.advance()
            bar.update(description=f"training toy: epoch {epoch}/2, loss 0.{epoch}")
    lines = sink.getvalue().splitlines()
    assert lines[0] == "training toy ..."
    assert any(line.startswith("training toy: epoch 1/2, loss 0.1 (") for line in lines)
    assert any(line.startswith("training toy: epoch 2/2, loss 0.2: done in ") for line in lines)


def test_updates_closer_than_the_limit_are_not_logged(monkeypatch):
    monkeypatch.setattr(_Task, "LOG_EVERY_S", 3600.0)
    progress, sink = _logged_progress()
    with progress, progress("quick", total=3) as bar:
        for step in range(3):
            bar.update(description=f"quick: step {step}")
    logged = [line for line in sink.getvalue().splitlines() if line.startswith("quick")]
    assert len(logged) == 2 and logged[0] == "quick ..."
    assert logged[1].startswith("quick: step 2: done in ")
