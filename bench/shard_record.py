"""What one shard of a cell produced (:class:`ShardResult`) and its storable form: plain data
that the executors hand back and :mod:`musicbench.store` keeps until its cell is written. It
sits below both :mod:`musicbench.shards` (which plans and merges shards) and the store, so the
store reads shards without importing the shard planner."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from musicbench.sample_record import SampleRecord


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
