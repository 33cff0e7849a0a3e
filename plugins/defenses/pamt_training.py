"""Training PAMT's head on cached encoder frames.

The encoder is frozen (PAMT, arXiv 2509.04985), so its frames of the clean clips and of a fixed
set of perturbed views are computed once (:func:`encode_views`) and the head trains on those
tensors alone (:func:`train_head`): an epoch costs the head's passes, not the encoder's. The
price is a fixed set of ``views`` perturbations per clip instead of fresh ones every epoch;
``views`` is a parameter. Used by the ``pamt-distance`` metric and, later, the ``pamt``
training defense.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from musicbench_plugins.defenses.pamt_head import PamtHead, sequence_info_nce
from musicbench_plugins.defenses.pamt_psychoacoustic import PsychoacousticPerturbation


@dataclass
class CachedViews:
    """Frames of ``N`` clips and ``V`` perturbed views of each.

    Shapes: ``clean[N, F, E]``, ``perturbed[N, V, F, E]`` (stored in ``dtype`` of
    :func:`encode_views`, float16 by default, to fit many clips in memory), ``params[N, V, P]``
    float32 (:meth:`~.pamt_psychoacoustic.Perturbation.vector`).
    """

    clean: torch.Tensor
    perturbed: torch.Tensor
    params: torch.Tensor

    def __post_init__(self) -> None:
        n, f, e = self.clean.shape
        if self.perturbed.shape[0] != n or self.perturbed.shape[2:] != (f, e) \
                or self.params.shape[:2] != self.perturbed.shape[:2]:
            raise ValueError(f"inconsistent cached views: clean {tuple(self.clean.shape)}, "
                             f"perturbed {tuple(self.perturbed.shape)}, params "
                             f"{tuple(self.params.shape)}")

    @property
    def frames(self) -> int:
        return self.clean.shape[1]


@torch.no_grad()
def encode_views(embed: Callable[[torch.Tensor], torch.Tensor], clips: torch.Tensor,
                 perturbation: PsychoacousticPerturbation, views: int,
                 generator: torch.Generator, *, batch_size: int = 16,
                 dtype: torch.dtype = torch.float16,
                 progress: Callable[[int], None] | None = None) -> CachedViews:
    """Encode ``clips[N, T]`` (at the encoder's and ``perturbation``'s sample rate) and
    ``views`` perturbed versions of each with ``embed`` (an :class:`Encoder`'s
    ``embed``: ``[B, T] -> [B, F, E]``). Views are drawn batch by batch from ``generator``
    (view v of every clip in one pass), so one seed gives one cache. ``progress(n)`` is told
    the clips done after each batch."""
    if clips.dim() != 2 or views < 1:
        raise ValueError(f"need clips[N, T] and views >= 1, got {tuple(clips.shape)}, {views}")
    clean, perturbed, params = [], [], []
    for i in range(0, clips.shape[0], batch_size):
        x = clips[i : i + batch_size]
        clean.append(embed(x).to("cpu", dtype))
        pv, pp = [], []
        for _ in range(views):
            y, p = perturbation.perturb(x, generator)
            pv.append(embed(y).to("cpu", dtype))
            pp.append(p.vector())
        perturbed.append(torch.stack(pv, 1))
        params.append(torch.stack(pp, 1))
        if progress is not None:
            progress(x.shape[0])
    return CachedViews(torch.cat(clean), torch.cat(perturbed), torch.cat(params))


@dataclass(frozen=True)
class TrainConfig:
    """How the head trains (none of it is published).

    - ``epochs``; ``batch_size`` clips per step (one random view each); AdamW with
      ``learning_rate`` and ``weight_decay``, cosine decay to zero.
    - ``window_frames``: each step sees a random window of this many frames per clip (the
      whole sequence if shorter); the InfoNCE matrix is ``(batch_size * window)^2``.
    - ``temperature``, ``negatives``, ``exclude_radius``, ``symmetric``: of
      :func:`~.pamt_head.sequence_info_nce`.
    """

    epochs: int = 8
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    window_frames: int = 64
    temperature: float = 0.1
    negatives: Literal["batch", "clip", "frame"] = "batch"
    exclude_radius: int = 4
    symmetric: bool = True

    def loss(self, anchor: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        return sequence_info_nce(anchor, positive, temperature=self.temperature,
                                 negatives=self.negatives, exclude_radius=self.exclude_radius,
                                 symmetric=self.symmetric)


def _windows(views: CachedViews, clips: torch.Tensor, view: torch.Tensor, start: torch.Tensor,
             width: int, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean ``[b, W, E]``, perturbed ``[b, W, E]`` (float32 on ``device``) and params
    ``[b, P]`` for clip indices ``clips[b]``, view indices ``view[b]``, window starts
    ``start[b]``."""
    frames = start[:, None] + torch.arange(width)
    rows = clips[:, None]
    clean = views.clean[rows, frames]
    pert = views.perturbed[rows, view[:, None], frames]
    return (clean.to(device, torch.float32), pert.to(device, torch.float32),
            views.params[clips, view].to(device))


@torch.no_grad()
def evaluate(head: PamtHead, views: CachedViews, config: TrainConfig,
             batch_size: int | None = None) -> float:
    """Mean InfoNCE over every (clip, view) of ``views`` on the first ``window_frames``
    frames, head in eval mode: a fixed validation figure."""
    head.eval()
    device = next(head.parameters()).device
    n, v = views.perturbed.shape[:2]
    width = min(config.window_frames, views.frames)
    bs = batch_size or config.batch_size
    pairs = torch.cartesian_prod(torch.arange(n), torch.arange(v))
    total, count = 0.0, 0
    for i in range(0, pairs.shape[0], bs):
        chunk = pairs[i : i + bs]
        clean, pert, params = _windows(views, chunk[:, 0], chunk[:, 1],
                                       torch.zeros(chunk.shape[0], dtype=torch.long), width,
                                       device)
        loss = config.loss(head(pert, params), head(clean, None))
        total += float(loss) * chunk.shape[0]
        count += chunk.shape[0]
    return total / count


def train_head(head: PamtHead, train: CachedViews, config: TrainConfig,
               generator: torch.Generator, *, valid: CachedViews | None = None,
               on_step: Callable[[], None] | None = None,
               on_epoch: Callable[[dict[str, float]], None] | None = None
               ) -> list[dict[str, float]]:
    """Train ``head`` (already on its device, initialised by the caller) on cached frames.

    Per step: ``batch_size`` clips, a random view and a random ``window_frames`` window for
    each; the perturbed window goes through the head with its parameters, the clean one with
    the null vector; loss :meth:`TrainConfig.loss` (perturbed as anchors). Keeps the epoch
    with the lowest validation loss when ``valid`` is given (else the last). Draws clips,
    views and windows from ``generator``; dropout uses the global RNG, which the caller
    seeds. Returns the history: per epoch ``epoch``, ``loss`` (train mean) and
    ``valid_loss`` (NaN without ``valid``)."""
    n, v = train.perturbed.shape[:2]
    if n < 2:
        raise ValueError(f"InfoNCE needs at least 2 clips to train on, got {n}")
    device = next(head.parameters()).device
    width = min(config.window_frames, train.frames)
    batches = math.ceil(n / config.batch_size)
    opt = torch.optim.AdamW(head.parameters(), lr=config.learning_rate,
                            weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * batches)
    history: list[dict[str, float]] = []
    best, best_state = math.inf, None
    for epoch in range(config.epochs):
        head.train()
        order = torch.randperm(n, generator=generator)
        total, steps = 0.0, 0
        for b in range(batches):
            clips = order[b * config.batch_size : (b + 1) * config.batch_size]
            if clips.numel() < 2:  # a lone clip has only its own frames as negatives
                continue
            view = torch.randint(0, v, (clips.numel(),), generator=generator)
            start = torch.randint(0, train.frames - width + 1, (clips.numel(),),
                                  generator=generator)
            clean, pert, params = _windows(train, clips, view, start, width, device)
            loss = config.loss(head(pert, params), head(clean, None))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
            steps += 1
            if on_step is not None:
                on_step()
        valid_loss = evaluate(head, valid, config) if valid is not None else math.nan
        row = {"epoch": epoch + 1, "loss": round(total / max(steps, 1), 5),
               "valid_loss": round(valid_loss, 5)}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if valid is None or valid_loss < best:
            best = valid_loss
            best_state = {k: t.detach().clone() for k, t in head.state_dict().items()}
    assert best_state is not None
    head.load_state_dict(best_state)
    head.eval()
    return history


def frozen(head: nn.Module) -> nn.Module:
    """``head`` in eval mode without parameter gradients."""
    head.eval()
    for p in head.parameters():
        p.requires_grad_(False)
    return head
