"""``gtzan``: the GTZAN genre collection (Tzanetakis & Cook, "Musical genre classification of
audio signals", IEEE TSAP 2002), read from a local copy. Nothing is downloaded.

Layout: ``root`` is the folder that holds ``genres/`` (the original archive) or
``genres_original/`` (the Kaggle copy), or is that folder itself. Under it, one folder per genre
holds ``<genre>.000NN.au`` or ``.wav`` files (22050 Hz mono in the original); other files
(``.mf`` lists, ``.DS_Store``) are ignored. Labels, in this order: blues, classical, country,
disco, hiphop, jazz, metal, pop, reggae, rock. A track is identified by ``<genre>/<stem>``
(e.g. ``blues/blues.00000``) whatever its extension; where both ``.wav`` and ``.au`` of one
track exist the ``.wav`` is used and the other listed in :meth:`problems`.

Splits:

* ``split_files`` = a folder with ``train_filtered.txt``, ``valid_filtered.txt`` and
  ``test_filtered.txt``: the fault-filtered, artist-disjoint split of Kereliuk, Sturm & Larsen,
  "Deep learning and music adversaries" (IEEE TMM 2015), as distributed e.g. in
  ``jongpillee/GTZAN_split`` (443 / 197 / 290 tracks). Format: UTF-8 text, one track per line,
  the path relative to the genres folder, e.g. ``blues/blues.00000.wav``; blank lines and lines
  starting with ``#`` are ignored, ``\\`` is read as ``/``, a leading ``./`` or ``genres/`` is
  dropped, and the extension is ignored (an ``.au`` list matches ``.wav`` files and the other
  way round). The genre is the first path component. Tracks on disk that no list names are
  left out (the filter removes repeated and mislabelled tracks on purpose) and counted in
  ``info["unlisted"]``; a listed track that is not on disk is a problem; a track listed twice
  is a :class:`~musicbench.errors.ConfigError`.
* without ``split_files``: a seeded split by **file**, stratified by genre
  (``valid_fraction``, ``test_fraction``, ``seed``), drawn over every track file found
  before decoding (repairing a broken file moves no other track). GTZAN has no work or
  artist ids, so repeated tracks and shared artists leak across such a split; use the
  filtered split files for a fair test.

Every example is the centred ``clip_seconds`` of its track (default 29 s: GTZAN tracks run
29.9-30.7 s, and one length for all lets the harness batch them; the model's own
``input_seconds`` windows are the harness's business). Tracks shorter than ``clip_seconds``
and every other broken file (see :func:`musicbench.audio.load_audio`; e.g. the Kaggle copy's
corrupt ``jazz.00054.wav``) are skipped, counted (``problem_counts()``) and listed with their
reason in ``problems()``; a run never crashes on them. ``work_id`` is ``None``.

Decoding (read, downmix, resample to ``sample_rate``, int16) happens once; the result is cached
under ``<cache>/datasets/gtzan-<hash>/`` keyed by the resolved genres path, every file's path,
size and modification time, the split files' content and the parameters. It pays: decoding the
1000 tracks takes ~15 s per process, loading the ~0.9 GB int16 store (memory-mapped) and
re-hashing it ~1 s. The fingerprint hashes the decoded content, labels and splits (not the
path), so two copies of the same data agree. Machinery: :class:`~musicbench_plugins.datasets.
folder.AudioFileDataset`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from musicbench.api import check_seed
from musicbench.audio import os_reason, printable
from musicbench.errors import ConfigError
from musicbench.files import read_input_file
from musicbench_plugins.datasets.folder import (
    SPLITS,
    AudioFileDataset,
    Candidate,
    Scan,
    check_audio_params,
    check_fractions,
)

GENRES: tuple[str, ...] = (
    "blues", "classical", "country", "disco", "hiphop",
    "jazz", "metal", "pop", "reggae", "rock",
)
#: Extensions read as tracks, in order of preference when one track has several.
EXTENSIONS: tuple[str, ...] = (".wav", ".au")
SPLIT_FILES: dict[str, str] = {s: f"{s}_filtered.txt" for s in SPLITS}

log = logging.getLogger("musicbench.datasets")


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # e.g. permission denied on a folder above it
        return False


@dataclass(frozen=True)
class Params:
    """``root``: the folder holding ``genres/`` (required). ``split_files``: a folder with the
    three ``*_filtered.txt`` lists, or ``None`` for a seeded stratified split."""

    root: str = ""
    split_files: str | None = None
    clip_seconds: float = 29.0
    sample_rate: int = 16_000
    valid_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.root:
            raise ValueError("root is required: the folder that holds GTZAN's genres/ folder")
        check_audio_params(self.clip_seconds, self.sample_rate)
        check_fractions(self.valid_fraction, self.test_fraction)
        check_seed("seed", self.seed)


class GTZAN(AudioFileDataset):
    """Ten-way genre classification on a local GTZAN copy (see the module docstring)."""

    task: ClassVar[str] = "classification"
    version: ClassVar[str] = "1"
    Params: ClassVar[type] = Params
    cache_prefix: ClassVar[str] = "gtzan"
    labels: tuple[str, ...] = GENRES

    def genres_dir(self) -> Path:
        """The folder with one sub-folder per genre."""
        root = Path(self.params.root).expanduser()
        for cand in (root / "genres", root / "genres_original", root):
            if _is_dir(cand) and any(_is_dir(cand / g) for g in GENRES):
                return cand.resolve()
        raise ConfigError(
            f"no GTZAN genre folders under {root} (looked for {root}/genres/<genre>/, "
            f"{root}/genres_original/<genre>/ and {root}/<genre>/ with genre one of "
            f"{', '.join(GENRES)})", table=f"datasets.{self.name or 'gtzan'}", key="root")

    def scan(self) -> Scan:
        top = self.genres_dir()
        problems: list[tuple[str, str, str]] = []
        tracks: dict[str, Path] = {}  # "genre/stem" -> file
        absent: list[str] = []
        for genre in GENRES:
            folder = top / genre
            if not _is_dir(folder):
                absent.append(genre)  # not a skipped input: there is no input (see below)
                continue
            try:
                files = sorted(f for f in folder.iterdir()
                               if f.suffix.lower() in EXTENSIONS and not f.name.startswith("."))
            except OSError as exc:
                problems.append((f"{genre}/", "unreadable",
                                 f"cannot list the {genre} folder: {os_reason(folder, exc)}"))
                continue
            files.sort(key=lambda f: (f.stem, EXTENSIONS.index(f.suffix.lower()), f.name))
            for f in files:
                if printable(f.name) != f.name:  # ids, results and reports are UTF-8
                    problems.append((f"{genre}/{printable(f.name)}", "unreadable",
                                     "file name is not valid UTF-8; rename the file"))
                    continue
                key = f"{genre}/{f.stem}"
                if key in tracks:
                    problems.append((f"{genre}/{f.name}", "duplicate",
                                     f"same track as {genre}/{tracks[key].name}, which is used"))
                    continue
                tracks[key] = f
        info: dict[str, object] = {"tracks_on_disk": len(tracks)}
        key: dict[str, object] = {"genres_dir": str(top)}
        if absent:
            # An incomplete copy, not a broken file: the labels stay GTZAN's ten (a model's
            # outputs do not change), the genres without a folder just have no examples.
            info["missing_genres"] = key["missing_genres"] = absent
            log.warning("%s: no folder for genre(s) %s under %s: the dataset has no examples "
                        "of %s (results are not comparable with a full GTZAN)",
                        self.name or "gtzan", ", ".join(absent), printable(str(top)),
                        "it" if len(absent) == 1 else "them")
        if self.params.split_files is None:
            cands = [self._cand(k, f, None) for k, f in tracks.items()]
        else:
            listed, raw = self._read_split_files(problems)
            key["split_files"] = raw
            cands = []
            for k, (split, source) in listed.items():
                if k not in tracks:
                    problems.append((source, "missing",
                                     f"listed in {SPLIT_FILES[split]} but not found under {top}"))
                    continue
                cands.append(self._cand(k, tracks[k], split))
            info["unlisted"] = sum(1 for k in tracks if k not in listed)
        cands.sort(key=lambda c: c.id)
        return Scan(cands, problems, GENRES, key=key, info=info)

    def _cand(self, key: str, path: Path, split: str | None) -> Candidate:
        genre = key.split("/", 1)[0]
        return Candidate(id=key, path=path, source=f"{genre}/{path.name}",
                         label=GENRES.index(genre), split=split,
                         meta={"file": f"{genre}/{path.name}", "genre": genre})

    def _read_split_files(
        self, problems: list[tuple[str, str, str]]
    ) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
        """``({"genre/stem": (split, line as written)}, {file name: text})``."""
        folder = Path(str(self.params.split_files)).expanduser()
        table = f"datasets.{self.name or 'gtzan'}"
        listed: dict[str, tuple[str, str]] = {}
        raw: dict[str, str] = {}
        for split in SPLITS:
            text = _read_split_file(folder / SPLIT_FILES[split], table)
            raw[SPLIT_FILES[split]] = text
            for n, line in enumerate(text.splitlines(), 1):
                entry = line.strip().replace("\\", "/")
                if not entry or entry.startswith("#"):
                    continue
                while entry.startswith("./"):
                    entry = entry[2:]
                entry = entry.removeprefix("genres/")
                parts = entry.split("/")
                where = f"{SPLIT_FILES[split]}:{n}"
                if len(parts) != 2 or parts[0] not in GENRES or not parts[1]:
                    # named by file and line, not by its text: a line that is no track is
                    # not one, and the split file may be any file (its lines must not reach
                    # the published list of skipped inputs)
                    problems.append((where, "bad-row",
                                     ("expected '<genre>/<file>' with genre one of "
                                      f"{', '.join(GENRES)}")))
                    continue
                stem = parts[1]
                if Path(stem).suffix.lower() in EXTENSIONS:
                    stem = Path(stem).stem
                key = f"{parts[0]}/{stem}"
                if key in listed:
                    other = listed[key][0]
                    raise ConfigError(f"split files list track {key} twice ({where}, and in "
                                      f"{SPLIT_FILES[other]})", table=table, key="split_files")
                listed[key] = (split, line.strip())
        return listed, raw


#: A split list names at most GTZAN's 1000 tracks (~30 kB); past 1 MiB it is the wrong file.
MAX_SPLIT_FILE_BYTES = 1 << 20


def _read_split_file(path: Path, table: str) -> str:
    """The text of one split list, or a ConfigError naming the file and why (a FIFO, a device,
    a folder, a huge or non-UTF-8 file; never its content)."""
    hint = f"split_files must be a folder holding {', '.join(SPLIT_FILES.values())}"
    try:
        raw = read_input_file(path, what="split file", max_bytes=MAX_SPLIT_FILE_BYTES,
                              holds="a split list names at most GTZAN's 1000 tracks")
    except ConfigError as exc:
        raise ConfigError(f"{exc.message}; {hint}", table=table, key="split_files") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(f"split file '{path}' is not UTF-8 text (line {line} holds a byte "
                          f"that is not UTF-8); {hint}", table=table,
                          key="split_files") from None
