"""A plugin's code cannot change behaviour behind an unchanged ``version`` (cell keys hold the
version, not the code): plugins/versions.json locks both, and this test holds them together."""

from __future__ import annotations

import json

from musicbench import sources


def test_every_built_in_plugin_matches_its_locked_version_and_source():
    lock, now = sources.read_lock(), sources.current()
    bad = sources.problems(lock, now)
    assert not bad, (
        f"code changed but `version` did not: {bad}. Bump the version (results change) or, if no "
        "result can change, run `python -m musicbench.sources update --no-behaviour-change "
        + " ".join(bad) + "`")
    old = sources.stale(lock, now)
    assert not old, f"run `python -m musicbench.sources update`: out of date for {old}"


def test_a_code_change_is_caught_and_docstrings_or_comments_are_not(tmp_path, monkeypatch):
    package = tmp_path / "fakepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helper.py").write_text("def scale(x):\n    return 2 * x\n")
    (package / "attack.py").write_text(
        '"""An attack."""\nfrom fakepkg.helper import scale\n\n'
        "class A:\n    version = '1'\n\n    def run(self, x):\n        return scale(x)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = sources.digest(["fakepkg.attack"], "fakepkg")
    (package / "attack.py").write_text(
        '"""An attack, documented better."""\nfrom fakepkg.helper import scale  # the helper\n\n'
        "class A:\n    version = '1'\n\n    def run(self, x):\n"
        '        """Scale."""\n        return scale(x)\n')
    assert sources.digest(["fakepkg.attack"], "fakepkg") == before
    (package / "helper.py").write_text("def scale(x):\n    return 3 * x\n")  # an import changed
    changed = sources.digest(["fakepkg.attack"], "fakepkg")
    assert changed != before
    lock = {"attack/a": {"version": "1", "source": before}}
    assert sources.problems(lock, {"attack/a": {"version": "1", "source": changed}}) == ["attack/a"]
    assert sources.problems(lock, {"attack/a": {"version": "2", "source": changed}}) == []
    marked = sources.problems(lock, {"attack/a": {"version": "1", "source": changed}},
                              {"attack/a"})
    assert marked == []  # the explicit "no behaviour change" marker
    assert sources.stale(lock, {"attack/a": {"version": "2", "source": changed}}) == ["attack/a"]


def test_the_lock_file_is_valid_json_with_the_harness_entry():
    lock = json.loads(sources.lock_path().read_text())
    assert sources.CORE_ENTRY in lock and "attack/pgd" in lock
