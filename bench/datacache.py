"""The on-disk cache every rendered or decoded dataset shares: a folder named by a hash of
everything its content depends on, loaded if readable, rebuilt (and replaced) otherwise
(public through :mod:`musicbench.api`)."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import mmap
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from musicbench.files import (
    default_dir_mode,
    describe_holder,
    file_lock,
    storage_full_as_error,
)

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
    ``build(path)`` (which writes it atomically) and load what was written.

    Building holds :func:`build_lock` on the entry: a second process (or thread) that wants the
    same entry meanwhile waits, saying so on stderr, then loads what the first built instead of
    building it again; if the first died, the lock died with it and the second builds."""
    if _try_load(path, load, what):
        return
    with build_lock(path, what=what):
        if _try_load(path, load, what):  # built by whoever held the lock before us
            return
        remove_stale_builds(path)
        build(path)
    load(path)


def remove_stale_builds(path: Path) -> list[Path]:
    """Remove the temp folders (``.<name>.tmp-*``, :func:`atomic_folder`) that builds of cache
    entry ``path`` killed before they finished left beside it; returns them. Call it only
    holding :func:`build_lock` on ``path``: then no other process is building this entry, so
    every such folder is a dead build's (a live one's would be deleted under it)."""
    stale = sorted(path.parent.glob(f".{glob.escape(path.name)}.tmp-*"))
    for folder in stale:
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                folder.unlink()
    return stale


def _try_load(path: Path, load: Callable[[Path], None], what: str) -> bool:
    if not path.is_dir():
        return False
    try:
        load(path)
        return True
    except (OSError, ValueError, KeyError) as exc:
        warnings.warn(f"{what} cache at {path} is unreadable ({exc}); rebuilding",
                      stacklevel=4)
        shutil.rmtree(path, ignore_errors=True)
        return False


def build_lock(path: Path, *, what: str) -> contextlib.AbstractContextManager[None]:
    """The lock on building cache entry ``path`` (a file or a folder): an exclusive
    :func:`musicbench.files.file_lock` on ``.<name>.lock`` beside it, waited for with a note on
    stderr naming the holder. For caches not built through :func:`load_or_build` (weights
    trained on first use hold it while training)."""
    path = Path(path)
    return file_lock(path.parent / f".{path.name}.lock", what=f"building {what} at {path}",
                     on_wait=lambda holder: _note_wait(what, path, holder))


def _note_wait(what: str, path: Path, holder: dict[str, str]) -> None:
    print(f"musicbench: waiting for {describe_holder(holder)}, which is building {what} at "
          f"{path}; it will be reused", file=sys.stderr, flush=True)


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``path`` to write into; on success rename it to
    ``path`` (so readers never see half a cache), on error or afterwards remove it. A folder
    that another process finished first wins. A full disk while it is written (by the ``with``
    block too) is a :class:`~musicbench.errors.StorageFullError` naming the file (or the
    entry), and the half-written folder is removed; one a kill left is removed by the next
    build (:func:`remove_stale_builds`)."""
    with storage_full_as_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with storage_full_as_error(path):  # judged before the half-written folder goes
            os.chmod(tmp, default_dir_mode())  # mkdtemp's 0700 -> the umask's, like every cache
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
    release_pages(clips)
    return clips, index


def release_pages(clips: np.ndarray) -> None:
    """Drop the pages hashing a memory-mapped cache just read from this process's resident
    memory (they stay in the OS page cache): otherwise every clip of every split counts
    against the run's memory (m21-styles: 340 MB) although a run reads only the test split."""
    mapping = getattr(clips, "_mmap", None)
    if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)
