"""Find the files of the ``musicnn==0.1.0`` wheel, which ships the pretrained checkpoints.

The weights of the musicnn taggers (Pons & Serra, ISMIR 2019 LBD) are TensorFlow checkpoints
inside the ``musicnn`` 0.1.0 wheel on PyPI (ISC licence, (c) Music Technology Group, Universitat
Pompeu Fabra). We never import or install the package; we only read its checkpoint files, in
this order of places:

1. ``$MUSICBENCH_MUSICNN_WHEEL``: a path to the wheel file, to a folder holding it, or to an
   unpacked ``musicnn`` package folder;
2. an installed ``musicnn`` package (its folder, found without importing it);
3. ``<cache dir>/musicnn/musicnn-0.1.0-py3-none-any.whl``;
4. otherwise the ordinary pip client downloads the wheel into that cache folder
   (``python -m pip download --no-deps --only-binary=:all: musicnn==0.1.0``).

Files are read straight out of the zip. Every checkpoint file is checked against the SHA-256
recorded below, so a different or damaged copy is refused (or, in the cache, fetched again)
rather than silently converted.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

WHEEL_ENV = "MUSICBENCH_MUSICNN_WHEEL"
WHEEL_NAME = "musicnn-0.1.0-py3-none-any.whl"
REQUIREMENT = "musicnn==0.1.0"
WHEEL_SHA256 = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"

Dataset = Literal["MTT", "MSD"]

# SHA-256 of the checkpoint files inside the 0.1.0 wheel.
CHECKPOINT_SHA256: dict[str, str] = {
    "MTT_musicnn/.index": "da2d7bb670b2b31e9bc441bb1bd75eca31b5b061f963cc1f9630c1aff3238f57",
    "MTT_musicnn/.data-00000-of-00001":
        "041f3935e981a65cea739842d30c188d3a7d2adf4410955c8668eb3de4a5acab",
    "MSD_musicnn/.index": "87f3e0f3550c8d3bafc840374003e5c8af5eeb5ecf6add61af09a7822d3282c8",
    "MSD_musicnn/.data-00000-of-00001":
        "8579734ee6388f799ed0def4bbd0d1fdcbeaf213ef2a9dc860917bd76a303de6",
}


class MusicnnWheelError(RuntimeError):
    """The musicnn files could not be found, fetched or verified."""


@dataclass(frozen=True)
class MusicnnFiles:
    """The ``musicnn`` package's files, in a wheel (zip) or in an unpacked package folder."""

    path: Path
    kind: Literal["wheel", "folder"]

    def read(self, member: str) -> bytes:
        """Bytes of ``member``, relative to the package folder (e.g. ``"models.py"``)."""
        if self.kind == "wheel":
            with zipfile.ZipFile(self.path) as z:
                try:
                    return z.read(f"musicnn/{member}")
                except KeyError:
                    raise MusicnnWheelError(f"{self.path} has no musicnn/{member}") from None
        file = self.path / member
        if not file.is_file():
            raise MusicnnWheelError(f"{self.path} has no {member}")
        return file.read_bytes()

    def checkpoint(self, dataset: Dataset) -> tuple[bytes, bytes]:
        """``(index, data)`` bytes of ``<dataset>_musicnn``, verified against their SHA-256."""
        out = []
        for suffix in (".index", ".data-00000-of-00001"):
            member = f"{dataset}_musicnn/{suffix}"
            data = self.read(member)
            digest = hashlib.sha256(data).hexdigest()
            if digest != CHECKPOINT_SHA256[member]:
                raise MusicnnWheelError(
                    f"{self.path}: musicnn/{member} has SHA-256 {digest}, expected "
                    f"{CHECKPOINT_SHA256[member]} ({REQUIREMENT}). Point {WHEEL_ENV} at an "
                    f"unmodified {WHEEL_NAME}, or delete the file to fetch it again.")
            out.append(data)
        return out[0], out[1]

    def __str__(self) -> str:
        return str(self.path)


def _from_user_path(path: Path) -> MusicnnFiles:
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise MusicnnWheelError(f"{WHEEL_ENV}={path} is not a wheel (zip) file")
        return MusicnnFiles(path, "wheel")
    if path.is_dir():
        if (path / WHEEL_NAME).is_file():
            return MusicnnFiles(path / WHEEL_NAME, "wheel")
        for folder in (path, path / "musicnn"):
            if (folder / "MTT_musicnn" / ".index").is_file():
                return MusicnnFiles(folder, "folder")
        raise MusicnnWheelError(
            f"{WHEEL_ENV}={path} is a folder with neither {WHEEL_NAME} nor an unpacked musicnn "
            "package (MTT_musicnn/.index) in it")
    raise MusicnnWheelError(f"{WHEEL_ENV}={path} does not exist")


def _installed_package() -> MusicnnFiles | None:
    try:
        spec = importlib.util.find_spec("musicnn")  # locates without importing
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        if importlib.metadata.version("musicnn") != "0.1.0":
            return None
    except importlib.metadata.PackageNotFoundError:
        pass  # a source checkout on sys.path: the checkpoint hashes decide
    for location in spec.submodule_search_locations:
        folder = Path(location)
        if all((folder / m).is_file() for m in CHECKPOINT_SHA256):
            return MusicnnFiles(folder, "folder")
    return None


def _wheel_ok(path: Path) -> bool:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest == WHEEL_SHA256


def download(dest: Path) -> Path:
    """Fetch the wheel into ``dest`` with ``python -m pip download``; returns its path."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), REQUIREMENT]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MusicnnWheelError(_help(dest, f"running pip failed: {exc}")) from exc
    wheel = dest / WHEEL_NAME
    if proc.returncode != 0 or not wheel.is_file():
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-5:])
        raise MusicnnWheelError(_help(dest, f"`{' '.join(cmd)}` failed:\n{tail}"))
    return wheel


def _help(dest: Path, why: str) -> str:
    return (f"could not obtain the musicnn weights ({REQUIREMENT}): {why}\n"
            f"To fix: on a machine with internet run `pip download --no-deps {REQUIREMENT}`, "
            f"then copy {WHEEL_NAME} to {dest}/ or set {WHEEL_ENV} to its path "
            "(or `pip install musicnn==0.1.0 --no-deps` into this environment).")


def locate(cache_dir: Path, *, allow_download: bool = True) -> MusicnnFiles:
    """Find (or fetch) the musicnn files; see the module docstring for the order."""
    env = os.environ.get(WHEEL_ENV)
    if env:
        return _from_user_path(Path(env).expanduser())
    installed = _installed_package()
    if installed is not None:
        return installed
    dest = cache_dir / "musicnn"
    cached = dest / WHEEL_NAME
    if cached.is_file():
        if _wheel_ok(cached):
            return MusicnnFiles(cached, "wheel")
        cached.unlink()  # damaged or partial: fetch again
    if not allow_download:
        raise MusicnnWheelError(_help(dest, "it is not in the cache and downloading is off"))
    wheel = download(dest)
    if not _wheel_ok(wheel):
        raise MusicnnWheelError(
            f"the downloaded {wheel} does not have the SHA-256 of {REQUIREMENT} "
            f"({WHEEL_SHA256}); refusing to use it")
    return MusicnnFiles(wheel, "wheel")
