"""Shipped weights (bench/shipped_weights.py): a missing checkpoint is copied from a shipped
folder whose SHA256SUMS vouches for it, instead of trained; a file that does not match is
skipped with a warning and the weights are trained; the repository's own manifest lists
exactly the weights it ships, and a source checkout finds it."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from test_denoise_unet import TINY, _defense, _tones, _workspace

from musicbench.errors import NotTrainedError
from musicbench.shipped_weights import (
    MANIFEST,
    SHIPPED_ENV,
    read_manifest,
    shipped_dirs,
    write_manifest,
)

REPO_WEIGHTS = Path(__file__).resolve().parent.parent / "leaderboards" / "weights"


@pytest.fixture
def shipped(toy_plugins, tmp_path) -> tuple[Path, Path]:
    """(a shipped folder holding tiny denoise-unet weights trained here, the file)."""
    trained = _defense(_workspace(toy_plugins, tmp_path / "trainer"), TINY)
    folder = tmp_path / "shipped"
    rel = Path(trained.checkpoint).relative_to(tmp_path / "trainer")
    (folder / rel).parent.mkdir(parents=True)
    shutil.copyfile(trained.checkpoint, folder / rel)
    write_manifest(folder)
    return folder, folder / rel


def test_a_missing_checkpoint_is_copied_from_the_shipped_folder_not_trained(
        toy_plugins, tmp_path, shipped, monkeypatch, capsys):
    folder, file = shipped
    monkeypatch.setenv(SHIPPED_ENV, str(folder))
    # training refused: only a copy can satisfy this load
    loaded = _defense(_workspace(toy_plugins, tmp_path / "fresh", allow_training=False), TINY)
    cached = tmp_path / "fresh" / file.relative_to(folder)
    assert cached.read_bytes() == file.read_bytes()
    assert "published boards' weights, copied from" in capsys.readouterr().err
    reference = _defense(_workspace(toy_plugins, tmp_path / "trainer"), TINY)
    x = _tones(2, 4000, seed=1)
    assert torch.equal(loaded.forward(x, torch.Generator()), reference.forward(x, torch.Generator()))


def test_a_file_that_does_not_match_its_digest_is_not_used(toy_plugins, tmp_path, shipped,
                                                             monkeypatch, capsys):
    folder, file = shipped
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))
    monkeypatch.setenv(SHIPPED_ENV, str(folder))
    with pytest.raises(NotTrainedError):
        _defense(_workspace(toy_plugins, tmp_path / "fresh", allow_training=False), TINY)
    assert "does not match its SHA-256" in capsys.readouterr().err
    assert not list((tmp_path / "fresh").rglob("*.safetensors"))
    # allowed to train, it trains (and gets what training gives)
    trained = _defense(_workspace(toy_plugins, tmp_path / "fresh"), TINY)
    assert Path(trained.checkpoint).read_bytes() != bytes(data)


def test_an_empty_setting_turns_shipped_weights_off(toy_plugins, tmp_path, shipped, monkeypatch):
    monkeypatch.setenv(SHIPPED_ENV, "")
    assert shipped_dirs() == []
    with pytest.raises(NotTrainedError):
        _defense(_workspace(toy_plugins, tmp_path / "fresh", allow_training=False), TINY)


def test_the_repository_manifest_lists_exactly_its_weights(monkeypatch):
    listed = read_manifest(REPO_WEIGHTS)
    files = {p.relative_to(REPO_WEIGHTS).as_posix(): p
             for p in REPO_WEIGHTS.rglob("*.safetensors")}
    assert listed and set(listed) == set(files), (
        "run python -c 'from pathlib import Path; from musicbench.shipped_weights import "
        "write_manifest; write_manifest(Path(\"leaderboards/weights\"))'")
    for rel, digest in listed.items():
        assert hashlib.sha256(files[rel].read_bytes()).hexdigest() == digest, rel
    monkeypatch.delenv(SHIPPED_ENV)  # a source checkout finds its own folder
    assert shipped_dirs() == [REPO_WEIGHTS] and (REPO_WEIGHTS / MANIFEST).is_file()
