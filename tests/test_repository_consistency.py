"""Facts stated in more than one place of the repository agree: the default config and its
published and documented copies, the Python version in pyproject.toml and what the code
imports, and tests that run on any machine (no hard-coded paths)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).parent.parent
EMBEDDED_DEFAULT = ROOT / "bench" / "default.toml"

# Standard-library modules newer than Python 3.10, and the version that added them.
NEWER_STDLIB = {"tomllib": (3, 11), "wsgiref.types": (3, 12)}


def test_the_published_default_config_is_the_embedded_one():
    """bench/default.toml is the source (`musicbench run` executes it; it ships in the wheel);
    leaderboards/configs/default.toml is its copy beside the published leaderboard."""
    published = ROOT / "leaderboards" / "configs" / "default.toml"
    assert published.read_bytes() == EMBEDDED_DEFAULT.read_bytes(), (
        f"{published.relative_to(ROOT)} differs from bench/default.toml, its source: edit "
        "bench/default.toml, then `cp bench/default.toml leaderboards/configs/default.toml`")


def test_the_readme_shows_the_embedded_default_config():
    """The README's copy may annotate differently, but must say the same thing."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"The embedded default, `bench/default\.toml`:\s*```toml\n(.*?)```",
                      readme, re.S)
    assert found, "README.md no longer shows bench/default.toml after 'The embedded default'"
    shown = tomllib.loads(found.group(1))
    source = tomllib.loads(EMBEDDED_DEFAULT.read_text(encoding="utf-8"))
    assert shown == source, ("README.md's default config differs from bench/default.toml: "
                             f"README {shown}, bench/default.toml {source}")


def _min_version(spec: str) -> tuple[int, ...]:
    found = re.fullmatch(r">=\s*(\d+)\.(\d+)", spec.strip())
    assert found, f"requires-python {spec!r}: expected the form '>=X.Y'"
    return int(found.group(1)), int(found.group(2))


def _imports(folder: Path) -> set[str]:
    names: set[str] = set()
    for file in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
    return names


def test_requires_python_and_ruff_target_name_the_version_the_code_needs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    minimum = _min_version(project["project"]["requires-python"])
    used = _imports(ROOT / "bench") | _imports(ROOT / "plugins")
    needs = {name: v for name, v in NEWER_STDLIB.items() if name in used}
    needed = max([(3, 10), *needs.values()])
    assert minimum == needed, (
        f"requires-python allows {minimum[0]}.{minimum[1]}, the code needs "
        f"{needed[0]}.{needed[1]} ({needs or 'nothing newer than 3.10'}): set it to "
        f"'>={needed[0]}.{needed[1]}'")
    target = project["tool"]["ruff"]["target-version"]
    assert target == f"py{minimum[0]}{minimum[1]}", (
        f"ruff's target-version {target!r} is not requires-python's {minimum}")
    example = tomllib.loads((ROOT / "docs" / "examples" / "musicbench-example-plugin"
                             / "pyproject.toml").read_text(encoding="utf-8"))
    assert _min_version(example["project"]["requires-python"]) >= minimum, (
        "the example plugin claims a Python that musicbench, its dependency, does not support")


# Absolute paths of one machine: temp folders, home folders, this workspace, drive letters.
MACHINE_PATH = re.compile(r"^(/(tmp|var|root|home|Users|work|mnt|data|opt)(/|$)|~[/\\]|"
                          r"[A-Za-z]:[/\\])")


def test_no_test_hard_codes_a_machine_path():
    """Tests take their folders from tmp_path (or the cache fixtures), never from one
    machine's file system."""
    found = []
    for file in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and MACHINE_PATH.match(node.value)):
                found.append(f"{file.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, "tests hard-code machine paths (use tmp_path):\n" + "\n".join(found)
