"""The ``external`` attack and ``musicbench export-adv``: a run's kept adversarial clips,
exported and replayed through ``external``, are judged like the attack that made them; a file
edited past the bound fails that clip by name and keeps the rest; the cell key follows the
files' bytes; the leaderboard header names the external source."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import cli, run_toy_config
from test_planning import BASE

from musicbench.errors import ConfigError
from musicbench.export_adv import export_adversarial
from musicbench.leaderboard import planned_run
from musicbench_plugins.attacks.external import ExternalParams, index_submission

# pgd at L-inf 0.01 on 6 toy clips, every fooled clip kept
SOURCE = BASE.format(run="keep_audio = 6\nsanity = false", datasets="")

REPLAY = BASE.format(run="keep_audio = 0\nsanity = false", datasets="").split("[[attacks]]")[0]


def _replay_config(folder: Path, source: str = "pgd-replay") -> str:
    return REPLAY + f"""[[attacks]]
name = "external"
folder = "{folder}"
source = "{source}"
norm = "linf"
eps = 0.01
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """(the source run folder, the exported pgd cell's folder)."""
    root = tmp_path_factory.mktemp("external")
    (root / "source").mkdir()
    out = run_toy_config(root / "source", SOURCE)[1]
    cells = export_adversarial(out, root / "export", attack="pgd")
    assert len(cells) == 1 and cells[0].replayable and cells[0].clips > 0
    return out, cells[0].folder


def _cell(out: Path, attack: str):
    records, runs = planned_run(out)
    return next(r for r in records if r.names[3] == attack), runs


def test_exported_clips_replay_as_the_attack_that_made_them(exported, tmp_path):
    source_out, folder = exported
    meta = json.loads((folder / "export.json").read_text())
    assert meta["external_params"] == {"norm": "linf", "eps": 0.01}
    assert meta["threat_model_label"] == "L∞ ε=0.01"
    pgd, _ = _cell(source_out, "pgd")
    fooled = {s.sample_id for s in pgd.samples if s.success}
    assert set(index_submission(folder.resolve())) == fooled == {
        row.split(",")[0] for row in (folder / "manifest.csv").read_text().splitlines()[1:]}

    (tmp_path / "replay").mkdir()
    out = run_toy_config(tmp_path / "replay", _replay_config(folder))[1]
    ext, _ = _cell(out, "external")
    assert ext.status == "ok", ext.error
    assert ext.spec.threat_model == pgd.spec.threat_model  # joins pgd's worst case
    by_id = {s.sample_id: s for s in ext.samples}
    assert {sid for sid, s in by_id.items() if s.success} == fooled  # same clips, same verdict
    assert all(s.queries == 0 for s in ext.samples)
    assert not [f for f in ext.info.flags if f.startswith("external:")]
    board = (out / "leaderboard.md").read_text()
    assert "External adversarial audio" in board and "pgd-replay" in board


def test_a_file_past_the_bound_fails_that_clip_by_name_and_keeps_the_rest(exported, tmp_path):
    _, folder = exported
    edited = tmp_path / "edited"
    shutil.copytree(folder, edited)
    rows = (edited / "manifest.csv").read_text().splitlines()[1:]
    victim_id, victim_file = rows[0].split(",")
    audio, rate = sf.read(edited / victim_file, dtype="float32")
    audio[100] = np.clip(audio[100] + 0.05, -1, 1)  # 5x eps on one sample
    sf.write(edited / victim_file, audio, rate, subtype="PCM_24")

    (tmp_path / "a").mkdir()
    out_a = run_toy_config(tmp_path / "a", _replay_config(folder))[1]
    (tmp_path / "b").mkdir()
    out_b = run_toy_config(tmp_path / "b", _replay_config(edited))[1]
    clean, _ = _cell(out_a, "external")
    ext, _ = _cell(out_b, "external")
    assert ext.key != clean.key  # the files' bytes are part of the key
    notes = [f for f in ext.info.flags if f.startswith("external:")]
    assert len(notes) == 1 and f"clip {victim_id} rejected: L∞" in notes[0], notes
    assert "excess" in notes[0]
    by_id = {s.sample_id: s for s in ext.samples}
    assert not by_id[victim_id].success and by_id[victim_id].steps == 0
    kept = {s.sample_id for s in clean.samples if s.success} - {victim_id}
    assert kept and all(by_id[sid].success for sid in kept)  # the rest stand


def test_a_submission_cannot_reach_outside_its_folder(tmp_path):
    secret = tmp_path / "secret.wav"
    sf.write(secret, np.zeros(1600, dtype=np.float32), 16000)
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "toy-000.wav").symlink_to(secret)
    with pytest.raises(ValueError, match="outside"):
        index_submission(sub.resolve())
    (sub / "toy-000.wav").unlink()
    (sub / "manifest.csv").write_text("clip_id,path\ntoy-000,../secret.wav\n")
    with pytest.raises(ValueError, match="outside"):
        index_submission(sub.resolve())


def test_two_files_for_one_clip_and_bad_params_are_refused(tmp_path):
    for name in ("toy-000.wav", "toy-000.flac"):
        sf.write(tmp_path / name, np.zeros(1600, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="two files"):
        index_submission(tmp_path.resolve())
    with pytest.raises(ValueError, match="folder"):
        ExternalParams()
    with pytest.raises(ValueError, match="norm"):
        ExternalParams(folder="x", norm="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="snr_db"):
        ExternalParams(folder="x", norm="none", snr_db=30.0)


def test_the_export_command_prints_the_entries_that_replay_it(exported, tmp_path):
    source_out, _ = exported
    done = cli("export-adv", str(source_out), str(tmp_path / "cmd"), "--attack", "pgd")
    assert done.returncode == 0, done.stderr
    entry = tomllib.loads(done.stdout)["attacks"][0]
    assert entry["name"] == "external" and entry["norm"] == "linf" and entry["eps"] == 0.01
    assert Path(entry["folder"]).is_dir() and "clip(s)" in done.stderr
    refused = cli("export-adv", str(source_out), str(tmp_path / "x"), "--attack", "nope")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr


def test_export_refuses_a_run_without_kept_clips(exported, tmp_path):
    source_out, _ = exported
    with pytest.raises(ConfigError, match="kept adversarial clips"):
        export_adversarial(source_out, tmp_path / "x", attack="no-such-attack")
