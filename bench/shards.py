"""Clip shards: a cell's clips split into ranges that run as separate tasks (DESIGN.md section 7).

A shard is a range ``[lo, hi)`` of the cell's clip positions, always whole batches of the
run's ``batch_size``: every batch draws from its own streams (seeded by the cell's seeds and
the batch's first position, :func:`batch_seed`), so a clip's randomness is the same whether
its batch runs in one process with the whole cell or in a shard elsewhere, and a sharded cell
gives exactly the records of the unsharded one. What a shard produced travels (Ray) and is
stored (resume per shard) as a :class:`ShardResult`; the cell's figures (rates, intervals,
FAD, mAP, the vanishing-gradient flag) are computed once all its shards are in
(:func:`musicbench.runner.finish_cell`).
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from musicbench.cells import derive_seed
from musicbench.store import SampleRecord

SHARD_CLIPS_AUTO = -1
"""``[run] shard_clips`` default: whole cells with the local executor, :data:`RAY_SHARD_CLIPS`
clips per shard with the ray executor."""

RAY_SHARD_CLIPS = 32


def batch_seed(seed: int, start: int) -> int:
    """The seed of one stream for the batch whose first clip is at position ``start``."""
    return derive_seed(f"{seed}:clips-from:{start}")


def shard_ranges(clips: int, batch_size: int, shard_clips: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges covering ``clips`` positions; ``shard_clips`` rounded up to whole
    batches (a shard boundary inside a batch would change that batch's draws); 0: one range."""
    if clips <= 0:
        return [(0, 0)]
    if shard_clips <= 0:
        return [(0, clips)]
    size = -(-shard_clips // batch_size) * batch_size
    return [(lo, min(lo + size, clips)) for lo in range(0, clips, size)]


def effective_shard_clips(shard_clips: int, executor: str) -> int:
    """What :data:`SHARD_CLIPS_AUTO` means for ``executor``; other values as they are."""
    if shard_clips != SHARD_CLIPS_AUTO:
        return shard_clips
    return RAY_SHARD_CLIPS if executor == "ray" else 0


@dataclass
class ShardResult:
    """What the batches ``[lo, hi)`` of one cell produced (plain data: picklable, storable).

    Tensors are on the CPU: ``adv`` ``[n, T]`` float32 audio (the clean clip where it was not
    attacked; the clean clips themselves are the dataset's, not carried), ``attacked``,
    ``success`` ``bool[n]``, ``targets`` ``long[n]``; ``gradient_norms``/``plain_norms`` the
    input-gradient norms at clean-correct clips through the defended and the undefended model
    (white-box cells; empty otherwise). ``audio_data``: kept clips, ``(sample id, "clean" |
    "adv") -> float32[T]``. ``error``: the shard failed (its traceback beside it).
    """

    lo: int
    hi: int
    samples: list[SampleRecord] = field(default_factory=list)
    adv: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    attacked: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    success: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    targets: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    gradient_norms: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    plain_norms: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    audio_data: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    attack_seconds: float = 0.0
    undefended_right: int = 0  # clean clips the undefended model gets right
    started: str = ""
    finished: str = ""
    seconds: float = 0.0
    peak_memory_mb: float | None = None
    load_average: list[float] | None = None
    error: str | None = None
    traceback: str | None = None

    _TENSORS = ("adv", "attacked", "success", "targets", "gradient_norms",
                "plain_norms")

    def to_payload(self) -> tuple[str, bytes]:
        """(JSON of the scalars and samples, ``.npz`` bytes of the arrays) for the store;
        nothing pickled, so reading a store never runs code."""
        meta = {k: v for k, v in asdict(self).items()
                if k not in self._TENSORS and k not in ("samples", "audio_data")}
        meta["samples"] = [asdict(s) for s in self.samples]
        kept = sorted(self.audio_data)
        meta["audio_keys"] = [list(k) for k in kept]
        arrays = {name: getattr(self, name).numpy() for name in self._TENSORS}
        arrays |= {f"audio_{i}": self.audio_data[k] for i, k in enumerate(kept)}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return json.dumps(meta), buffer.getvalue()

    @staticmethod
    def from_payload(meta_json: str, blob: bytes) -> ShardResult:
        """The shard :meth:`to_payload` wrote. A malformed payload raises what decoding it
        does (``ValueError``, ``KeyError``, ``TypeError``, ``zipfile.BadZipFile``, ...):
        :meth:`musicbench.store.Store.shards` names the row."""
        meta, samples, keys = ShardResult._decode_meta(meta_json)
        with np.load(io.BytesIO(blob), allow_pickle=False) as arrays:
            tensors = {name: torch.from_numpy(arrays[name].copy())
                       for name in ShardResult._TENSORS}
            audio = {k: arrays[f"audio_{i}"].copy() for i, k in enumerate(keys)}
        return ShardResult(**meta, samples=samples, audio_data=audio, **tensors)

    @staticmethod
    def check_payload(meta_json: str, blob: bytes) -> None:
        """Raise as :meth:`from_payload` would on a malformed scalar part or an archive that
        does not list every array, without reading the arrays (a store checks every kept
        shard when it is opened)."""
        meta, samples, keys = ShardResult._decode_meta(meta_json)
        ShardResult(**meta, samples=samples)  # every field known, none missing
        with np.load(io.BytesIO(blob), allow_pickle=False) as arrays:
            names = set(arrays.files)
        wanted = {*ShardResult._TENSORS, *(f"audio_{i}" for i in range(len(keys)))}
        if not wanted <= names:
            raise KeyError(f"arrays {sorted(wanted - names)} missing")

    @staticmethod
    def _decode_meta(meta_json: str) -> tuple[dict[str, Any], list[SampleRecord],
                                              list[tuple[str, ...]]]:
        meta = json.loads(meta_json)
        if not isinstance(meta, dict):
            raise TypeError(f"meta is a JSON {type(meta).__name__}, not an object")
        samples = [SampleRecord(**s) for s in meta.pop("samples")]
        keys = [tuple(k) for k in meta.pop("audio_keys")]
        return meta, samples, keys


def merged_flags(groups: list[list[str]]) -> list[str]:
    """Flags of several shards in order, each once."""
    out: list[str] = []
    for flags in groups:
        out += [f for f in flags if f not in out]
    return out


def kept_audio(shards: list[ShardResult], keep: int) -> dict[tuple[str, str], Any]:
    """The first ``keep`` fooled clips (clean and adversarial) in clip order, as the unsharded
    cell keeps them (each shard keeps at most ``keep`` of its own)."""
    out: dict[tuple[str, str], Any] = {}
    for shard in shards:
        for s in shard.samples:  # in clip order
            if len(out) >= 2 * keep:
                return out
            for kind in ("clean", "adv"):
                if (s.sample_id, kind) in shard.audio_data:
                    out[(s.sample_id, kind)] = shard.audio_data[(s.sample_id, kind)]
    return out
