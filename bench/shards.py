"""Clip shards: a cell's clips split into ranges that run as separate tasks (docs/ray.md).

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

from typing import Any

from musicbench.cells import derive_seed
from musicbench.shard_record import ShardResult

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
