"""Where musicbench keeps rendered datasets and trained weights."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "MUSICBENCH_HOME"


def cache_dir() -> Path:
    """``$MUSICBENCH_HOME`` if set, else the user cache dir (e.g. ``~/.cache/musicbench``)."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("musicbench"))
