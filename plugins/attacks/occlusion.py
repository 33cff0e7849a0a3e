"""Black-box importance for MAIA: occlusion with tapered chunks, refined down to the gap length.

Liu et al., ISMIR 2025 (arXiv 2509.04980): 0.5 s non-overlapping chunks, each zeroed with a
Tukey(0.1) taper; score I(C) = [L(M(x without C), y) - L(M(x), y)] / duration(C); the best chunk
is split recursively until the target granularity. Readings (docs/maia.md):

- L is the Victim's loss (cross-entropy of the true class, from scores only); "zeroed with a
  taper" multiplies the chunk by ``1 - tukey``, so its edges fade instead of clicking.
- Every chunk of every clip in the batch is scored in one Victim call (forward queries only,
  one per occluded copy, each counted for its clip); each refinement level is one more call.
- Refinement: a chunk at least twice the gap is split in halves and the better half kept; a
  chunk shorter than that gives two gap-long candidates aligned to its start and its end. A
  gap longer than ``chunk_seconds`` makes the chunks gap-long (no refinement). A clip's short
  last chunk, if chosen, is widened to the gap around its centre. For ``regions > 1`` the best
  ``regions`` chunks are each refined; a region that a widening made overlap a better one is
  dropped (``valid`` False).
"""

from __future__ import annotations

import math

import torch

from musicbench.victim import Victim
from musicbench_plugins.attacks.maia_masks import Regions


def tukey(length: int, alpha: float, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Tukey (tapered cosine) window of ``length`` samples: flat top, cosine ramps over the
    fraction ``alpha`` of the window (scipy.signal.windows.tukey, sym=True)."""
    if length <= 1 or alpha <= 0:
        return torch.ones(length, device=device, dtype=dtype)
    n = torch.arange(length, device=device, dtype=torch.float64)
    width = alpha * (length - 1) / 2
    w = torch.ones(length, dtype=torch.float64, device=device)
    rise = n < width
    fall = n > (length - 1) - width
    w[rise] = 0.5 * (1 + torch.cos(math.pi * (n[rise] / width - 1)))
    w[fall] = 0.5 * (1 + torch.cos(math.pi * ((n[fall] - (length - 1)) / width + 1)))
    return w.to(dtype)


def occlusion_cost(samples: int, gap: int, regions: int, chunk: int) -> int:
    """Queries per clip that :func:`occlusion_regions` spends at most on a clip of
    ``samples`` (a clip's short last chunk may need fewer refinement levels)."""
    gap = min(gap, samples)
    chunk = min(max(chunk, gap), samples)
    chunks = -(-samples // chunk)
    length, levels = chunk, 0
    while length > gap:
        length = length // 2 if length >= 2 * gap else gap
        levels += 1
    return chunks + 2 * levels * min(regions, chunks)


@torch.no_grad()
def occlusion_regions(
    victim: Victim,
    audio: torch.Tensor,
    target: torch.Tensor,
    base_loss: torch.Tensor,
    *,
    gap: int,
    regions: int,
    chunk: int,
    taper: float = 0.1,
    index: torch.Tensor | None = None,
) -> Regions:
    """Rank ``regions`` segments of ``gap`` samples of each clip ``audio[B, T]`` by occlusion.

    ``base_loss[B]`` is the Victim's loss on the clean clips (the caller already paid for it).
    Costs :func:`occlusion_cost` queries per clip, counted by the Victim against ``index``.
    Frequency bands are the full band (occlusion here resolves time only).
    """
    batch, samples = audio.shape
    device = audio.device
    index = index if index is not None else torch.arange(batch, device=device)
    gap = min(gap, samples)
    chunk = min(max(chunk, gap), samples)
    n_chunks = -(-samples // chunk)
    starts = torch.arange(n_chunks, device=device) * chunk
    ends = (starts + chunk).clamp(max=samples)
    # Level 0: every chunk of every clip, one call.
    scores = _scores(victim, audio, target, base_loss, index, starts[None].expand(batch, -1),
                     ends[None].expand(batch, -1), taper)  # [B, n_chunks]
    r = min(regions, n_chunks)
    order = scores.argsort(dim=1, descending=True, stable=True)[:, :r]  # [B, r]
    lo, hi = starts[order], ends[order]
    best = scores.gather(1, order)
    while True:
        length = hi - lo  # [B, r]
        if bool((length <= gap).all()):
            break
        halves = length >= 2 * gap
        mid = lo + length // 2
        cand_lo = torch.stack([lo, torch.where(halves, mid, hi - gap)], -1)  # [B, r, 2]
        cand_hi = torch.stack([torch.where(halves, mid, lo + gap), hi], -1)
        done = (length <= gap)[..., None].expand_as(cand_lo)
        cand_lo, cand_hi = torch.where(done, lo[..., None], cand_lo), torch.where(
            done, hi[..., None], cand_hi)
        s = _scores(victim, audio, target, base_loss, index,
                    cand_lo.reshape(batch, -1), cand_hi.reshape(batch, -1), taper,
                    skip=done.reshape(batch, -1))
        s = s.reshape(batch, r, 2)
        pick = s.argmax(-1, keepdim=True)
        lo = torch.where(done[..., 0], lo, cand_lo.gather(-1, pick).squeeze(-1))
        hi = torch.where(done[..., 0], hi, cand_hi.gather(-1, pick).squeeze(-1))
        best = torch.where(done[..., 0], best, s.gather(-1, pick).squeeze(-1))
    # Chunks shorter than the gap (a gap longer than the chunk, or the clip's last chunk):
    # widen to the gap around their centre, inside the clip.
    centre = (lo + hi) // 2
    start = (centre - gap // 2).clamp(min=0, max=samples - gap)
    start = torch.where(hi - lo == gap, lo, start)
    valid = torch.ones(batch, r, dtype=torch.bool, device=device)
    for k in range(1, r):
        overlap = ((start[:, :k] - start[:, k : k + 1]).abs() < gap) & valid[:, :k]
        valid[:, k] &= ~overlap.any(1)
    pad = regions - r
    if pad:
        start = torch.nn.functional.pad(start, (0, pad))
        best = torch.nn.functional.pad(best, (0, pad), value=float("-inf"))
        valid = torch.nn.functional.pad(valid, (0, pad), value=False)
    band = torch.tensor([0.0, victim.sample_rate / 2], device=device).expand(batch, regions, 2)
    return Regions(start=start, length=gap, valid=valid, score=best, band=band.clone())


def _scores(victim: Victim, audio: torch.Tensor, target: torch.Tensor, base_loss: torch.Tensor,
            index: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, taper: float,
            skip: torch.Tensor | None = None) -> torch.Tensor:
    """Occlusion score of spans ``[lo, hi)`` (``[B, n]`` each) of every clip, in one Victim
    call; rows where ``skip`` is True are not queried (score -inf)."""
    batch, samples = audio.shape
    n = lo.shape[1]
    keep = torch.ones(batch, n, dtype=torch.bool, device=audio.device) if skip is None else ~skip
    out = torch.full((batch, n), float("-inf"), device=audio.device, dtype=audio.dtype)
    if not bool(keep.any()):
        return out
    rows, cols = keep.nonzero(as_tuple=True)
    gain = torch.ones(rows.numel(), samples, device=audio.device, dtype=audio.dtype)
    for i, (row, col) in enumerate(zip(rows.tolist(), cols.tolist())):
        a, b = int(lo[row, col]), int(hi[row, col])
        gain[i, a:b] = 1 - tukey(b - a, taper, device=audio.device, dtype=audio.dtype)
    occluded = audio[rows] * gain
    loss = victim.loss(occluded, target[rows], index=index[rows])
    duration = (hi - lo)[rows, cols].to(audio.dtype) / victim.sample_rate
    out[rows, cols] = (loss - base_loss[rows]) / duration
    return out
