"""What a reader needs to rerun a leaderboard: versions, revision, device, machine."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

import musicbench


def git_revision() -> str:
    """The musicbench source tree's git revision (``+dirty`` if modified), or ``unknown``."""
    root = Path(musicbench.__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything but ``auto``, ``cpu``,
    ``cuda`` and ``cuda:N``, or a GPU this machine lacks, is a :class:`ConfigError` naming
    ``[run] key 'device'`` (the key ``--device`` overrides), raised before anything is
    created. Every command that takes a device comes here."""
    from musicbench.config import check_device_name
    from musicbench.errors import ConfigError

    try:
        check_device_name(name)
    except ValueError as exc:
        raise ConfigError(f"{exc} (from --device or the config)", table="run",
                          key="device") from None
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{name}' requested but torch sees no CUDA GPU; use auto "
                              "or cpu", table="run", key="device")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device '{name}' requested but torch sees "
                              f"{torch.cuda.device_count()} CUDA GPU(s) (cuda:0 to "
                              f"cuda:{torch.cuda.device_count() - 1})", table="run",
                              key="device")
    return torch.device(name)


def describe_environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "musicbench": musicbench.__version__,
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        # what decides whether a GPU rerun repeats the figures bit for bit (the leaderboard
        # header prints them)
        env["cudnn_deterministic"] = bool(torch.backends.cudnn.deterministic)
        env["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
        env["deterministic_algorithms"] = bool(torch.are_deterministic_algorithms_enabled())
    return env
