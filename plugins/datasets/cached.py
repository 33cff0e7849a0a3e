"""The on-disk cache every rendered or decoded dataset shares: a folder named by a hash of
everything its content depends on, loaded if readable, rebuilt (and replaced) otherwise."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any


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
