"""Weights the repository ships: what its published boards were computed with
(``leaderboards/weights/``), copied into the cache instead of training on first use.

A newcomer's first ``musicbench run`` used to spend most of its time training style-cnn
(8 minutes of 13 on 2 cores) to get weights the repository already holds: the published
boards' weights are kept beside them so the boards can be reproduced. When a checkpoint is
missing from the cache, :func:`seed_from_shipped` looks for the same relative path
(``models/style-cnn-<recipe key>.safetensors``: the cache layout, keyed by the training recipe
and the dataset fingerprint, so a changed recipe finds nothing and trains) in the shipped
folders, checks the file's SHA-256 against the folder's ``SHA256SUMS`` (a Git LFS pointer, a
truncated checkout or an edited file is skipped with a warning, and the weights are trained),
and copies it into the cache atomically. Results are unchanged in kind: the cell key holds the
weights' own digest, so cells computed with shipped weights are the published board's cells
(``leaderboards/default.md`` reproduces), and cells computed with weights trained here (where
this CPU's arithmetic differs in the last bits) carry other keys.

Where: ``MUSICBENCH_SHIPPED_WEIGHTS`` (folders separated by ``os.pathsep``; empty: none, always
train), else ``leaderboards/weights`` of the source checkout this package runs from (an
editable install; a wheel has none). ``musicbench train`` always trains.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from musicbench.files import atomic_write_bytes

SHIPPED_ENV = "MUSICBENCH_SHIPPED_WEIGHTS"
MANIFEST = "SHA256SUMS"
_CHECKOUT_WEIGHTS = Path(__file__).resolve().parent.parent / "leaderboards" / "weights"


def shipped_dirs() -> list[Path]:
    """The folders searched, in order (see the module docstring)."""
    env = os.environ.get(SHIPPED_ENV)
    if env is not None:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return [_CHECKOUT_WEIGHTS] if (_CHECKOUT_WEIGHTS / MANIFEST).is_file() else []


def read_manifest(folder: Path) -> dict[str, str]:
    """``{relative path: sha256 hex}`` from ``folder/SHA256SUMS`` (``sha256sum`` format:
    ``<hex>  <path>``); empty when there is none or it cannot be read."""
    try:
        text = (folder / MANIFEST).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    out = {}
    for line in text.splitlines():
        digest, _, rel = line.strip().partition("  ")
        if len(digest) == 64 and rel:
            out[rel.lstrip("*")] = digest.lower()
    return out


def write_manifest(folder: Path) -> Path:
    """(Re)write ``folder/SHA256SUMS`` for every ``.safetensors`` file below ``folder``: run
    after adding weights to ``leaderboards/weights`` (tests/test_repository_consistency.py
    checks the manifest matches the files)."""
    lines = []
    for path in sorted(folder.rglob("*.safetensors")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {path.relative_to(folder).as_posix()}")
    return atomic_write_bytes(folder / MANIFEST, ("\n".join(lines) + "\n").encode())


def seed_from_shipped(path: Path, cache_dir: Path, *, what: str) -> Path | None:
    """Copy the shipped file for cache entry ``path`` (under ``cache_dir``) into place when a
    shipped folder holds one whose SHA-256 matches its manifest; return the file copied, or
    None (then the caller trains). Call it under the entry's build lock."""
    try:
        rel = Path(path).resolve().relative_to(Path(cache_dir).resolve()).as_posix()
    except (ValueError, OSError):
        return None
    for folder in shipped_dirs():
        digest = read_manifest(folder).get(rel)
        source = folder / rel
        if digest is None or not source.is_file():
            continue
        data = source.read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            print(f"musicbench: warning: {source} does not match its SHA-256 in {folder / MANIFEST} "
                  f"(a Git LFS pointer or an edited file?); training {what} instead",
                  file=sys.stderr, flush=True)
            continue
        atomic_write_bytes(path, data)
        print(f"musicbench: {what}: the published boards' weights, copied from {source} "
              f"(checked by SHA-256; `musicbench train` retrains)", file=sys.stderr, flush=True)
        return source
    return None
