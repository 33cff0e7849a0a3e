"""``m21-styles``: style classification on real compositions, rendered by our own synthesizer.

The works come from the corpus that ships inside ``music21`` (Cuthbert & Ariza, ISMIR 2010;
https://web.mit.edu/music21/), see :mod:`musicbench_plugins.datasets.m21_corpus` for the six
classes and where each one's works come from. Nothing is downloaded.

Recipe (every random choice is drawn from ``numpy`` generators seeded by ``Params.seed`` and a
stable hash of the work id, so it does not depend on which other works were picked, on worker
count or on order of completion):

* per **work**: a tempo uniform in [60, 132] quarter notes per minute (notated tempo marks are
  ignored, so tempo is independent of the class), a transposition uniform in [-5, +6]
  semitones, and dynamics: the score's metric accents x a slow random swell x small per-note
  jitter.
* per **clip**: ``clips_per_work`` windows of ``clip_seconds``, one drawn in each equal part
  of the work (so they sit at different offsets); a window where notes sound less than 60% of the
  time is redrawn (up to 10 times) and otherwise dropped. Each clip gets its OWN timbre (uniform
  over :data:`~musicbench_plugins.datasets.synth.TIMBRES`) and room, independent of the class,
  so a classifier has to learn style rather than instrument.
* **splits** are by work, stratified: per class the works are shuffled with a seeded generator
  and cut into test / valid / train by ``test_fraction`` and ``valid_fraction``; all clips of a
  work land in the same split.

Works that fail to parse, have too few notes, are shorter than one clip, or yield no audible
clip are skipped and replaced by the next work in the class's spanning order; the skips are
recorded in ``skipped`` (and in the cache's ``index.json``).

Cache: ``<cache_dir>/datasets/m21-styles-<recipe hash>/`` with ``clips.npy`` (int16
``[N, clip_samples]``) and ``index.json`` (ids, labels, work ids, splits, meta, fingerprint),
written to a temporary folder and renamed into place, so an interrupted build leaves nothing
that could be mistaken for a cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from musicbench.api import (
    INT16_SCALE,
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

SPLITS: tuple[str, ...] = ("train", "valid", "test")
_INDEX_FORMAT = 1
_TEMPO_RANGE = (60.0, 132.0)  # quarter notes per minute
_TRANSPOSE_RANGE = (-5, 6)  # semitones, inclusive
_OFFSET_TRIES = 10


@dataclass(frozen=True)
class Params:
    """Size and randomness of the build.

    ``works_per_class`` is capped by what the corpus holds (Monteverdi has 49 madrigals).
    """

    works_per_class: int = 60
    clips_per_work: int = 8
    clip_seconds: float = 4.0
    valid_fraction: float = 0.15
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.works_per_class < 1:
            raise ValueError(f"works_per_class must be >= 1, got {self.works_per_class}")
        if self.clips_per_work < 1:
            raise ValueError(f"clips_per_work must be >= 1, got {self.clips_per_work}")
        if not 0.25 <= self.clip_seconds <= 60.0:
            raise ValueError(f"clip_seconds must be in [0.25, 60], got {self.clip_seconds}")
        for name in ("valid_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                "valid_fraction + test_fraction must leave works for training, got "
                f"{self.valid_fraction} + {self.test_fraction}"
            )
        for name in ("works_per_class", "clips_per_work"):
            check_number(name, getattr(self, name), at_least=1, at_most=MAX_SIZE, integer=True)
        check_seed("seed", self.seed)


# ----------------------------------------------------------------------------------------------
# Per-work rendering (runs in worker processes; pure function of its job)


@dataclass(frozen=True)
class _WorkJob:
    ref: m21_corpus.WorkRef
    seed: int
    clip_seconds: float
    clips_per_work: int
    sample_rate: int


def render_work(job: _WorkJob) -> WorkResult:
    """Parse one work and render its clips (see the module docstring for the recipe).

    Returns a result whose ``clips`` is ``int16[k, round(clip_seconds * sample_rate)]`` with
    ``1 <= k <= clips_per_work``, or whose ``reason`` says why the work was skipped.
    """
    ref = job.ref
    try:
        notes = m21_corpus.extract_notes(ref)
    except m21_corpus.WorkSkipped as exc:
        return WorkResult(ref.work_id, str(exc))
    work_key = stable_int(ref.work_id)
    rng = np.random.default_rng(np.random.SeedSequence([job.seed, work_key, 0]))
    tempo = float(rng.uniform(*_TEMPO_RANGE))
    transpose = int(rng.integers(_TRANSPOSE_RANGE[0], _TRANSPOSE_RANGE[1] + 1))
    sec_per_q = 60.0 / tempo
    onset = notes.onset * sec_per_q
    duration = notes.duration * sec_per_q
    pitch = fold_pitch(notes.pitch + transpose)
    swell_period = rng.uniform(6.0, 16.0)
    swell_phase = rng.uniform(0.0, 2.0 * np.pi)
    swell = 1.0 + 0.2 * np.sin(2.0 * np.pi * onset / swell_period + swell_phase)
    jitter = rng.normal(0.0, 0.03, size=onset.size)
    velocity = np.clip(notes.velocity * swell + jitter, 0.05, 1.0)
    length = float(np.max(onset + duration))
    clip = job.clip_seconds
    if length < clip:
        return WorkResult(ref.work_id, f"too short ({length:.1f} s < {clip} s clip)")

    sounding = coverage(onset, onset + duration, int(np.ceil(length * FRAME_RATE)) + 1)
    clip_frames = int(round(clip * FRAME_RATE))
    n_samples = int(round(clip * job.sample_rate))
    span = length - clip
    timbres = sorted(synth.TIMBRES)
    clips: list[np.ndarray] = []
    metas: list[dict[str, Any]] = []
    for c in range(job.clips_per_work):
        lo, hi = span * c / job.clips_per_work, span * (c + 1) / job.clips_per_work
        start = None
        for _ in range(_OFFSET_TRIES):
            cand = float(rng.uniform(lo, hi))
            f0 = int(round(cand * FRAME_RATE))
            if sounding[f0 : f0 + clip_frames].mean() >= MIN_COVERAGE:
                start = cand
                break
        if start is None:
            continue
        crng = np.random.default_rng(np.random.SeedSequence([job.seed, work_key, 1 + c]))
        timbre = timbres[int(crng.integers(len(timbres)))]
        # Only notes that can reach the window (incl. 1 s of pre-roll for the room tail).
        keep = (onset < start + clip) & (onset + duration + 1.5 > start - 1.0)
        events = list(
            zip(onset[keep], duration[keep], pitch[keep], velocity[keep], notes.voice[keep])
        )
        audio = synth.render(
            events, sample_rate=job.sample_rate, timbre=timbre, rng=crng, start=start,
            duration=clip,
        )
        if float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) < 1e-3:
            continue
        clips.append(to_int16(audio[:n_samples]))
        metas.append({"offset_s": round(start, 4), "timbre": timbre})
    if not clips:
        return WorkResult(ref.work_id, "no audible clip")
    work_meta = {
        "file": ref.path,
        "number": ref.number,
        "title": notes.title,
        "tempo_bpm": round(tempo, 2),
        "transpose": transpose,
        "n_voices": notes.n_voices,
        "n_notes": int(onset.size),
        "length_s": round(length, 2),
    }
    return WorkResult(ref.work_id, None, np.stack(clips), metas, work_meta)


# ----------------------------------------------------------------------------------------------
# The dataset


class M21Styles(Dataset):
    """Six-way style classification of music21 corpus works, 16 kHz mono clips, split by work.

    ``workers`` (not a parameter: it never changes the result) sets how many processes parse
    and render; 1 renders in this process.
    """

    task: ClassVar[str] = "classification"
    version: ClassVar[str] = "2"  # 2: one Palestrina movement per mass
    Params: ClassVar[type] = Params
    sample_rate: int = 16_000
    labels: tuple[str, ...] = m21_corpus.CLASSES
    workers: int = 2

    def __init__(self, params: Params | None = None):
        super().__init__(params)
        self._clips: np.ndarray | None = None
        self._index: dict[str, Any] | None = None

    # -- cache key ---------------------------------------------------------------------------

    def recipe(self) -> dict[str, Any]:
        """Everything the rendered content depends on (hashed into the cache folder name)."""
        return {
            "dataset": "m21-styles",
            "version": self.version,
            "params": asdict(self.params),
            "sample_rate": self.sample_rate,
            "music21": m21_corpus.music21_version(),
            "synth": synth.SYNTH_VERSION,
        }

    def cache_path(self, cache_dir: Path) -> Path:
        """``cache_dir/datasets/m21-styles-<16 hex of the recipe hash>``."""
        return recipe_path(cache_dir, "m21-styles", self.recipe())

    # -- Dataset API -------------------------------------------------------------------------

    def prepare(self, ctx: Context) -> None:
        """Load the clips from the cache, or render them and write the cache first."""
        def build(path: Path) -> None:
            clips, index = self._build(ctx)
            write_clip_cache(path, clips, index)

        load_or_build(self.cache_path(ctx.cache_dir), self._load, build, what="m21-styles")

    def examples(self, split: str) -> Sequence[Example]:
        """Clips of ``split`` as ``Example(audio=Tensor[T] float32 in [-1, 1])``, ordered by
        class, then work id, then offset. Each call builds fresh tensors."""
        import torch

        if self._clips is None or self._index is None:
            raise RuntimeError("M21Styles.examples() called before prepare(ctx)")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        out = []
        for i, ex in enumerate(self._index["examples"]):
            if ex["split"] != split:
                continue
            audio = torch.from_numpy(np.asarray(self._clips[i], dtype=np.float32) / INT16_SCALE)
            out.append(Example(id=ex["id"], audio=audio, label=ex["label"],
                               work_id=ex["work_id"], meta=dict(ex["meta"])))
        return out

    def fingerprint(self) -> str:
        """sha256 hex of the clips' int16 bytes, ids, labels, work ids and splits."""
        if self._index is None:
            raise RuntimeError("M21Styles.fingerprint() called before prepare(ctx)")
        return str(self._index["fingerprint"])

    @property
    def skipped(self) -> dict[str, list[tuple[str, str]]]:
        """Per class, the ``(work id, reason)`` of every work tried and skipped."""
        if self._index is None:
            raise RuntimeError("M21Styles.skipped read before prepare(ctx)")
        return {k: [tuple(x) for x in v] for k, v in self._index["skipped"].items()}

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {class: number of clips}}``."""
        if self._index is None:
            raise RuntimeError("M21Styles.counts() called before prepare(ctx)")
        out = {s: dict.fromkeys(self.labels, 0) for s in SPLITS}
        for ex in self._index["examples"]:
            out[ex["split"]][self.labels[ex["label"]]] += 1
        return out

    # -- building ----------------------------------------------------------------------------

    def _build(self, ctx: Context) -> tuple[np.ndarray, dict[str, Any]]:
        """Render every class; returns ``(int16[N, T] clips, index dict)`` in final order."""
        p: Params = self.params
        targets = {s: min(p.works_per_class, len(m21_corpus.list_works(s))) for s in self.labels}
        candidates = {s: m21_corpus.candidate_works(s, p.works_per_class) for s in self.labels}
        accepted: dict[str, list[WorkResult]] = {s: [] for s in self.labels}
        skipped: dict[str, list[tuple[str, str]]] = {s: [] for s in self.labels}
        tried = dict.fromkeys(self.labels, 0)
        with ctx.progress("rendering m21-styles", total=sum(targets.values())) as task, \
                process_map(self.workers, sum(targets.values())) as run_map:
            # Rounds: ask for exactly the missing works, in candidate order. A class keeps the
            # first `target` usable works of its candidate order whatever the worker count.
            while True:
                jobs = []
                for s in self.labels:
                    need = targets[s] - len(accepted[s])
                    batch = candidates[s][tried[s] : tried[s] + need]
                    tried[s] += len(batch)
                    jobs += [_WorkJob(r, p.seed, p.clip_seconds, p.clips_per_work,
                                      self.sample_rate) for r in batch]
                if not jobs:
                    break
                for job, res in zip(jobs, run_map(render_work, jobs)):
                    if res.reason is None:
                        accepted[job.ref.style].append(res)
                        task.advance()
                    else:
                        skipped[job.ref.style].append((res.work_id, res.reason))
        return self._assemble(accepted, skipped)

    def _split_works(self, style: str, work_ids: list[str]) -> dict[str, str]:
        """Seeded, stratified split of one class's works: ``{work_id: split}``."""
        p: Params = self.params
        ids = sorted(work_ids)
        rng = np.random.default_rng(
            np.random.SeedSequence([p.seed, stable_int("m21-styles/split/" + style)])
        )
        order = [ids[i] for i in rng.permutation(len(ids))]
        n = len(ids)
        n_test = int(round(p.test_fraction * n))
        n_valid = int(round(p.valid_fraction * n))
        if n >= 3:  # every split gets a work whenever it asked for any
            n_test = max(n_test, 1 if p.test_fraction > 0 else 0)
            n_valid = max(n_valid, 1 if p.valid_fraction > 0 else 0)
        split = {w: "test" for w in order[:n_test]}
        split |= {w: "valid" for w in order[n_test : n_test + n_valid]}
        split |= {w: "train" for w in order[n_test + n_valid :]}
        return split

    def _assemble(
        self,
        accepted: dict[str, list[WorkResult]],
        skipped: dict[str, list[tuple[str, str]]],
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Order clips by (split, class, work id, clip) and build the index."""
        rows: list[tuple[int, int, str, int, WorkResult]] = []
        for label, style in enumerate(self.labels):
            results = {r.work_id: r for r in accepted[style]}
            split_of = self._split_works(style, list(results))
            for wid, res in results.items():
                for c in range(len(res.clip_meta)):
                    rows.append((SPLITS.index(split_of[wid]), label, wid, c, res))
        rows.sort(key=lambda r: r[:4])
        examples, arrays = [], []
        for split_i, label, wid, c, res in rows:
            style = self.labels[label]
            meta = {"work": wid, "style": style, **res.work_meta, **res.clip_meta[c]}
            examples.append({
                "id": f"{style}:{wid}:{c}",
                "label": label,
                "work_id": wid,
                "split": SPLITS[split_i],
                "meta": meta,
            })
            arrays.append(res.clips[c])
        n_samples = int(round(self.params.clip_seconds * self.sample_rate))
        clips = np.stack(arrays) if arrays else np.zeros((0, n_samples), dtype=np.int16)
        works_by_split: dict[str, set[str]] = {s: set() for s in SPLITS}
        for ex in examples:
            works_by_split[ex["split"]].add(ex["work_id"])
        for a in range(len(SPLITS)):
            for b in range(a + 1, len(SPLITS)):
                both = works_by_split[SPLITS[a]] & works_by_split[SPLITS[b]]
                assert not both, f"works in both {SPLITS[a]} and {SPLITS[b]}: {sorted(both)[:5]}"
        index = {
            "format": _INDEX_FORMAT,
            "recipe": self.recipe(),
            "sample_rate": self.sample_rate,
            "clip_samples": n_samples,
            "labels": list(self.labels),
            "examples": examples,
            "skipped": {s: [list(x) for x in v] for s, v in skipped.items()},
        }
        index["fingerprint"] = _fingerprint(clips, examples)
        return clips, index

    # -- cache I/O ---------------------------------------------------------------------------

    def _load(self, path: Path) -> None:
        """Read a finished cache folder and check it is complete and matches its fingerprint."""
        self._clips, self._index = read_clip_cache(
            path, index_format=_INDEX_FORMAT, recipe=self.recipe(), fingerprint=_fingerprint)


def _fingerprint(clips: np.ndarray, examples: list[dict[str, Any]]) -> str:
    """sha256 hex over (ids, labels, work ids, splits) as JSON, then the int16 LE clip bytes."""
    h = hashlib.sha256()
    keys = [[e["id"], e["label"], e["work_id"], e["split"]] for e in examples]
    h.update(json.dumps(keys).encode())
    # In chunks: a memory-mapped cache is hashed without reading it all into memory at once.
    for i in range(0, len(clips), 256):
        h.update(np.ascontiguousarray(clips[i : i + 256], dtype="<i2").tobytes())
    return h.hexdigest()
