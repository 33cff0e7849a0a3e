"""``folder`` and ``folder-retrieval``: your own audio files, listed in a CSV manifest.

Manifest (UTF-8 CSV, a header row, one row per file; header names are matched case-insensitively
and stripped of spaces; other columns are ignored and kept in each example's ``meta``)::

    path,label,split                  path,work_id,split,role
    audio/a.wav,jazz,train            covers/w1-orig.flac,w1,test,reference
    /data/b.flac,rock,test            covers/w1-live.flac,w1,test,query

=========== =============================================================================
``path``    required. Relative paths resolve against the manifest's folder.
``label``   ``folder`` (classification): the class name. Labels are the sorted unique
            non-empty label strings of every row (usable or not, so a broken file never
            changes the label indices).
``work_id`` ``folder-retrieval``: the work (song) a file is a version of.
``split``   optional: ``train``, ``valid`` or ``test`` (case-insensitive). Without the column,
            a seeded split by ``valid_fraction``/``test_fraction``: stratified by label
            (classification, by file) or by work (retrieval: every version of a work lands
            in the same split). The split is drawn over every well-formed row whose file
            exists, *before* decoding, so whether a file decodes (say, once it is repaired)
            never moves another file to another split.
``role``    optional, retrieval only: ``query`` or ``reference``. Without the column, the
            first usable file of each work (in manifest order) within its split is the
            reference and the others are queries; a work with one usable file is a
            reference only (a distractor).
=========== =============================================================================

Why two names: the harness matches models to datasets by the *class* attribute ``task``
before instantiating anything (``musicbench.planner.model_dataset_pairs``), so a single class
cannot decide its task from the manifest it is given. ``folder`` rejects a manifest with a
``work_id`` column (and ``folder-retrieval`` one with a ``label`` column), naming the other
dataset; a manifest with both columns is rejected by both.

Every example is the centred ``clip_seconds`` excerpt of its file (all examples have one length,
so the harness can batch them), decoded once by :func:`musicbench.audio.load_audio` (mono,
resampled to ``sample_rate``) and stored as int16 (a rounding ~96 dB below full scale; cached
and freshly built datasets are identical). Bad rows are skipped and listed in
:meth:`~AudioFileDataset.problems` with their reason: missing or unreadable file, broken audio
(every kind :class:`~musicbench.audio.BadAudioError` names), shorter than ``clip_seconds``, an
empty label/work id, an unknown split or role value, a file listed twice, a query whose work
has no usable reference in its split. A malformed manifest (unreadable, no header, no ``path``
column, the wrong task's column, a work in two splits) is a :class:`~musicbench.errors.ConfigError`.

Cache: ``<cache>/datasets/<name>-<hash>/`` keyed by the manifest's bytes, every listed file's
resolved path, size and modification time, the parameters and the decoder versions; it holds
``clips.i16`` (raw little-endian int16 ``[n, clip_samples]``) and ``index.json``, written to a
temporary folder and renamed into place. Decoding is ~15 ms per 30 s file; the cache spares
every further process (e.g. each executor worker) the decode, and ``prepare`` of a cached
dataset only re-hashes the stored clips to check them.

:class:`AudioFileDataset` is the machinery shared with ``gtzan``.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, overload

import numpy as np

from musicbench.api import (
    INT16_SCALE,
    atomic_folder,
    check_seed,
    load_or_build,
    recipe_path,
    to_int16,
)
from musicbench.audio import BadAudioError, load_audio, printable, stat_input
from musicbench.errors import ConfigError, MusicbenchError
from musicbench.files import read_input_file
from musicbench.interfaces import Dataset, Example

if TYPE_CHECKING:
    from musicbench.interfaces import Context

SPLITS: tuple[str, ...] = ("train", "valid", "test")
ROLES: tuple[str, ...] = ("query", "reference")
#: 2: skip reasons quote no file content (issue 26). Part of the cache recipe, so an entry
#: written before (its reasons may quote a private file's first bytes) is built again, not
#: reused; the clips and the fingerprint are the same.
_INDEX_FORMAT = 2

log = logging.getLogger("musicbench.datasets")


# ----------------------------------------------------------------------------------------------
# Shared machinery (also used by gtzan)


@dataclass
class Candidate:
    """One file that a dataset wants to use, before decoding.

    ``split`` (and ``role``, retrieval) may be ``None``: assigned by the dataset. ``source`` is
    how the file is named in :meth:`AudioFileDataset.problems`.
    """

    id: str
    path: Path
    source: str
    label: int | None = None
    work_id: str | None = None
    split: str | None = None
    role: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scan:
    """What a dataset found before decoding: usable candidates, rows already rejected
    (``(source, kind, reason)``), its labels, and extra cache-key material."""

    candidates: list[Candidate]
    problems: list[tuple[str, str, str]]
    labels: tuple[str, ...]
    key: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


def stable_int(text: str) -> int:
    """A 64-bit integer from ``text``, the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def stratified_split(
    groups: dict[str, list[str]], *, valid_fraction: float, test_fraction: float, seed: int,
    salt: str,
) -> dict[str, str]:
    """``{key: split}``: per group, the sorted keys are shuffled (seeded by ``seed`` and the
    group) and cut into test / valid / train. Groups of >= 3 keys give every split with a
    non-zero fraction at least one key."""
    out: dict[str, str] = {}
    for group, keys in sorted(groups.items()):
        ids = sorted(set(keys))
        rng = np.random.default_rng(np.random.SeedSequence([seed, stable_int(salt + group)]))
        order = [ids[i] for i in rng.permutation(len(ids))]
        n = len(ids)
        n_test = round(test_fraction * n)
        n_valid = round(valid_fraction * n)
        if n >= 3:
            n_test = max(n_test, 1 if test_fraction > 0 else 0)
            n_valid = max(n_valid, 1 if valid_fraction > 0 else 0)
        out |= {k: "test" for k in order[:n_test]}
        out |= {k: "valid" for k in order[n_test : n_test + n_valid]}
        out |= {k: "train" for k in order[n_test + n_valid :]}
    return out


def check_fractions(valid_fraction: float, test_fraction: float) -> None:
    for name, v in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {v}")
    if valid_fraction + test_fraction >= 1.0:
        raise ValueError("valid_fraction + test_fraction must leave files for training, got "
                         f"{valid_fraction} + {test_fraction}")


def check_audio_params(clip_seconds: float, sample_rate: int) -> None:
    if not 0.1 <= clip_seconds <= 600.0:
        raise ValueError(f"clip_seconds must be in [0.1, 600], got {clip_seconds}")
    if not 8_000 <= sample_rate <= 384_000:
        raise ValueError(f"sample_rate must be in [8000, 384000] Hz, got {sample_rate}")


class StoredExamples(Sequence):
    """Examples decoded on access from an int16 store ``clips[n, T]`` (e.g. a memory map).

    ``entries`` are dicts with ``id``, ``clip`` (row of ``clips``), ``label``, ``work_id``,
    ``role`` (``None`` or ``"query"``/``"reference"``, copied into ``meta``) and ``meta``.
    """

    def __init__(self, clips: np.ndarray, entries: list[dict[str, Any]]):
        self._clips, self._entries = clips, entries

    def __len__(self) -> int:
        return len(self._entries)

    @overload
    def __getitem__(self, i: int) -> Example: ...
    @overload
    def __getitem__(self, i: slice) -> list[Example]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        import torch

        e = self._entries[i]
        audio = np.asarray(self._clips[e["clip"]], dtype=np.float32) / np.float32(INT16_SCALE)
        meta = dict(e["meta"], role=e["role"]) if e["role"] else dict(e["meta"])
        return Example(id=e["id"], audio=torch.from_numpy(audio), label=e["label"],
                       work_id=e["work_id"], meta=meta)


class AudioFileDataset(Dataset):
    """A dataset of fixed-length excerpts of audio files, decoded once and cached.

    Subclasses set ``cache_prefix`` and implement :meth:`scan`; ``Params`` must have
    ``clip_seconds``, ``sample_rate``, ``valid_fraction``, ``test_fraction`` and ``seed``.
    """

    cache_prefix: ClassVar[str] = "files"

    def __init__(self, params: Any | None = None):
        super().__init__(params)
        self.sample_rate = int(self.params.sample_rate)
        self._clips: np.ndarray | None = None
        self._index: dict[str, Any] | None = None

    # -- hooks ---------------------------------------------------------------------------------

    def scan(self) -> Scan:
        """List the files (no decoding). Raises :class:`ConfigError` for malformed inputs."""
        raise NotImplementedError

    def split_groups(self, cands: list[Candidate]) -> tuple[dict[str, list[str]], str]:
        """How candidates without a split are split: ``({group: [unit]}, unit attribute)``.
        Default: classification by file within label, retrieval by work."""
        groups: dict[str, list[str]] = {}
        if self.task == "retrieval":
            for c in cands:
                groups.setdefault("", []).append(str(c.work_id))
            return groups, "work_id"
        for c in cands:
            groups.setdefault(self.labels[c.label] if c.label is not None else "", []).append(c.id)
        return groups, "id"

    # -- Dataset API ---------------------------------------------------------------------------

    def prepare(self, ctx: Context) -> None:
        """Scan, then load the decoded clips from the cache or decode and cache them."""
        scan = self.scan()
        self.labels = scan.labels
        recipe = self._recipe(scan)
        path = recipe_path(ctx.cache_dir, self.cache_prefix, recipe)
        load_or_build(path, lambda p: self._load(p, recipe),
                      lambda p: self._build(ctx, scan, recipe, p),
                      what=self.name or self.cache_prefix)
        self._report()

    def examples(self, split: str) -> Sequence[Example]:
        """Clips of ``split`` (``Tensor[clip_samples]`` float32 in [-1, 1]), ordered by label
        (classification) or work, then id; decoded from the store on access."""
        return StoredExamples(self._store(), self._entries(split))

    def queries(self, split: str) -> Sequence[Example]:
        if self.task != "retrieval":
            return self.examples(split)
        return StoredExamples(self._store(),
                              [e for e in self._entries(split) if e["role"] == "query"])

    def references(self, split: str) -> Sequence[Example]:
        if self.task != "retrieval":
            return super().references(split)
        return StoredExamples(self._store(),
                         [e for e in self._entries(split) if e["role"] == "reference"])

    def fingerprint(self) -> str:
        """sha256 hex of the ids, labels, work ids, splits, roles and int16 clip bytes."""
        return str(self._need()["fingerprint"])

    def problems(self) -> list[tuple[str, str]]:
        return [(s, r) for s, _, r in self._need()["problems"]]

    def problem_counts(self) -> dict[str, int]:
        """How many inputs were skipped, by kind (``missing``, ``truncated``, ...)."""
        out: dict[str, int] = {}
        for _, kind, _ in self._need()["problems"]:
            out[kind] = out.get(kind, 0) + 1
        return out

    @property
    def info(self) -> dict[str, Any]:
        """What the scan found besides examples and problems (e.g. files left out)."""
        return dict(self._need()["info"])

    # -- internals -----------------------------------------------------------------------------

    def _need(self) -> dict[str, Any]:
        if self._index is None:
            raise RuntimeError(f"{type(self).__name__}: call prepare(ctx) first")
        return self._index

    def _store(self) -> np.ndarray:
        self._need()
        assert self._clips is not None
        return self._clips

    def _entries(self, split: str) -> list[dict[str, Any]]:
        index = self._need()
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        return [e for e in index["examples"] if e["split"] == split]

    def _recipe(self, scan: Scan) -> dict[str, Any]:
        import scipy
        import soundfile

        files = []
        for c in scan.candidates:
            try:
                st = c.path.stat()
                files.append([c.id, str(c.path), st.st_size, st.st_mtime_ns])
            except OSError:
                files.append([c.id, str(c.path), None, None])
        return {
            "format": _INDEX_FORMAT,
            "dataset": self.cache_prefix,
            "class": type(self).__name__,
            "version": self.version,
            "params": asdict(self.params),
            "decoder": [soundfile.__version__, soundfile.__libsndfile_version__,
                        scipy.__version__],
            "key": scan.key,
            "files": files,
        }

    def _report(self) -> None:
        index = self._need()
        if index["problems"]:
            n = len(index["problems"])
            log.warning("%s: skipped %d input(s), e.g. %s: %s (all in problems())",
                        self.name or self.cache_prefix, n, *index["problems"][0][::2])

    def _build(self, ctx: Context, scan: Scan, recipe: dict[str, Any], path: Path) -> None:
        p = self.params
        cands = scan.candidates
        # Shown and stored as UTF-8: a file name that is not valid UTF-8 is written escaped.
        problems = [(printable(s), k, printable(r)) for s, k, r in scan.problems]
        todo = [c for c in cands if c.split is None]
        if todo:
            groups, unit = self.split_groups(todo)
            split_of = stratified_split(groups, valid_fraction=p.valid_fraction,
                                        test_fraction=p.test_fraction, seed=p.seed,
                                        salt=f"{self.cache_prefix}/split/")
            for c in todo:
                c.split = split_of[str(getattr(c, unit))]
        n_samples = round(p.clip_seconds * self.sample_rate)
        with atomic_folder(path) as tmp:
            decoded: list[tuple[Candidate, int]] = []
            with open(tmp / "clips.i16", "wb") as out, \
                    ctx.progress(f"decoding {self.name or self.cache_prefix}",
                                 total=len(cands)) as task:
                for c in cands:
                    try:
                        audio = load_audio(c.path, self.sample_rate, min_seconds=p.clip_seconds)
                    except BadAudioError as exc:
                        problems.append((printable(c.source), exc.kind, exc.reason))
                    else:
                        x = audio.numpy()
                        start = (x.shape[0] - n_samples) // 2
                        clip = to_int16(x[start : start + n_samples]).astype("<i2", copy=False)
                        out.write(clip.tobytes())
                        decoded.append((c, len(decoded)))
                    task.advance()
            if self.task == "retrieval":
                decoded = self._assign_roles(decoded, problems)
            if not decoded:
                shown = "; ".join(f"{s}: {r}" for s, _, r in problems[:5])
                raise MusicbenchError(
                    f"{self.name or self.cache_prefix}: no usable audio files "
                    f"({len(problems)} skipped{': ' + shown if shown else ''})")
            decoded.sort(key=lambda d: (SPLITS.index(str(d[0].split)),
                                        -1 if d[0].label is None else d[0].label,
                                        d[0].work_id or "", d[0].id))
            entries = [{"id": c.id, "clip": k, "label": c.label, "work_id": c.work_id,
                        "split": c.split, "role": c.role, "meta": c.meta} for c, k in decoded]
            size = (tmp / "clips.i16").stat().st_size
            clips = _memmap(tmp / "clips.i16", size // (2 * n_samples), n_samples)
            index = {
                "format": _INDEX_FORMAT,
                "recipe": recipe,
                "sample_rate": self.sample_rate,
                "clip_samples": n_samples,
                "n_clips": int(clips.shape[0]),
                "labels": list(scan.labels),
                "examples": entries,
                "problems": [list(x) for x in problems],
                "info": scan.info,
                "fingerprint": fingerprint_clips(clips, entries),
            }
            del clips
            (tmp / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True))

    def _assign_roles(self, decoded: list[tuple[Candidate, int]],
                      problems: list[tuple[str, str, str]]) -> list[tuple[Candidate, int]]:
        """Retrieval: given roles are kept (queries without a usable reference in their split
        are dropped); otherwise the first usable file of each (split, work) is the reference."""
        has_ref: set[tuple[str | None, str | None]] = set()
        for c, _ in decoded:
            if c.role is None and (c.split, c.work_id) not in has_ref:
                c.role = "reference"
            elif c.role is None:
                c.role = "query"
            if c.role == "reference":
                has_ref.add((c.split, c.work_id))
        kept = []
        for c, k in decoded:
            if c.role == "query" and (c.split, c.work_id) not in has_ref:
                problems.append((c.source, "no-reference",
                                 (f"query of work '{c.work_id}' has no usable reference in "
                                  f"split '{c.split}'")))
                continue
            kept.append((c, k))
        return kept

    def _load(self, path: Path, recipe: dict[str, Any]) -> None:
        index = json.loads((path / "index.json").read_text())
        if index.get("format") != _INDEX_FORMAT or index.get("recipe") != recipe:
            raise ValueError("index does not match this recipe")
        n, t = int(index["n_clips"]), int(index["clip_samples"])
        if (path / "clips.i16").stat().st_size != 2 * n * t:
            raise ValueError(f"clips.i16 does not hold {n} x {t} int16 samples")
        clips = _memmap(path / "clips.i16", n, t)
        if fingerprint_clips(clips, index["examples"]) != index["fingerprint"]:
            raise ValueError("content does not match the stored fingerprint")
        self._clips, self._index = clips, index
        self.labels = tuple(index["labels"])


def _memmap(path: Path, n: int, t: int) -> np.ndarray:
    if n == 0:
        return np.zeros((0, t), dtype="<i2")
    return np.memmap(path, dtype="<i2", mode="r", shape=(n, t))


def fingerprint_clips(clips: np.ndarray, entries: list[dict[str, Any]]) -> str:
    """sha256 over (id, label, work id, split, role) of every example as JSON, then the int16
    little-endian bytes of their clips, in example order."""
    h = hashlib.sha256()
    keys = [[e["id"], e["label"], e["work_id"], e["split"], e["role"]] for e in entries]
    h.update(json.dumps(keys).encode())
    for e in entries:
        h.update(np.ascontiguousarray(clips[e["clip"]], dtype="<i2").tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# The manifest datasets


@dataclass(frozen=True)
class Params:
    """``manifest``: path of the CSV (required). Every example is the centred ``clip_seconds``
    of its file (shorter files are skipped); ``valid_fraction``/``test_fraction``/``seed``
    only matter without a ``split`` column."""

    manifest: str = ""
    clip_seconds: float = 10.0
    sample_rate: int = 16_000
    valid_fraction: float = 0.15
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.manifest:
            raise ValueError("manifest is required: the path of a CSV with a 'path' column "
                             "(see `musicbench list datasets` / docs)")
        check_audio_params(self.clip_seconds, self.sample_rate)
        check_fractions(self.valid_fraction, self.test_fraction)
        check_seed("seed", self.seed)


_TASK_COLUMN = {"classification": "label", "retrieval": "work_id"}
_OTHER_NAME = {"classification": "folder-retrieval", "retrieval": "folder"}


class FolderDataset(AudioFileDataset):
    """Classification on the files of a CSV manifest (``path,label[,split]``)."""

    task: ClassVar[str] = "classification"
    version: ClassVar[str] = "1"
    Params: ClassVar[type] = Params
    cache_prefix: ClassVar[str] = "folder"

    def scan(self) -> Scan:
        p: Params = self.params
        manifest = _expand(Path(p.manifest))
        table = f"datasets.{self.name or self.cache_prefix}"
        header, rows, raw = _read_manifest(manifest, table)
        column = _TASK_COLUMN[self.task]
        other = _TASK_COLUMN["retrieval" if self.task == "classification" else "classification"]
        if column in header and other in header:
            raise ConfigError(f"manifest {manifest} has both a '{column}' and a '{other}' column; "
                              "a manifest is either classification (label) or retrieval "
                              "(work_id)", table=table, key="manifest")
        if column not in header:
            hint = (f"; it has a '{other}' column: use dataset '{_OTHER_NAME[self.task]}'"
                    if other in header else "")
            raise ConfigError(f"manifest {manifest} has no '{column}' column (columns: "
                              f"{', '.join(header)}){hint}", table=table, key="manifest")
        if "role" in header and self.task != "retrieval":
            raise ConfigError(f"manifest {manifest}: the 'role' column only applies to "
                              "retrieval manifests (work_id, dataset 'folder-retrieval')",
                              table=table, key="manifest")
        base = _resolve(manifest).parent
        problems: list[tuple[str, str, str]] = []
        good: list[tuple[int, dict[str, str], Path]] = []
        seen: dict[Path, int] = {}
        for line, row in rows:
            source = row.get("path", "").strip()
            why = _row_problem(row, column, header)
            if why is not None:
                problems.append((source or f"{manifest.name}:{line}", why[0],
                                 f"line {line}: {why[1]}"))
                continue
            given = _expand(Path(source))
            given = given if given.is_absolute() else base / given
            path = _resolve(given)
            if path in seen:
                problems.append((source, "duplicate",
                                 f"line {line}: same file as line {seen[path]}"))
                continue
            try:
                # Every OS-level reason a file cannot be read is a skip (the path as given:
                # a dangling link is named as one).
                stat_input(given)
            except BadAudioError as exc:
                kind = "missing" if exc.reason == "no such file" else exc.kind
                problems.append((source, kind, f"line {line}: {exc.reason} ({exc.path})"))
                continue
            seen[path] = line
            good.append((line, row, path))
        extra = [h for h in header if h not in ("path", column, "split", "role")]
        labels: tuple[str, ...] = ()
        if self.task == "classification":
            # From every row, usable or not: the label set does not change when a file breaks.
            labels = tuple(sorted({r[column].strip() for _, r in rows if r[column].strip()}))
        cands = []
        for line, row, path in good:
            source = row["path"].strip()
            value = row[column].strip()
            split = row["split"].strip().lower() if "split" in header else None
            role = row["role"].strip().lower() if "role" in header else None
            meta = {"path": source, "line": line, **{h: row.get(h, "") for h in extra}}
            cands.append(Candidate(
                id=source, path=path, source=source,
                label=labels.index(value) if self.task == "classification" else None,
                work_id=value if self.task == "retrieval" else None,
                split=split, role=role, meta=meta))
        if self.task == "retrieval" and "split" in header:
            _check_work_splits(cands, manifest, table)
        return Scan(cands, problems, labels,
                    key={"manifest": str(_resolve(manifest)),
                         "manifest_sha256": hashlib.sha256(raw).hexdigest()},
                    info={"rows": len(rows)})


class FolderRetrievalDataset(FolderDataset):
    """Retrieval (cover-song identification) on a CSV manifest (``path,work_id[,split][,role]``)."""

    task: ClassVar[str] = "retrieval"
    cache_prefix: ClassVar[str] = "folder-retrieval"
    labels: tuple[str, ...] = ()


def _expand(path: Path) -> Path:
    """``~`` and ``~user`` expanded; unchanged where there is no such home folder."""
    try:
        return path.expanduser()
    except RuntimeError:
        return path


def _resolve(path: Path) -> Path:
    """The absolute path without symbolic links; as given (absolute) where it cannot be
    resolved (a link loop, a NUL in the name): :func:`stat_input` then says why."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):
        return path.absolute()


#: A manifest is one short line per file: 64 MiB is over half a million rows, past any
#: collection this decodes; a bigger file is the wrong file (or a device) and would fill the
#: memory before any row is checked.
MAX_MANIFEST_BYTES = 64 << 20


def _read_manifest(
    manifest: Path, table: str
) -> tuple[list[str], list[tuple[int, dict[str, str]]], bytes]:
    """``(header, [(line, row)], raw bytes)``; raises ConfigError when unusable.

    ``line`` is the line a row starts on (a quoted field may hold a line break, so a row can
    span lines). Messages never quote the file's content beyond the names of the columns it
    was expected to have: a manifest path pointing at a private file (say ``/etc/shadow``)
    must not print that file."""
    try:
        raw = read_input_file(manifest, what="manifest", max_bytes=MAX_MANIFEST_BYTES,
                              holds="a manifest has one short line per audio file")
    except ConfigError as exc:
        raise ConfigError(exc.message, table=table, key="manifest") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(f"manifest {manifest} is not UTF-8 text (line {line} holds a byte "
                          "that is not UTF-8); save it as UTF-8", table=table,
                          key="manifest") from None
    try:
        # newline="": the csv module sees the line breaks itself, so a quoted file name that
        # holds one stays one field (str.splitlines would cut the row in two)
        reader = csv.reader(io.StringIO(text, newline=""))
        header_row = next(reader, None)
        if header_row is None or not any(h.strip() for h in header_row):
            raise ConfigError(f"manifest {manifest} is empty; it needs a header row with a "
                              "'path' column", table=table, key="manifest")
        header = [h.strip().lower() for h in header_row]
        dupes = sorted({h for h in header if header.count(h) > 1 and h})
        if dupes:
            raise ConfigError(f"manifest {manifest} repeats column(s) {', '.join(dupes)}",
                              table=table, key="manifest")
        if "path" not in header:
            raise ConfigError(f"manifest {manifest} has no 'path' column (its first row has "
                              f"{len(header)} field(s), none named path{_near('path', header)})"
                              "; the first row names the columns, e.g. path,label",
                              table=table, key="manifest")
        rows = []
        end = reader.line_num
        for values in reader:
            start, end = end + 1, reader.line_num
            if not any(v.strip() for v in values):
                continue  # blank line
            row = {h: (values[i] if i < len(values) else "") for i, h in enumerate(header)}
            rows.append((start, row))
    except csv.Error as exc:
        raise ConfigError(f"manifest {manifest} is not valid CSV: {exc} (line "
                          f"{reader.line_num})", table=table, key="manifest") from None
    return header, rows, raw


def _near(name: str, header: list[str]) -> str:
    """``"; did you mean 'pth'?"`` for a column close to ``name``, else ``""`` (only such a
    column is quoted: the rest of the row may be anything, a private file's first line too)."""
    close = difflib.get_close_matches(name, header, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _row_problem(row: dict[str, str], column: str, header: list[str]) -> tuple[str, str] | None:
    """``(kind, reason)`` if a row's fields are unusable (before looking at the file)."""
    if not row.get("path", "").strip():
        return "bad-row", "empty path"
    if not row.get(column, "").strip():
        return "bad-row", f"empty {column}"
    if "split" in header and row["split"].strip().lower() not in SPLITS:
        return "bad-row", (f"unknown split {row['split'].strip()!r} (expected "
                           f"{', '.join(SPLITS)})")
    if "role" in header and row["role"].strip().lower() not in ROLES:
        return "bad-row", f"unknown role {row['role'].strip()!r} (expected query or reference)"
    return None


def _check_work_splits(cands: list[Candidate], manifest: Path, table: str) -> None:
    first: dict[str, str] = {}
    for c in cands:
        s = first.setdefault(str(c.work_id), str(c.split))
        if s != c.split:
            raise ConfigError(f"manifest {manifest}: work '{c.work_id}' is in splits '{s}' and "
                              f"'{c.split}'; every version of a work must be in one split",
                              table=table, key="manifest")
