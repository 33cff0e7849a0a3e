"""Scoring for score-based (black-box) attacks: many perturbed copies of each clip, scored
through the Victim in bounded chunks, every row counted as one query of its clip (public
through :mod:`musicbench.api`)."""

from __future__ import annotations

from typing import Literal

import torch

from musicbench.victim import Victim, margin_from_logits

Objective = Literal["margin", "cross-entropy"]


@torch.no_grad()
def score_rows(
    victim: Victim,
    rows: torch.Tensor,
    target: torch.Tensor,
    index: torch.Tensor,
    objective: Objective,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows[R, T]``, each a copy of clip ``index[R]`` whose label is ``target[R]`` ->
    ``(value[R], margin[R])`` from one counted forward per row: ``value`` is the quantity the
    attack lowers and ``margin`` (> 0 while the model is right: the Victim's) says which rows
    already succeed. At most ``chunk`` rows per forward pass (memory only).

    ``value`` is taken of the scores averaged over the victim's EOT draws: for ``"margin"``
    the margin of the draw-averaged scores (shifted by the victim's ``confidence``, as its
    margin is), for ``"cross-entropy"`` minus the cross-entropy averaged over draws. What an
    attack compares, accepts and estimates gradients from is ``value``; what stops a clip is
    ``margin``, which under EOT is the largest over the draws (<= 0 only when the model is
    wrong on every draw): a search on it would chase the luckiest draw. Without a randomized
    defense (one draw) the two margins are the same number."""
    values, margins = [], []
    for start in range(0, rows.shape[0], chunk):
        sl = slice(start, start + chunk)
        if objective == "margin":
            scores, margin = victim.scores_and_margin(rows[sl], target[sl], index=index[sl])
            values.append(margin_from_logits(scores, target[sl]) + victim.confidence)
        else:
            loss, margin = victim.loss_and_margin(rows[sl], target[sl], index=index[sl])
            values.append(-loss)
        margins.append(margin)
    if not values:
        return rows.new_zeros(0), rows.new_zeros(0)
    return torch.cat(values), torch.cat(margins)


def remaining_budget(victim: Victim, budget: int, active: torch.Tensor) -> int:
    """Rows every clip in ``active`` may still have scored: the attack's own budget or the
    victim's, whichever is smaller, minus what the clip has spent (the most any of them has,
    so a planned batch never pushes a clip over), divided by the queries one row costs
    (:attr:`Victim.queries_per_row`: against a randomized defense every row is scored over
    several draws and each draw is a query)."""
    if victim.budget is not None:
        budget = min(budget, victim.budget)
    if active.numel() == 0:
        return 0
    return (budget - int(victim.queries[active].max())) // victim.queries_per_row
