"""Pick works from the music21 corpus and turn them into plain note arrays.

Source: the corpus that ships inside the ``music21`` wheel (Cuthbert & Ariza, "music21: A Toolkit
for Computer-Aided Musicology and Symbolic Music Data", ISMIR 2010; https://web.mit.edu/music21/).
The encodings and their licences are music21's (see ``music21/corpus/*/license*`` where present).
Nothing is downloaded.

Style classes, in label order, and where their works come from (paths relative to
``music21/corpus``):

===================== ==============================================================
``bach-chorale``       ``bach/*.mxl`` (the four-part chorale harmonisations)
``palestrina``         ``palestrina/*.krn``: one movement per mass (the first in sorted
                       order), since movements of one mass share their material and would
                       leak across splits
``monteverdi-madrigal`` ``monteverdi/*.mxl`` (not the ``.rntxt`` analyses)
``trecento``           ``trecento/*.xml`` and ``trecento/*.mxl``
``essen-folk``         every tune (``X:`` entry) of the ``essenFolksong/*.abc`` opuses,
                       except ``test*.abc`` (test copies) and ``variant0.abc`` (variants of
                       one another, which would leak across splits)
``fiddle-tune``        ``ryansMammoth/*.abc`` (one tune per file; the first if several)
===================== ==============================================================

A *work* is one file, or one tune of an Essen opus. Works are listed in sorted order and taken in
a spanning order (:func:`spanning_order`), so the first ``n`` are every k-th work of the folder
and later ones fill the gaps (used to replace works that fail). The selection does not depend on
any seed.

Timing is left in quarter notes here; tempo (and so seconds) is chosen by the dataset. Notated
tempo marks are ignored on purpose: a class-independent random tempo keeps tempo from being a
proxy for the label beyond what the notated rhythm itself carries.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASSES: tuple[str, ...] = (
    "bach-chorale",
    "palestrina",
    "monteverdi-madrigal",
    "trecento",
    "essen-folk",
    "fiddle-tune",
)

#: Works with fewer notes than this are skipped (fragments, empty encodings).
MIN_NOTES = 16

_ESSEN_EXCLUDE = re.compile(r"^(test.*|variant0)\.abc$")
_KERN_OPR = re.compile(rb"^!!!OPR:(.*)$", re.MULTILINE)  # the parent work (the mass)
_X_LINE = re.compile(rb"^X:\s*(\d+)", re.MULTILINE)


class WorkSkipped(Exception):
    """A work that cannot be used; ``str(exc)`` is the reason."""


@dataclass(frozen=True)
class WorkRef:
    """Where one work lives: ``path`` relative to the corpus root (posix), ``number`` the tune
    number inside an opus file (``None`` for single-work files)."""

    style: str
    path: str
    number: int | None = None

    @property
    def work_id(self) -> str:
        """Stable, unique id, e.g. ``bach/bwv1.6.mxl`` or ``essenFolksong/erk30.abc#5``."""
        return self.path if self.number is None else f"{self.path}#{self.number}"


@dataclass(frozen=True)
class WorkNotes:
    """The notes of one work as parallel arrays of length N, sorted by (onset, voice, pitch).

    ``onset`` and ``duration`` are in quarter notes (float64), ``pitch`` MIDI (float64),
    ``velocity`` in [0, 1] (float64, metric accent only), ``voice`` the part index (int64).
    """

    ref: WorkRef
    onset: np.ndarray
    duration: np.ndarray
    pitch: np.ndarray
    velocity: np.ndarray
    voice: np.ndarray
    n_voices: int
    title: str

    @property
    def length_quarters(self) -> float:
        """Time from 0 to the end of the last note, in quarter notes."""
        return float(np.max(self.onset + self.duration)) if self.onset.size else 0.0


def corpus_root() -> Path:
    """The ``music21/corpus`` folder of the installed music21."""
    import music21

    return Path(music21.__file__).resolve().parent / "corpus"


def music21_version() -> str:
    """The installed music21 version (the corpus content can change with it)."""
    import music21

    return str(music21.__version__)


def _files(folder: str, *patterns: str) -> list[str]:
    root = corpus_root()
    found = {p.relative_to(root).as_posix() for pat in patterns for p in (root / folder).glob(pat)}
    return sorted(found)


@functools.cache
def list_works(style: str) -> tuple[WorkRef, ...]:
    """Every candidate work of ``style``, in sorted (path, number) order."""
    if style == "bach-chorale":
        return tuple(WorkRef(style, p) for p in _files("bach", "*.mxl"))
    if style == "palestrina":
        # Each file is one movement (or section) of a mass, named in its "!!!OPR:" header:
        # keep one movement per mass so that no mass lands in two splits.
        root = corpus_root()
        first_of_mass: dict[str, str] = {}
        for p in _files("palestrina", "*.krn"):
            found = _KERN_OPR.search((root / p).read_bytes())
            mass = found.group(1).strip().decode("utf-8", "replace") if found else p
            first_of_mass.setdefault(mass, p)
        return tuple(WorkRef(style, p) for p in sorted(first_of_mass.values()))
    if style == "monteverdi-madrigal":
        return tuple(WorkRef(style, p) for p in _files("monteverdi", "*.mxl"))
    if style == "trecento":
        return tuple(WorkRef(style, p) for p in _files("trecento", "*.xml", "*.mxl"))
    if style == "fiddle-tune":
        return tuple(WorkRef(style, p) for p in _files("ryansMammoth", "*.abc"))
    if style == "essen-folk":
        root = corpus_root()
        refs = []
        for p in _files("essenFolksong", "*.abc"):
            if _ESSEN_EXCLUDE.match(Path(p).name):
                continue
            # Counting "X:" lines is ~1000x cheaper than parsing the whole opus.
            numbers = sorted({int(m) for m in _X_LINE.findall((root / p).read_bytes())})
            refs.extend(WorkRef(style, p, n) for n in numbers)
        return tuple(refs)
    raise ValueError(f"unknown style {style!r}; choose one of {list(CLASSES)}")


def spanning_order(m: int, n: int) -> list[int]:
    """A permutation of ``range(m)`` whose first ``min(n, m)`` entries are spread evenly
    (every ``m/n``-th index) and whose rest fills the gaps, stride by stride."""
    n = max(1, min(n, m))
    starts = [(i * m) // n for i in range(n)] + [m]
    order = []
    for r in range(-(-m // n) + 1):
        for i in range(n):
            j = starts[i] + r
            if j < starts[i + 1]:
                order.append(j)
    assert sorted(order) == list(range(m))
    return order


def candidate_works(style: str, n: int) -> list[WorkRef]:
    """All works of ``style`` in the order they are tried when ``n`` are wanted."""
    works = list_works(style)
    return [works[i] for i in spanning_order(len(works), n)] if works else []


def _parse(ref: WorkRef):
    from music21 import converter, stream

    path = corpus_root() / ref.path
    # forceSource/storePickle: no reads or writes of music21's pickle cache, so parallel
    # workers never race on it and results never depend on what an earlier run left there.
    parsed = converter.parse(path, number=ref.number, forceSource=True, storePickle=False)
    if isinstance(parsed, stream.Opus):
        scores = list(parsed.scores)
        if not scores:
            raise WorkSkipped("opus without scores")
        parsed = scores[0]
    return parsed


def extract_notes(ref: WorkRef) -> WorkNotes:
    """Parse ``ref`` and return its notes (see :class:`WorkNotes`).

    Ties are merged (``stripTies``), chords become one note per pitch, grace notes and
    zero-length notes are dropped, and part ``i`` of the score becomes voice ``i``. The velocity
    is a metric accent (notes on a beat are louder); dynamics are added by the renderer.

    Raises:
        WorkSkipped: the file does not parse or has fewer than :data:`MIN_NOTES` notes.
    """
    from music21 import chord, stream

    try:
        score = _parse(ref)
        # In place: the copying variant deep-copies the whole score and doubles parse time.
        score.stripTies(inPlace=True)
        parts = list(score.parts) if isinstance(score, stream.Score) else [score]
        if not parts:
            parts = [score]
        rows: list[tuple[float, float, float, float, int]] = []
        for voice, part in enumerate(parts):
            for el in part.flatten().notes:
                ql = float(el.duration.quarterLength)
                if ql <= 0 or el.duration.isGrace:
                    continue
                onset = float(el.offset)
                # On-beat notes (integer quarter offsets) get a small accent.
                accent = 0.8 if abs(onset - round(onset)) < 1e-6 else 0.68
                pitches = el.pitches if isinstance(el, chord.Chord) else (el.pitch,)
                for p in pitches:
                    rows.append((onset, ql, float(p.ps), accent, voice))
        title = str(score.metadata.title) if score.metadata and score.metadata.title else ""
    except WorkSkipped:
        raise
    except Exception as exc:  # music21 raises many types on malformed encodings
        raise WorkSkipped(f"parse failed: {type(exc).__name__}: {exc}") from exc
    if len(rows) < MIN_NOTES:
        raise WorkSkipped(f"too few notes ({len(rows)} < {MIN_NOTES})")
    arr = np.array(sorted(rows, key=lambda r: (r[0], r[4], r[2])), dtype=np.float64)
    return WorkNotes(
        ref=ref,
        onset=arr[:, 0] - arr[:, 0].min(),
        duration=arr[:, 1],
        pitch=arr[:, 2],
        velocity=arr[:, 3],
        voice=arr[:, 4].astype(np.int64),
        n_voices=len(parts),
        title=title,
    )
