"""``folder`` / ``folder-retrieval``: CSV manifests of the user's own files. Bad rows are skipped
with their reason; a malformed manifest is a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicbench.errors import ConfigError
from musicbench.interfaces import Context
from musicbench.plugins import PluginSystem
from musicbench_plugins.datasets.folder import FolderDataset, FolderRetrievalDataset, Params

SPLITS = ("train", "valid", "test")


def _ctx(cache_dir: Path) -> Context:
    return Context(cache_dir=cache_dir, device=torch.device("cpu"))


def _wav(path: Path, hz: float, seconds: float = 1.2, rate: int = 22_050) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate)
    return path.name


def _manifest(folder: Path, text: str) -> str:
    path = folder / "manifest.csv"
    path.write_text(text)
    return str(path)


def _make(cls, manifest: str, **kw):
    ds = cls(Params(manifest=manifest, clip_seconds=1.0, **kw))
    ds.name = "folder-retrieval" if cls is FolderRetrievalDataset else "folder"
    return ds


def _all(ds):
    return [e for s in SPLITS for e in ds.examples(s)]


# -- classification ------------------------------------------------------------------------------


def test_classification_manifest_with_splits_and_bad_rows(tmp_path: Path) -> None:
    d = tmp_path / "data"
    for i, name in enumerate(["a", "b", "c", "d"]):
        _wav(d / "audio" / f"{name}.wav", 300 + 50 * i)
    _wav(d / "audio" / "short.wav", 500, seconds=0.4)
    (d / "audio" / "text.wav").write_text("not audio")
    elsewhere = tmp_path / "abs.wav"
    _wav(elsewhere, 700)
    manifest = _manifest(d, (
        "Path , Label,split,comment\n"
        "audio/a.wav,rock,train,first\n"
        "audio/b.wav,jazz,TRAIN,\n"
        f"{elsewhere},jazz,test,absolute path\n"
        "audio/c.wav,rock,valid,\n"
        "audio/d.wav,rock,tset,\n"          # unknown split
        "audio/missing.wav,blues,train,\n"  # missing file
        "audio/short.wav,jazz,train,\n"     # shorter than clip_seconds
        "audio/text.wav,jazz,train,\n"      # not audio
        "audio/c.wav,jazz,test,\n"          # same file again
        "audio/a.wav,,train,\n"             # empty label
        "\n"
    ))
    ds = _make(FolderDataset, manifest)
    ds.prepare(_ctx(tmp_path / "cache"))
    # Sorted unique labels of every row: a broken file never changes the label indices.
    assert ds.labels == ("blues", "jazz", "rock")
    got = {s: [(e.id, ds.labels[e.label]) for e in ds.examples(s)] for s in SPLITS}
    assert got == {"train": [("audio/b.wav", "jazz"), ("audio/a.wav", "rock")],
                   "valid": [("audio/c.wav", "rock")],
                   "test": [(str(elsewhere), "jazz")]}
    first = ds.examples("train")[1]
    assert first.meta["comment"] == "first" and first.audio.shape == (16_000,)
    reasons = dict(ds.problems())
    assert "unknown split 'tset'" in reasons["audio/d.wav"]
    assert "no such file" in reasons["audio/missing.wav"]
    assert "too short" in reasons["audio/short.wav"]
    assert "not an audio file" in reasons["audio/text.wav"]
    assert "same file as line 5" in reasons["audio/c.wav"]
    assert "empty label" in reasons["audio/a.wav"]
    assert len(ds.problems()) == 6


def test_without_split_column_the_split_is_seeded_and_stratified(tmp_path: Path) -> None:
    rows = ["path,label"]
    for label in ("x", "y"):
        for k in range(5):
            rows.append(f"{label}{k}.wav,{label}")
            _wav(tmp_path / f"{label}{k}.wav", 200 + 30 * k + (0 if label == "x" else 11))
    manifest = _manifest(tmp_path, "\n".join(rows) + "\n")
    a = _make(FolderDataset, manifest)
    a.prepare(_ctx(tmp_path / "c1"))
    for s in SPLITS:
        assert {a.labels[e.label] for e in a.examples(s)} == {"x", "y"}
    b = _make(FolderDataset, manifest)
    b.prepare(_ctx(tmp_path / "c2"))
    assert a.fingerprint() == b.fingerprint()
    c = _make(FolderDataset, manifest, seed=3)
    c.prepare(_ctx(tmp_path / "c1"))
    assert {e.id for e in c.examples("test")} != {e.id for e in a.examples("test")} or \
        {e.id for e in c.examples("valid")} != {e.id for e in a.examples("valid")}


def test_examples_are_a_lazy_sequence(tmp_path: Path) -> None:
    _wav(tmp_path / "a.wav", 300)
    _wav(tmp_path / "b.wav", 400)
    ds = _make(FolderDataset, _manifest(tmp_path, "path,label,split\na.wav,p,test\nb.wav,q,test\n"))
    ds.prepare(_ctx(tmp_path))
    test = ds.examples("test")
    assert len(test) == 2 and test[-1].id == "b.wav"
    assert [e.id for e in test[0:2]] == ["a.wav", "b.wav"]
    assert test[0].audio.dtype == torch.float32
    assert list(ds.queries("test"))[0].id == "a.wav"  # classification: queries = examples


@pytest.mark.parametrize("text,match", [
    ("file,label\na.wav,x\n", "no 'path' column"),
    ("path,work_id\na.wav,w\n", "use dataset 'folder-retrieval'"),
    ("path,label,work_id\na.wav,x,w\n", "both a 'label' and a 'work_id' column"),
    ("path,label,role\na.wav,x,query\n", "'role' column only applies"),
    ("", "empty"),
])
def test_malformed_manifests_are_config_errors(tmp_path: Path, text: str, match: str) -> None:
    ds = _make(FolderDataset, _manifest(tmp_path, text))
    with pytest.raises(ConfigError, match=match):
        ds.prepare(_ctx(tmp_path))


def test_missing_or_binary_manifest_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read manifest"):
        _make(FolderDataset, str(tmp_path / "nope.csv")).prepare(_ctx(tmp_path))
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00path")
    with pytest.raises(ConfigError, match="not UTF-8"):
        _make(FolderDataset, str(tmp_path / "bin.csv")).prepare(_ctx(tmp_path))
    with pytest.raises(ValueError, match="manifest is required"):
        Params()


def test_a_manifest_of_only_bad_rows_is_an_error_naming_them(tmp_path: Path) -> None:
    (tmp_path / "x.wav").write_text("no")
    ds = _make(FolderDataset, _manifest(tmp_path, "path,label\nx.wav,a\n"))
    with pytest.raises(Exception, match="no usable audio files.*x.wav"):
        ds.prepare(_ctx(tmp_path))


# -- retrieval -----------------------------------------------------------------------------------


def test_registered_tasks_are_read_on_the_class_as_the_planner_does() -> None:
    plugins = PluginSystem()
    assert plugins.get("dataset", "folder").load().task == "classification"
    assert plugins.get("dataset", "folder-retrieval").load().task == "retrieval"


def test_retrieval_without_roles_first_file_of_a_work_is_the_reference(tmp_path: Path) -> None:
    rows = ["path,work_id"]
    for w in range(6):
        for v in range(3 if w else 1):  # work 0 has a single file: a reference only
            rows.append(f"w{w}/v{v}.wav,song{w}")
            _wav(tmp_path / f"w{w}" / f"v{v}.wav", 200 + 20 * w + 3 * v)
    ds = _make(FolderRetrievalDataset, _manifest(tmp_path, "\n".join(rows) + "\n"),
               valid_fraction=0.2, test_fraction=0.2)
    ds.prepare(_ctx(tmp_path / "cache"))
    assert ds.labels == ()
    works = {s: {e.work_id for e in ds.examples(s)} for s in SPLITS}
    assert not works["train"] & works["test"] and not works["train"] & works["valid"]
    assert sum(len(w) for w in works.values()) == 6
    for s in SPLITS:
        refs = ds.references(s)
        assert all(e.id.endswith("/v0.wav") and e.meta["role"] == "reference" for e in refs)
        assert {e.work_id for e in ds.queries(s)} <= {e.work_id for e in refs}
        assert all(e.label is None for e in ds.examples(s))


def test_retrieval_roles_are_kept_and_queries_without_a_reference_dropped(tmp_path: Path) -> None:
    for name, hz in [("r1", 300), ("q1", 310), ("q2", 320), ("r2", 400), ("q3", 410)]:
        _wav(tmp_path / f"{name}.wav", hz)
    (tmp_path / "r2.wav").write_text("broken reference")
    manifest = _manifest(tmp_path, (
        "path,work_id,split,role\n"
        "q1.wav,a,test,query\n"
        "r1.wav,a,test,reference\n"
        "q2.wav,a,test,query\n"
        "r2.wav,b,test,reference\n"
        "q3.wav,b,test,query\n"
        "q3.wav,b,test,cover\n"
    ))
    ds = _make(FolderRetrievalDataset, manifest)
    ds.prepare(_ctx(tmp_path / "cache"))
    assert [e.id for e in ds.references("test")] == ["r1.wav"]
    assert [e.id for e in ds.queries("test")] == ["q1.wav", "q2.wav"]
    reasons = dict(ds.problems())
    assert "not an audio file" in reasons["r2.wav"]
    q3 = [r for k, r in ds.problems() if k == "q3.wav"]
    assert len(q3) == 2
    assert any("line 7: unknown role 'cover'" in r for r in q3)
    assert any("work 'b' has no usable reference in split 'test'" in r for r in q3)


def test_a_work_in_two_splits_and_a_label_column_are_config_errors(tmp_path: Path) -> None:
    _wav(tmp_path / "a.wav", 300)
    _wav(tmp_path / "b.wav", 330)
    two = _manifest(tmp_path, "path,work_id,split\na.wav,w,train\nb.wav,w,test\n")
    with pytest.raises(ConfigError, match="work 'w' is in splits"):
        _make(FolderRetrievalDataset, two).prepare(_ctx(tmp_path))
    labelled = _manifest(tmp_path, "path,label\na.wav,x\n")
    with pytest.raises(ConfigError, match="use dataset 'folder'"):
        _make(FolderRetrievalDataset, labelled).prepare(_ctx(tmp_path))
