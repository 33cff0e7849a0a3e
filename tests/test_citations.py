"""The repository stands alone: code, tests and docs cite repository files only, and every
section of docs/architecture.md they cite by heading exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
TREES = ("bench", "plugins", "tests", "docs")
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".json", ".cfg", ".ini", ".yaml", ".yml"}
# Spelled in pieces so that this file does not cite them itself.
OUTSIDE = ("DESIGN" + ".md", "PAPERS" + ".md", "../" + "shared", "/" + "work/")
ARCHITECTURE = "docs/architecture.md"


def _text_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for tree in TREES:
        files += sorted(p for p in (ROOT / tree).rglob("*")
                        if p.is_file() and p.suffix in TEXT_SUFFIXES
                        and "__pycache__" not in p.parts)
    return files


def outside_citations(text: str) -> list[str]:
    """The citations of files outside the repository in ``text``, one per line that has one."""
    return [line.strip() for line in text.splitlines()
            if any(cited in line for cited in OUTSIDE)]


def test_outside_citations_are_found():
    assert outside_citations("see " + OUTSIDE[0] + " section 6\nfine line") == [
        "see " + OUTSIDE[0] + " section 6"]
    assert outside_citations("docs/architecture.md, 'Threat models'") == []


def test_no_file_cites_a_file_outside_the_repository():
    found = []
    for path in _text_files():
        for line in outside_citations(path.read_text(encoding="utf-8", errors="replace")):
            found.append(f"{path.relative_to(ROOT)}: {line}")
    assert not found, (
        "these lines cite files outside the repository (a fresh clone does not have them); "
        "cite docs/architecture.md or another repository file instead (see the section "
        "names in docs/architecture.md):\n" + "\n".join(found))


def _headings(markdown: str) -> set[str]:
    return {m.group(1).strip() for m in re.finditer(r"^#+ (.+)$", markdown, re.MULTILINE)}


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_cited_sections_of_the_architecture_exist():
    """``docs/architecture.md, '<heading>'`` in code and ``architecture.md#<anchor>`` in docs name
    headings that exist, so that a renamed heading cannot leave citations dangling."""
    headings = _headings((ROOT / ARCHITECTURE).read_text(encoding="utf-8"))
    anchors = {_anchor(h) for h in headings}
    missing = []
    for path in _text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in re.finditer(r"docs/architecture\.md,\s+'([A-Z][^']*)'", text):
            if " ".join(m.group(1).split()) not in headings:  # a heading may wrap
                missing.append(f"{path.relative_to(ROOT)}: '{m.group(1)}'")
        for m in re.finditer(r"architecture\.md#([\w-]+)", text):
            if m.group(1) not in anchors:
                missing.append(f"{path.relative_to(ROOT)}: #{m.group(1)}")
    assert not missing, (f"citations of sections {ARCHITECTURE} does not have: "
                         + ", ".join(missing) + f"; headings are: {sorted(headings)}")
