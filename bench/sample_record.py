"""The record of one clip of one cell (:class:`SampleRecord`), plain data with no imports of
its own: the store keeps it in its ``samples`` table and a shard carries it, so it lives below
both (:mod:`musicbench.store`, :mod:`musicbench.shard_record`) and each imports it from here."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SampleRecord:
    """One clip of one cell. ``metrics`` holds per-sample metrics of attacked clips."""

    sample_id: str
    position: int
    label: int | None
    clean_pred: int | None
    clean_correct: bool
    attacked: bool
    adv_pred: int | None
    success: bool
    queries: int
    steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    # Under a randomized defense (eval_draws > 1): the fraction of the judging draws on which
    # the model was wrong, on the clean clip and on the attack's output (attacked clips);
    # None when one draw decides.
    clean_wrong: float | None = None
    adv_wrong: float | None = None
    # The musical work the clip was cut from (``Example.work_id``); clips of one work are not
    # independent, so intervals resample works. None when the dataset names no works (or the
    # store predates schema 4).
    work_id: str | None = None
