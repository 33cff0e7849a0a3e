"""The on-disk cache every rendered or decoded dataset shares: a folder named by a hash of
everything its content depends on, loaded if readable, rebuilt (and replaced) otherwise
(public through :mod:`musicbench.api`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

INT16_SCALE = 32767.0
"""Clips are stored as int16: ``round(x * INT16_SCALE)``; decoding divides by it."""


def to_int16(audio: np.ndarray) -> np.ndarray:
    """float audio in [-1, 1] -> int16 (the stored form; decoding divides by 32767)."""
    return np.clip(np.round(audio * INT16_SCALE), -32767, 32767).astype(np.int16)


def recipe_path(cache_dir: Path | str, prefix: str, recipe: dict[str, Any]) -> Path:
    """``cache_dir/datasets/<prefix>-<16 hex of the recipe's sha256>``."""
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / "datasets" / f"{prefix}-{digest[:16]}"


def load_or_build(path: Path, load: Callable[[Path], None], build: Callable[[Path], None],
                  *, what: str) -> None:
    """``load(path)`` if the cache folder is there and readable; otherwise drop it,
    ``build(path)`` (which writes it atomically) and load what was written."""
    if path.is_dir():
        try:
            load(path)
            return
        except (OSError, ValueError, KeyError) as exc:
            warnings.warn(f"{what} cache at {path} is unreadable ({exc}); rebuilding",
                          stacklevel=3)
            shutil.rmtree(path, ignore_errors=True)
    build(path)
    load(path)


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``path`` to write into; on success rename it to
    ``path`` (so readers never see half a cache), on error or afterwards remove it. A folder
    that another process finished first wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():  # not "another process finished first"
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_clip_cache(path: Path, clips: np.ndarray, index: dict[str, Any]) -> None:
    """Write ``clips.npy`` (int16 ``[N, T]``) and ``index.json`` atomically into ``path``."""
    with atomic_folder(path) as tmp:
        np.save(tmp / "clips.npy", np.ascontiguousarray(clips, dtype="<i2"))
        (tmp / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True))


def read_clip_cache(
    path: Path, *, index_format: int, recipe: dict[str, Any],
    fingerprint: Callable[[np.ndarray, list[dict[str, Any]]], str],
) -> tuple[np.ndarray, dict[str, Any]]:
    """Memory-map a cache written by :func:`write_clip_cache` and check it is complete: its
    format and recipe match, the clips have the indexed shape, and ``fingerprint(clips,
    examples)`` equals the stored one. Raises ``ValueError`` otherwise (``load_or_build``
    then rebuilds)."""
    index = json.loads((path / "index.json").read_text())
    if index.get("format") != index_format or index.get("recipe") != recipe:
        raise ValueError("index does not match this recipe")
    clips = np.load(path / "clips.npy", mmap_mode="r")
    expected = (len(index["examples"]), int(index["clip_samples"]))
    if clips.dtype != np.int16 or clips.shape != expected:
        raise ValueError(f"clips.npy is {clips.dtype}{clips.shape}, expected int16{expected}")
    if fingerprint(clips, index["examples"]) != index["fingerprint"]:
        raise ValueError("content does not match the stored fingerprint")
    return clips, index
