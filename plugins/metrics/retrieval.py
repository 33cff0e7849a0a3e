"""Retrieval figures as a set-level metric: mAP over the reference set and MR1 (mean rank of the
first correct reference), before and after the attack (docs/metrics.md, 'Retrieval cells')."""

from __future__ import annotations

import torch

from musicbench.interfaces import CellAudio, Context, SetMetric, SetMetricResult
from musicbench.metrics import retrieval_ranking

EMBED_BATCH = 32


class MAP(SetMetric):
    """mAP and MR1 of every query of a retrieval cell, clean and attacked. Queries the model
    already got wrong are not attacked and keep their clean audio."""

    higher_is_better = True
    columns = {"map_clean": True, "map_adv": True, "mr1_clean": False, "mr1_adv": False}

    def applies(self, cell: CellAudio) -> bool:
        return cell.task == "retrieval"

    def compute(self, cell: CellAudio, ctx: Context) -> SetMetricResult:
        if cell.embed is None or cell.references is None:
            raise ValueError("mAP needs the cell's embedding function and reference set")
        refs = cell.references
        out: dict[str, float] = {}
        for when, audio in (("clean", cell.clean), ("adv", cell.adv)):
            emb = torch.cat([cell.embed(audio[i : i + EMBED_BATCH]).cpu()
                             for i in range(0, audio.shape[0], EMBED_BATCH)])
            ranking = retrieval_ranking(emb, cell.targets, refs.embeddings.cpu(),
                                        refs.works.cpu())
            out[f"map_{when}"] = float(ranking["ap"].mean())
            out[f"mr1_{when}"] = float(ranking["first_rank"].mean())
        return SetMetricResult(out, n=len(cell.ids))
