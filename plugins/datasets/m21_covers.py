"""``m21-covers``: cover-song identification on real compositions, rendered by our synthesizer.

Every *work* (a music21 corpus composition; see :mod:`musicbench_plugins.datasets.m21_corpus`,
whose six style classes are mixed for variety: ``works`` is spread evenly over them) is
rendered in ``versions_per_work`` *versions* that differ the way covers do, and each version
gives one ``clip_seconds`` clip (default 6 s, 16 kHz mono). Nothing is downloaded.

How versions of one work differ (every choice drawn from ``numpy`` generators seeded by
``Params.seed``, a stable hash of the work id and the version number, so it does not depend on
which other works were picked, on worker count or on order of completion):

* **key** - a transposition from -5 to +6 semitones, all versions in different keys (a seeded
  permutation of the 12);
* **tempo** - the work's base tempo (uniform in [66, 120] quarter notes per minute, notated
  marks ignored) times a per-version factor log-uniform in [0.8, 1.25];
* **timbre** - all versions on different instruments (a seeded permutation of
  :data:`~musicbench_plugins.datasets.synth.TIMBRES`, repeating after six);
* **arrangement** - version 0 plays every part; any other version, with probability 0.4,
  plays only the outer parts (works of >= 3 parts) or adds the melody an octave lower
  (works of 1-2 parts);
* **dynamics** - an overall level (velocity x uniform [0.5, 1]; louder is also brighter in the
  synthesizer), a slow swell of random depth (0-30%) and period (4-14 s), per-note jitter;
* **room** and voice balance - a fresh synthetic room, voice gains and detune per version
  (:func:`~musicbench_plugins.datasets.synth.render`);
* **position** - the versions are cut around one anchor point of the score, each shifted by its
  own uniform draw in [-``max_shift_seconds``, +``max_shift_seconds``] of its own time, so two
  versions' clips start up to ``2 * max_shift_seconds`` (default 3 s) apart in the music while
  sharing most of it: a model must be shift-invariant. The anchor is redrawn (up to 10 times)
  until every version's clip has notes sounding >= 60% of the time; otherwise the work is
  skipped.

Query / reference sets: **version 0 of each work is its reference, versions 1.. are queries**
(so every query's work has exactly one reference, in the same split: the usual "one original,
match the covers to it" protocol). Version 0 always plays the full arrangement, like an
original; its key, tempo and timbre are drawn like any other version's.

Splits are **by work**, stratified by style class: per class the works are shuffled (seeded)
and cut into test / valid / train by ``test_fraction`` and ``valid_fraction``; all versions of
a work share its split. ``label`` is ``None``; ``work_id`` is the corpus work id and
``meta["style"]`` its class.

Works that fail to parse, have too few notes, are too short for a clip at the fastest version's
tempo, or have no anchor where every version is audible are skipped (``skipped``) and replaced
by the next work of the class's spanning order.

Cache: ``<cache_dir>/datasets/m21-covers-<recipe hash>/`` with ``clips.npy`` (int16
``[N, clip_samples]``) and ``index.json``, written to a temporary folder and renamed into place.
Default size (150 works x 4 versions x 6 s = 600 clips) costs ~55 s of CPU, about half parsing
and half rendering, spread over ``workers`` processes (about 30 s on two free cores).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from musicbench.api import (
    check_number,
    check_seed,
    load_or_build,
    read_clip_cache,
    recipe_path,
    to_int16,
    write_clip_cache,
)
from musicbench.interfaces import Dataset, Example
from musicbench_plugins._limits import MAX_SIZE
from musicbench_plugins.datasets import m21_corpus, synth
from musicbench_plugins.datasets.folder import (
    SPLITS,
    StoredExamples,
    fingerprint_clips,
    stratified_split,
)
from musicbench_plugins.datasets.m21_render import (
    FRAME_RATE,
    MIN_COVERAGE,
    WorkResult,
    coverage,
    fold_pitch,
    process_map,
    stable_int,
)

if TYPE_CHECKING:
    from musicbench.interfaces import Context

_INDEX_FORMAT = 1
_BASE_TEMPO = (66.0, 120.0)  # quarter notes per minute
_TEMPO_FACTOR = 1.25  # versions play at base x [1/1.25, 1.25], log-uniform
_TRANSPOSITIONS = np.arange(-5, 7)  # semitones
_ALT_ARRANGEMENT_P = 0.4
_LEVEL_RANGE = (0.5, 1.0)
_ANCHOR_TRIES = 10
_CHUNK = 16  # works per pool round (progress granularity)


@dataclass(frozen=True)
class Params:
    """Size and randomness of the build. ``works`` is spread evenly over the six style classes
    (capped by what the corpus holds: Monteverdi has 49 madrigals)."""

    works: int = 150
    versions_per_work: int = 4
    clip_seconds: float = 6.0
    max_shift_seconds: float = 1.5
    valid_fraction: float = 0.15
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.works < 1:
            raise ValueError(f"works must be >= 1, got {self.works}")
        if not 2 <= self.versions_per_work <= len(_TRANSPOSITIONS):
            raise ValueError("versions_per_work must be in [2, 12] (one reference and at least "
                             f"one query per work, all in different keys), got "
                             f"{self.versions_per_work}")
        if not 0.5 <= self.clip_seconds <= 60.0:
            raise ValueError(f"clip_seconds must be in [0.5, 60], got {self.clip_seconds}")
        if not 0.0 <= self.max_shift_seconds <= 30.0:
            raise ValueError(f"max_shift_seconds must be in [0, 30], got {self.max_shift_seconds}")
        for name in ("valid_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                "valid_fraction + test_fraction must leave works for training, got "
                f"{self.valid_fraction} + {self.test_fraction}"
            )
        check_number("works", self.works, at_least=1, at_most=MAX_SIZE, integer=True)
        check_seed("seed", self.seed)


# ----------------------------------------------------------------------------------------------
# Per-work rendering (runs in worker processes; a pure function of its job)


@dataclass(frozen=True)
class _CoverJob:
    ref: m21_corpus.WorkRef
    seed: int
    clip_seconds: float
    versions: int
    max_shift_seconds: float
    sample_rate: int


def _version_plan(job: _CoverJob, v: int, n_voices: int, base_tempo: float,
                  transpose: int, timbre: str) -> dict[str, Any]:
    """The random choices of version ``v`` (its own generator: independent of other versions)."""
    rng = np.random.default_rng(
        np.random.SeedSequence([job.seed, stable_int(job.ref.work_id), 1 + v]))
    factor = float(2.0 ** rng.uniform(-math.log2(_TEMPO_FACTOR), math.log2(_TEMPO_FACTOR)))
    alt = rng.random() < _ALT_ARRANGEMENT_P
    arrangement = "full"
    if v > 0 and alt:
        arrangement = "outer-parts" if n_voices >= 3 else "octave-doubled"
    return {
        "tempo": base_tempo * factor,
        "transpose": transpose,
        "timbre": timbre,
        "arrangement": arrangement,
        "level": float(rng.uniform(*_LEVEL_RANGE)),
        "swell_depth": float(rng.uniform(0.0, 0.3)),
        "swell_period": float(rng.uniform(4.0, 14.0)),
        "swell_phase": float(rng.uniform(0.0, 2.0 * np.pi)),
        "shift_s": float(rng.uniform(-job.max_shift_seconds, job.max_shift_seconds)),
        "jitter_seed": int(rng.integers(2**63)),
    }


def _arrange(notes: m21_corpus.WorkNotes, plan: dict[str, Any]) -> tuple[np.ndarray, ...]:
    """``(onset_q, duration_q, pitch, velocity, voice)`` of one version before timing."""
    onset, duration, pitch = notes.onset, notes.duration, notes.pitch + plan["transpose"]
    velocity, voice = notes.velocity, notes.voice
    if plan["arrangement"] == "outer-parts":
        keep = (voice == 0) | (voice == notes.n_voices - 1)
        onset, duration, pitch = onset[keep], duration[keep], pitch[keep]
        velocity, voice = velocity[keep], voice[keep]
    elif plan["arrangement"] == "octave-doubled":
        top = voice == 0
        onset = np.concatenate([onset, onset[top]])
        duration = np.concatenate([duration, duration[top]])
        pitch = np.concatenate([pitch, pitch[top] - 12.0])
        velocity = np.concatenate([velocity, velocity[top] * 0.7])
        voice = np.concatenate([voice, np.full(int(top.sum()), notes.n_voices)])
    return onset, duration, fold_pitch(pitch), velocity, voice


def render_covers(job: _CoverJob) -> WorkResult:
    """Parse one work and render its versions (see the module docstring for the recipe).

    Returns a result whose ``clips`` is ``int16[versions, round(clip_seconds * sample_rate)]``
    (version ``v`` in row ``v``), or whose ``reason`` says why the work was skipped.
    """
    ref = job.ref
    try:
        notes = m21_corpus.extract_notes(ref)
    except m21_corpus.WorkSkipped as exc:
        return WorkResult(ref.work_id, str(exc))
    rng = np.random.default_rng(np.random.SeedSequence([job.seed, stable_int(ref.work_id), 0]))
    base_tempo = float(rng.uniform(*_BASE_TEMPO))
    keys = rng.permutation(_TRANSPOSITIONS)
    timbres = [str(t) for t in rng.permutation(sorted(synth.TIMBRES))]
    plans = [_version_plan(job, v, notes.n_voices, base_tempo, int(keys[v]),
                           timbres[v % len(timbres)]) for v in range(job.versions)]
    clip = job.clip_seconds
    length_q = notes.length_quarters
    win_q = [clip * p["tempo"] / 60.0 for p in plans]  # clip length in score quarters
    if length_q < max(win_q):
        return WorkResult(ref.work_id, f"too short ({length_q:.1f} quarters < {max(win_q):.1f} "
                           "needed for a clip at the fastest version's tempo)")
    arranged = [_arrange(notes, p) for p in plans]
    clip_frames = int(round(clip * FRAME_RATE))
    grids = []
    for (onset, duration, *_), p in zip(arranged, plans):
        spq = 60.0 / p["tempo"]
        n_frames = int(np.ceil(length_q * spq * FRAME_RATE)) + 1
        grids.append(coverage(onset * spq, (onset + duration) * spq, n_frames))
    starts_q: list[float] | None = None
    for _ in range(_ANCHOR_TRIES):
        centre = float(rng.uniform(max(win_q) / 2.0, length_q - max(win_q) / 2.0))
        cand = []
        for p, w in zip(plans, win_q):
            c = centre + p["shift_s"] * p["tempo"] / 60.0
            cand.append(float(np.clip(c - w / 2.0, 0.0, length_q - w)))
        ok = all(
            grid[int(round(s * 60.0 / p["tempo"] * FRAME_RATE)):][:clip_frames].mean()
            >= MIN_COVERAGE
            for grid, s, p in zip(grids, cand, plans)
        )
        if ok:
            starts_q = cand
            break
    if starts_q is None:
        return WorkResult(ref.work_id, "no position where every version is audible")

    n_samples = int(round(clip * job.sample_rate))
    clips, metas = [], []
    for v, (p, arr, start_q) in enumerate(zip(plans, arranged, starts_q)):
        onset_q, duration_q, pitch, velocity, voice = arr
        spq = 60.0 / p["tempo"]
        onset, duration = onset_q * spq, duration_q * spq
        swell = 1.0 + p["swell_depth"] * np.sin(
            2.0 * np.pi * onset / p["swell_period"] + p["swell_phase"])
        jitter = np.random.default_rng(p["jitter_seed"]).normal(0.0, 0.03, size=onset.size)
        vel = np.clip(velocity * p["level"] * swell + jitter, 0.05, 1.0)
        start = start_q * spq
        keep = (onset < start + clip) & (onset + duration + 1.5 > start - 1.0)
        events = list(zip(onset[keep], duration[keep], pitch[keep], vel[keep], voice[keep]))
        srng = np.random.default_rng(
            np.random.SeedSequence([job.seed, stable_int(ref.work_id), 1 + v, 1]))
        audio = synth.render(events, sample_rate=job.sample_rate, timbre=p["timbre"], rng=srng,
                             start=start, duration=clip)
        if float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) < 1e-3:
            return WorkResult(ref.work_id, f"version {v} is silent")
        clips.append(to_int16(audio[:n_samples]))
        metas.append({
            "version": v,
            "tempo_bpm": round(p["tempo"], 2),
            "transpose": p["transpose"],
            "timbre": p["timbre"],
            "arrangement": p["arrangement"],
            "level": round(p["level"], 3),
            "score_offset_q": round(start_q, 3),
            "offset_s": round(start, 3),
            "shift_s": round(p["shift_s"], 3),
        })
    work_meta = {
        "file": ref.path,
        "number": ref.number,
        "title": notes.title,
        "base_tempo_bpm": round(base_tempo, 2),
        "n_voices": notes.n_voices,
        "length_q": round(length_q, 2),
    }
    return WorkResult(ref.work_id, None, np.stack(clips), metas, work_meta)


# ----------------------------------------------------------------------------------------------
# The dataset


class M21Covers(Dataset):
    """Cover-song identification on music21 corpus works: several rendered versions per work,
    16 kHz mono clips, split by work; version 0 is the reference, the others are queries.

    ``workers`` (not a parameter: it never changes the result) sets how many processes parse
    and render; 1 renders in this process.
    """

    task: ClassVar[str] = "retrieval"
    version: ClassVar[str] = "1"
    Params: ClassVar[type] = Params
    sample_rate: int = 16_000
    labels: tuple[str, ...] = ()
    workers: int = 2

    def __init__(self, params: Params | None = None):
        super().__init__(params)
        self._clips: np.ndarray | None = None
        self._index: dict[str, Any] | None = None

    def recipe(self) -> dict[str, Any]:
        """Everything the rendered content depends on (hashed into the cache folder name)."""
        return {
            "dataset": "m21-covers",
            "version": self.version,
            "params": asdict(self.params),
            "sample_rate": self.sample_rate,
            "music21": m21_corpus.music21_version(),
            "synth": synth.SYNTH_VERSION,
        }

    def cache_path(self, cache_dir: Path) -> Path:
        """``cache_dir/datasets/m21-covers-<16 hex of the recipe hash>``."""
        return recipe_path(cache_dir, "m21-covers", self.recipe())

    # -- Dataset API ---------------------------------------------------------------------------

    def prepare(self, ctx: Context) -> None:
        """Load the clips from the cache, or render them and write the cache first."""
        def build(path: Path) -> None:
            clips, index = self._build(ctx)
            write_clip_cache(path, clips, index)

        load_or_build(self.cache_path(ctx.cache_dir), self._load, build, what="m21-covers")

    def examples(self, split: str) -> Sequence[Example]:
        """Every clip of ``split`` (references and queries; e.g. for training), ordered by
        style, work id, version. ``Tensor[clip_samples]`` float32 in [-1, 1], decoded on
        access; ``meta["role"]`` is ``"reference"`` or ``"query"``."""
        return StoredExamples(self._need_clips(), self._entries(split))

    def queries(self, split: str) -> Sequence[Example]:
        """Versions 1.. of every work of ``split`` (the clips that are matched and attacked)."""
        return StoredExamples(self._need_clips(),
                              [e for e in self._entries(split) if e["role"] == "query"])

    def references(self, split: str) -> Sequence[Example]:
        """Version 0 of every work of ``split``."""
        return StoredExamples(self._need_clips(),
                              [e for e in self._entries(split) if e["role"] == "reference"])

    def fingerprint(self) -> str:
        """sha256 hex of the ids, work ids, splits, roles and int16 clip bytes."""
        return str(self._need()["fingerprint"])

    @property
    def skipped(self) -> dict[str, list[tuple[str, str]]]:
        """Per class, the ``(work id, reason)`` of every work tried and skipped."""
        return {k: [tuple(x) for x in v] for k, v in self._need()["skipped"].items()}

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {"works": n, "queries": n, "references": n}}``."""
        out = {s: {"works": 0, "queries": 0, "references": 0} for s in SPLITS}
        works: dict[str, set[str]] = {s: set() for s in SPLITS}
        for e in self._need()["examples"]:
            works[e["split"]].add(e["work_id"])
            out[e["split"]]["queries" if e["role"] == "query" else "references"] += 1
        for s in SPLITS:
            out[s]["works"] = len(works[s])
        return out

    # -- internals -----------------------------------------------------------------------------

    def _need(self) -> dict[str, Any]:
        if self._index is None:
            raise RuntimeError("M21Covers: call prepare(ctx) first")
        return self._index

    def _need_clips(self) -> np.ndarray:
        self._need()
        assert self._clips is not None
        return self._clips

    def _entries(self, split: str) -> list[dict[str, Any]]:
        index = self._need()
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        return [e for e in index["examples"] if e["split"] == split]

    def _build(self, ctx: Context) -> tuple[np.ndarray, dict[str, Any]]:
        """Render every class; returns ``(int16[N, T] clips, index dict)`` in final order."""
        p: Params = self.params
        classes = m21_corpus.CLASSES
        per_class = {s: p.works // len(classes) + (1 if i < p.works % len(classes) else 0)
                     for i, s in enumerate(classes)}
        targets = {s: min(per_class[s], len(m21_corpus.list_works(s))) for s in classes}
        candidates = {s: m21_corpus.candidate_works(s, max(targets[s], 1)) for s in classes}
        accepted: dict[str, list[WorkResult]] = {s: [] for s in classes}
        skipped: dict[str, list[tuple[str, str]]] = {s: [] for s in classes}
        tried = dict.fromkeys(classes, 0)
        total = sum(targets.values())
        with ctx.progress("rendering m21-covers", total=total) as task, \
                process_map(self.workers, total) as run_map:
            # Rounds: ask for exactly the missing works, in candidate order, so a class keeps
            # the first `target` usable works of its order whatever the worker count.
            while True:
                jobs = []
                for s in classes:
                    batch = candidates[s][tried[s] : tried[s] + targets[s] - len(accepted[s])]
                    tried[s] += len(batch)
                    jobs += [_CoverJob(r, p.seed, p.clip_seconds, p.versions_per_work,
                                       p.max_shift_seconds, self.sample_rate) for r in batch]
                if not jobs:
                    break
                for i in range(0, len(jobs), _CHUNK):
                    chunk = jobs[i : i + _CHUNK]
                    for job, res in zip(chunk, run_map(render_covers, chunk)):
                        if res.reason is None:
                            accepted[job.ref.style].append(res)
                            task.advance()
                        else:
                            skipped[job.ref.style].append((res.work_id, res.reason))
        return self._assemble(accepted, skipped)

    def _assemble(
        self, accepted: dict[str, list[WorkResult]], skipped: dict[str, list[tuple[str, str]]]
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Split by work, order by (split, class, work id, version), build the index."""
        p: Params = self.params
        classes = m21_corpus.CLASSES
        split_of = stratified_split(
            {s: [r.work_id for r in accepted[s]] for s in classes},
            valid_fraction=p.valid_fraction, test_fraction=p.test_fraction, seed=p.seed,
            salt="m21-covers/split/")
        rows = []
        for ci, s in enumerate(classes):
            for res in accepted[s]:
                rows.append((SPLITS.index(split_of[res.work_id]), ci, res.work_id, res))
        rows.sort(key=lambda r: r[:3])
        examples, arrays = [], []
        for split_i, ci, wid, res in rows:
            for v, clip_meta in enumerate(res.clip_meta):
                examples.append({
                    "id": f"{wid}:v{v}",
                    "clip": len(arrays),
                    "label": None,
                    "work_id": wid,
                    "split": SPLITS[split_i],
                    "role": "reference" if v == 0 else "query",
                    "meta": {"work": wid, "style": classes[ci], **res.work_meta, **clip_meta},
                })
                arrays.append(res.clips[v])
        n_samples = int(round(p.clip_seconds * self.sample_rate))
        clips = np.stack(arrays) if arrays else np.zeros((0, n_samples), dtype=np.int16)
        index = {
            "format": _INDEX_FORMAT,
            "recipe": self.recipe(),
            "sample_rate": self.sample_rate,
            "clip_samples": n_samples,
            "examples": examples,
            "skipped": {s: [list(x) for x in v] for s, v in skipped.items()},
            "fingerprint": fingerprint_clips(clips, examples),
        }
        return clips, index

    def _load(self, path: Path) -> None:
        """Read a finished cache folder and check it is complete and matches its fingerprint."""
        self._clips, self._index = read_clip_cache(
            path, index_format=_INDEX_FORMAT, recipe=self.recipe(),
            fingerprint=fingerprint_clips)
