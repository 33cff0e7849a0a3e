"""External attack: adversarial audio made elsewhere, read from a folder and judged here.

The leaderboard's robust accuracy is an upper bound: the best attack the harness ran. Anyone
with a stronger attack can lower it by sending files, as RobustBench accepts stronger
evaluations (Croce et al., "RobustBench: a standardized adversarial robustness benchmark",
NeurIPS 2021 Datasets and Benchmarks): ``external`` reads one adversarial file per clip id,
checks it against the threat model it claims, and the harness judges it like any attack (zero
queries) and joins it to the per-clip worst case of that threat model. docs/attacks.md
("External adversarial audio") describes the layout; ``musicbench export-adv`` writes a run's
kept adversarial clips in it, so one board's attacks can be replayed on another revision.

- **Layout**: the file of clip ``ID`` is ``<folder>/<ID>.<suffix>`` (a clip id with ``/``
  lives in subfolders), any format and rate the dataset loaders read (:func:`load_audio`:
  mono mix, resampled to the model's rate, rescaled only if above full scale); or a
  ``manifest.csv`` in the folder with columns ``clip_id,path`` (paths relative to the folder)
  names them. No path may leave the folder. A clip without a file is returned unchanged (not a
  success, no note): a submission may cover only some clips.
- **Bound**: ``norm`` (``linf``, ``l2`` or ``none``) with ``eps`` or ``snr_db`` is the threat
  model the files claim; each file, at the model's rate, is checked against it. A file outside
  the bound, of another length, or unreadable is **rejected**: that clip is returned unchanged
  and the cell carries a note naming the clip id and the excess; nothing is ever clipped or
  projected into the bound. ``none``: the unbounded threat model (the board reports such cells
  by perturbation size, without robust accuracy).
- **Key**: :meth:`External.weights_digest` hashes every file's id and bytes, so changing a file
  makes new cells; the leaderboard header names every external source (``source``, or the
  folder) with that digest.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from musicbench.api import (
    Attack,
    AttackResult,
    BadAudioError,
    Bound,
    Context,
    Victim,
    check_number,
    check_snr_db,
    load_audio,
)
from musicbench.files import read_input_file
from musicbench.interfaces.attack import BOUND_RTOL
from musicbench_plugins._limits import MAX_L2_EPS, MAX_LINF_EPS

MANIFEST = "manifest.csv"
MAX_MANIFEST_BYTES = 64 * 2**20
# what a submission folder may hold besides audio: its manifest and notes for people
_NOT_AUDIO = {MANIFEST, "README.md", "README.txt", "export.json"}
# an integer PCM file rounds each sample to its grid: half a step of slack per sample, so a
# perturbation written at exactly eps is not rejected for the rounding (8-bit files get none:
# half their step is larger than a typical eps)
_PCM_HALF_STEP = {"PCM_16": 2.0 ** -16, "PCM_24": 2.0 ** -24, "PCM_32": 2.0 ** -32}


@dataclass(frozen=True)
class ExternalParams:
    """``folder``: the submission (see the module docstring); ``norm``/``eps``/``snr_db``: the
    threat model its files claim (``none``: unbounded); ``source``: who or what made them, for
    the leaderboard header (default: the folder's name); ``pcm_slack``: tolerate the rounding
    of a 16-, 24- or 32-bit PCM file (half a step per sample) above the bound, so a
    perturbation written at exactly ``eps`` is not rejected for its quantisation."""

    folder: str = ""
    norm: Literal["linf", "l2", "none"] = "linf"
    eps: float = 0.002
    snr_db: float | None = None
    source: str = ""
    pcm_slack: bool = True

    def __post_init__(self) -> None:
        if not self.folder:
            raise ValueError("folder must name the folder of adversarial files (one per clip "
                             "id; docs/attacks.md, 'External adversarial audio')")
        if self.norm not in ("linf", "l2", "none"):
            raise ValueError(f"norm must be 'linf', 'l2' or 'none', got {self.norm!r}")
        check_snr_db(self.snr_db)
        check_number("eps", self.eps, above=0,
                     at_most=MAX_LINF_EPS if self.norm == "linf" else MAX_L2_EPS)
        if self.norm == "none" and self.snr_db is not None:
            raise ValueError("snr_db needs norm = 'linf' or 'l2' (an SNR budget is a bound)")


class External(Attack):
    """Returns, for each clip, the file the folder holds for its id (checked against the
    bound), the clean clip where it holds none or rejects it; never queries the victim.

    Shape: audio ``[B, T]`` in [-1, 1] at the model's rate, target ``[B]`` -> adv ``[B, T]``;
    ``steps`` 1 where a file was used, 0 elsewhere. Needs the clip ids of the batch
    (``victim.clip_ids``), which the harness gives every attack.
    """

    threat = "black-box"
    transfer = True  # zero queries: the harness checks it
    version = "1"
    Params = ExternalParams

    def prepare(self, ctx: Context) -> None:
        root = Path(self.params.folder).expanduser()
        if not root.is_dir():
            raise ValueError(f"external: folder {root} does not exist or is not a folder")
        self.root = root.resolve()
        self.files = index_submission(self.root)
        if not self.files:
            raise ValueError(f"external: folder {root} holds no audio files (nor a "
                             f"{MANIFEST}); expected <clip id>.<suffix> files")

    def bound(self) -> Bound | None:
        p = self.params
        return None if p.norm == "none" else Bound(p.norm, p.eps, p.snr_db)

    def weights_digest(self) -> str | None:
        """Every file's clip id and bytes: an edited, added or removed file makes new cells."""
        h = hashlib.sha256()
        for clip_id, path in sorted(self.files.items()):
            h.update(clip_id.encode("utf-8", "surrogatepass") + b"\0")
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            h.update(b"\0")
        return h.hexdigest()[:16]

    def source_label(self) -> str:
        return self.params.source or self.root.name

    def run(
        self,
        victim: Victim,
        audio: torch.Tensor,
        target: torch.Tensor,
        *,
        generator: torch.Generator,
    ) -> AttackResult:
        ids = victim.clip_ids
        if ids is None:
            raise ValueError("external: this victim does not know its clips' ids (the harness "
                             "gives them; a direct call must pass clip_ids=)")
        adv = audio.clone()
        steps = torch.zeros(audio.shape[0], dtype=torch.long, device=audio.device)
        notes: list[str] = []
        bound = self.bound()
        limits = bound.limits(audio) if bound is not None else None
        for row, clip_id in enumerate(ids):
            path = self.files.get(clip_id)
            if path is None:
                continue
            try:
                wave = load_audio(path, int(victim.sample_rate)).to(audio.device, audio.dtype)
            except BadAudioError as exc:
                notes.append(f"external: clip {clip_id} rejected: {exc.reason}")
                continue
            if wave.shape[0] != audio.shape[1]:
                notes.append(f"external: clip {clip_id} rejected: {wave.shape[0]} samples at "
                             f"{victim.sample_rate} Hz, the clip has {audio.shape[1]}")
                continue
            if limits is not None:
                excess = self._excess(wave - audio[row], float(limits[row]), path)
                if excess is not None:
                    notes.append(f"external: clip {clip_id} rejected: {excess}")
                    continue
            adv[row] = wave
            steps[row] = 1
        return AttackResult(adv=adv, success=torch.zeros_like(steps, dtype=torch.bool),
                            queries=torch.zeros_like(steps), steps=steps, notes=notes)

    def _excess(self, delta: torch.Tensor, limit: float, path: Path) -> str | None:
        """None when ``delta[T]`` is inside the bound (radius ``limit``), else the excess."""
        norm = self.params.norm
        size = float(delta.abs().max() if norm == "linf" else delta.norm())
        slack = limit * BOUND_RTOL + 1e-7  # the harness's own rule (Attack.__call__)
        half = _PCM_HALF_STEP.get(_subtype(path), 0.0) if self.params.pcm_slack else 0.0
        slack += half if norm == "linf" else half * delta.numel() ** 0.5
        if size <= limit + slack:
            return None
        name = "L∞" if norm == "linf" else "L2"
        return f"{name} {size:.6g} > {limit:.6g} (excess {size - limit:.3g})"


def _subtype(path: Path) -> str:
    """The file's sample format as soundfile names it (``PCM_16``, ``FLOAT``, ...); ``""``
    when it cannot tell (an MP3, say)."""
    import soundfile as sf

    try:
        return str(sf.info(os.fsencode(path)).subtype)
    except (sf.LibsndfileError, OSError, RuntimeError):
        return ""


def index_submission(root: Path) -> dict[str, Path]:
    """``{clip id: file}`` of submission folder ``root`` (resolved): from its ``manifest.csv``
    when there is one, else every regular file below it named ``<clip id>.<suffix>``.
    Raises ValueError for a path that leaves the folder, a clip id named twice, or a manifest
    without the two columns."""
    manifest = root / MANIFEST
    if manifest.is_file():
        return _from_manifest(root, manifest)
    files: dict[str, Path] = {}
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if name in _NOT_AUDIO or name.startswith(".") or not path.is_file():
                continue
            rel = path.relative_to(root)
            clip_id = rel.with_suffix("").as_posix()
            _inside(root, path, clip_id)
            if clip_id in files:
                raise ValueError(f"external: clip {clip_id} has two files in {root}: "
                                 f"{files[clip_id].name} and {name}; keep one")
            files[clip_id] = path
    return files


def _from_manifest(root: Path, manifest: Path) -> dict[str, Path]:
    # the harness's reader of user-named input files: a FIFO, device or huge file is refused
    raw = read_input_file(manifest, what="external submission manifest",
                          max_bytes=MAX_MANIFEST_BYTES,
                          holds="a manifest has one short line per clip")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"external: {manifest} is not UTF-8 text") from None
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows or [h.strip().lower() for h in rows[0][:2]] != ["clip_id", "path"]:
        raise ValueError(f"external: {manifest} must start with the header clip_id,path")
    files: dict[str, Path] = {}
    for line, row in enumerate(rows[1:], 2):
        if not any(v.strip() for v in row):
            continue
        if len(row) < 2 or not row[0] or not row[1]:
            raise ValueError(f"external: {manifest} line {line}: need clip_id,path")
        clip_id, rel = row[0], row[1]
        path = root / rel
        _inside(root, path, clip_id)
        if not path.is_file():
            raise ValueError(f"external: {manifest} line {line}: {rel} is not a file")
        if clip_id in files:
            raise ValueError(f"external: {manifest} line {line}: clip {clip_id} named twice")
        files[clip_id] = path
    return files


def _inside(root: Path, path: Path, clip_id: str) -> None:
    """A submission's file must lie inside its folder, symlinks resolved (a planted link
    must not make the harness read, and digest, files elsewhere)."""
    try:
        path.resolve().relative_to(root)
    except ValueError:
        raise ValueError(f"external: the file of clip {clip_id} ({path}) lies outside "
                         f"{root}") from None
