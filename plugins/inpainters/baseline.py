"""``baseline``: non-learned similarity-based inpainting (copy the best-matching passage).

Music repeats itself, so a gap can often be filled with another stretch of the same clip. The
idea is the classic similarity-graph / exemplar-based audio inpainting (e.g. Perraudin,
Holighaus, Majdak, Balazs, "Inpainting of long audio segments with similarity graphs",
IEEE/ACM TASLP 2018), reduced to one search per gap:

1. *Coarse match* on a log-mel view (``n_fft``/``hop``/``n_mels``, non-centred frames): the
   context frames up to ``context_seconds`` on each side of the gap are compared, as one block,
   with the same block shifted by every whole number of hops through the clip; the score is the
   normalised cross-correlation (mean-removed cosine). Shifts whose source region (left
   context + gap + right context, shifted) touches a masked sample that is not yet filled, the
   gap itself, or the clip edge are not candidates.
2. *Candidates*: the best shifts, greedily thinned so that no two lie within
   ``max(n_fft, gap / 2)`` samples of each other (neighbouring shifts are the same match),
   up to ``top_k`` of them. The latent picks one (below).
3. *Fine alignment* on the waveform: within ±``hop`` samples of the chosen shift, the source
   start that best continues the left context (NCC of the ``align_window`` samples before the
   gap) and, separately, the one that best leads into the right context.
4. *Copy*: the gap gets the left-aligned source; over its last ``crossfade`` samples it turns,
   with an equal-power crossfade, into the right-aligned source, so both edges join without a
   click. A gap at the start of the clip (no left context) takes the right-aligned source
   alone, one at the end the left-aligned one.

Several gaps are filled left to right; a filled gap counts as valid audio for the next ones.
A gap with no candidate (too long for the clip's valid audio) is split in halves, filled left
half first, down to ``min_chunk_seconds``; a chunk that still has none takes the nearest
stretch of valid audio of its length without any context match, and a chunk with no valid
audio of its length at all (the mask covers nearly the whole clip) stays silent.

Latent: ``latent_dim = 1``, ``z[:, 0]`` in [0, 1) (uniform prior) selects candidate rank
``floor(z * top_k)`` (clamped to the candidates that exist) for every gap of that row; z = 0
is the best match. The choice is discrete, so the output is piecewise constant in z and its
gradient in z is zero: black-box search over z (CMA-ES) works, gradient steps on z do not.
The selection runs on detached audio; the copy itself is a linear map of the audio, so the
output is differentiable in the audio (the gradient flows to the copied source samples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from musicbench.api import check_number
from musicbench.interfaces import Context, Inpainter
from musicbench_plugins._limits import MAX_SECONDS, MAX_SIZE
from musicbench_plugins.inpainters.gaps import check_inputs, composite, equal_power, gap_runs


@dataclass(frozen=True)
class BaselineParams:
    """Matching view and copy settings (samples at 16 kHz unless the name says seconds)."""

    context_seconds: float = 0.5  # context matched on each side of a gap
    n_fft: int = 512  # log-mel view for the coarse match
    hop: int = 128  # coarse shift grid, and the fine-alignment radius
    n_mels: int = 64
    top_k: int = 4  # distinct candidates the latent chooses among
    align_window: int = 256  # waveform samples compared at each edge for the fine alignment
    crossfade: int = 256  # equal-power crossfade at the right edge of a gap (16 ms)
    min_chunk_seconds: float = 0.05  # smallest piece a gap without candidates is split into

    def __post_init__(self) -> None:
        if not self.context_seconds > 0:
            raise ValueError(f"context_seconds must be > 0, got {self.context_seconds}")
        for name in ("n_fft", "hop", "n_mels", "top_k", "align_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hop > self.n_fft:
            raise ValueError(f"hop ({self.hop}) must be <= n_fft ({self.n_fft})")
        if self.crossfade < 0:
            raise ValueError(f"crossfade must be >= 0, got {self.crossfade}")
        if not self.min_chunk_seconds > 0:
            raise ValueError(f"min_chunk_seconds must be > 0, got {self.min_chunk_seconds}")
        for name in ("context_seconds", "min_chunk_seconds"):
            check_number(name, getattr(self, name), above=0, at_most=MAX_SECONDS)
        for name in ("n_fft", "hop", "n_mels", "top_k", "align_window"):
            check_number(name, getattr(self, name), at_least=1, at_most=MAX_SIZE, integer=True)
        check_number("crossfade", self.crossfade, at_least=0, at_most=MAX_SIZE, integer=True)


class BaselineInpainter(Inpainter):
    """Fill each gap with the passage of the same clip whose surroundings match the gap's.

    Shape: ``audio[B, T]``, ``mask bool[B, T]``, ``z[B, 1]`` in [0, 1) -> ``audio[B, T]``.
    """

    version = "1"
    Params = BaselineParams
    latent_dim: ClassVar[int] = 1

    def __init__(self, params: BaselineParams | None = None):
        super().__init__(params)
        self.device = torch.device("cpu")

    def load(self, ctx: Context) -> None:
        self.device = ctx.device  # nothing to build or train

    latent_range = (0.0, 1.0)  # z picks one of the top_k matches by its position in [0, 1)

    def sample_latent(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(batch, 1, generator=generator, device=generator.device)

    def inpaint(self, audio: torch.Tensor, mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        check_inputs(audio, mask, z, self.latent_dim)
        ranks = (z[:, 0].detach().clamp(0.0, 1.0 - 1e-6) * self.params.top_k).long().tolist()
        rows = []
        for b in range(audio.shape[0]):
            gaps = gap_runs(mask[b])
            rows.append(self._fill_row(audio[b], mask[b], gaps, ranks[b]) if gaps else audio[b])
        return composite(audio, torch.stack(rows), mask)

    # -- one row ----------------------------------------------------------------------------

    def _fill_row(self, row: torch.Tensor, mask_row: torch.Tensor, gaps: list[tuple[int, int]],
                  rank: int) -> torch.Tensor:
        """``row[T]`` with every gap filled, left to right."""
        invalid = mask_row.detach().cpu().clone()  # bookkeeping on the CPU
        for s, e in gaps:
            row = self._fill_range(row, invalid, s, e, rank)
            invalid[s:e] = False
        return row

    def _fill_range(self, row: torch.Tensor, invalid: torch.Tensor, s: int, e: int,
                    rank: int) -> torch.Tensor:
        """Fill ``row[s:e]``, splitting it in halves when no source fits. ``invalid[T]`` marks
        samples that hold no usable audio (unfilled gaps); it is updated as halves fill."""
        p = self.params
        length = e - s
        plan = self._plan(row.detach(), invalid, s, e, rank)
        if plan is None and length > 2 * p.min_chunk_seconds * self.sample_rate:
            mid = s + length // 2
            row = self._fill_range(row, invalid, s, mid, rank)
            invalid[s:mid] = False
            return self._fill_range(row, invalid, mid, e, rank)
        if plan is None:
            plan = _nearest_valid(invalid, s, e)
        if plan is None:  # no valid audio of this length anywhere: leave the chunk silent
            return torch.cat([row[:s], torch.zeros_like(row[s:e]), row[e:]])
        p_left, p_right = plan
        fill = _copy(row, length, p_left, p_right, p.crossfade)
        return torch.cat([row[:s], fill, row[e:]])

    def _plan(self, row: torch.Tensor, invalid: torch.Tensor, s: int, e: int,
              rank: int) -> tuple[int | None, int | None] | None:
        """Source starts ``(left-aligned, right-aligned)`` for gap ``[s, e)`` (either may be
        None when that side has no context), or None when no candidate exists."""
        p = self.params
        n = row.shape[0]
        length = e - s
        bad = torch.nn.functional.pad(invalid.to(torch.int64).cumsum(0), (1, 0))  # [T + 1]
        ctx = round(p.context_seconds * self.sample_rate)
        # Context: the valid run next to the gap on each side, at most ctx samples long.
        left0 = _run_start(invalid, s, ctx)
        right1 = _run_end(invalid, e, ctx)
        if left0 == s and right1 == e:
            return None  # no context at all: nothing to match
        feats = self._features(row)  # [frames, mels]
        frames = feats.shape[0]
        hop, n_fft = p.hop, p.n_fft
        left_j = torch.arange(-(-left0 // hop), (s - n_fft) // hop + 1) if s - left0 >= n_fft \
            else torch.zeros(0, dtype=torch.long)
        right_j = torch.arange(-(-e // hop), (right1 - n_fft) // hop + 1) \
            if right1 - e >= n_fft else torch.zeros(0, dtype=torch.long)
        ctx_j = torch.cat([left_j, right_j])
        # Every whole-hop shift d = k * hop whose source region [left0 + d, right1 + d) lies
        # inside the clip and holds only valid audio.
        k = torch.arange(-(left0 // hop), (n - right1) // hop + 1)
        lo, hi = left0 + k * hop, right1 + k * hop
        ok = (hi <= n) & (lo >= 0)
        k, lo, hi = k[ok], lo[ok], hi[ok]
        ok = (bad[hi] - bad[lo]) == 0
        if ctx_j.numel() > 0:
            ok &= ((ctx_j.min() + k) >= 0) & ((ctx_j.max() + k) < frames)
        k = k[ok]
        if k.numel() == 0:
            return None
        if ctx_j.numel() > 0:
            target = feats[ctx_j]  # [C, M]
            cand = feats[ctx_j[None] + k[:, None]]  # [K, C, M]
            scores = _ncc(target.flatten(), cand.flatten(1))
        else:  # context shorter than one frame: prefer the nearest source
            scores = -k.abs().to(torch.float32)
        choice = _pick(k * hop, scores, max(n_fft, length // 2), p.top_k, rank)
        start = s + choice
        p_left = p_right = None
        if s > left0:
            w = min(p.align_window, s - left0)
            p_left = _align(row, bad, row[s - w : s], start, hop, lambda q: (q - w, q + length),
                            lambda q: (q - w, q))
        if right1 > e:
            w = min(p.align_window, right1 - e)
            p_right = _align(row, bad, row[e : e + w], start, hop,
                             lambda q: (q, q + length + w), lambda q: (q + length, q + length + w))
        return p_left, p_right

    def _features(self, row: torch.Tensor) -> torch.Tensor:
        """``log-mel[frames, n_mels]`` of ``row[T]``, non-centred frames (frame j covers
        samples ``[j * hop, j * hop + n_fft)``)."""
        from musicbench_plugins.models.frontends import mel_filterbank

        p = self.params
        if row.shape[0] < p.n_fft:
            return torch.zeros(0, p.n_mels, device=row.device)
        window = torch.hann_window(p.n_fft, device=row.device, dtype=row.dtype)
        spec = torch.stft(row, p.n_fft, p.hop, window=window, center=False, return_complex=True)
        fb = mel_filterbank(self.sample_rate, p.n_fft, p.n_mels).to(row.device, row.dtype)
        return torch.log(fb @ spec.abs().square() + 1e-8).T


def _run_start(invalid: torch.Tensor, s: int, ctx: int) -> int:
    """Start of the valid run ending at ``s``, at most ``ctx`` samples long."""
    lo = max(0, s - ctx)
    bad = torch.nonzero(invalid[lo:s]).flatten()
    return lo + int(bad[-1]) + 1 if bad.numel() else lo


def _run_end(invalid: torch.Tensor, e: int, ctx: int) -> int:
    """End of the valid run starting at ``e``, at most ``ctx`` samples long."""
    hi = min(invalid.shape[0], e + ctx)
    bad = torch.nonzero(invalid[e:hi]).flatten()
    return e + int(bad[0]) if bad.numel() else hi


def _ncc(target: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Normalised cross-correlation of ``target[N]`` with each row of ``cand[K, N]`` -> ``[K]``."""
    t = target - target.mean()
    c = cand - cand.mean(dim=1, keepdim=True)
    return (c @ t) / (c.norm(dim=1) * t.norm() + 1e-12)


def _pick(shifts: torch.Tensor, scores: torch.Tensor, radius: int, top_k: int,
          rank: int) -> int:
    """The shift of rank ``rank`` (clamped) among up to ``top_k`` best-scoring shifts that are
    more than ``radius`` samples apart (greedy non-maximum suppression)."""
    order = torch.argsort(scores, descending=True, stable=True)
    picked: list[int] = []
    for i in order.tolist():
        d = int(shifts[i])
        if all(abs(d - q) > radius for q in picked):
            picked.append(d)
            if len(picked) == top_k:
                break
    return picked[min(rank, len(picked) - 1)]


def _align(row: torch.Tensor, bad: torch.Tensor, template: torch.Tensor, start: int,
           radius: int, region, window) -> int:
    """The source start within ``start ± radius`` whose ``window(q)`` samples best match
    ``template`` (waveform NCC), among starts whose ``region(q)`` is inside the clip and
    valid; ``start`` itself when none qualifies."""
    n = row.shape[0]
    cands, keep = [], []
    for q in range(start - radius, start + radius + 1):
        lo, hi = region(q)
        if lo < 0 or hi > n or int(bad[hi] - bad[lo]) != 0:
            continue
        a, b = window(q)
        cands.append(row[a:b])
        keep.append(q)
    if not keep:
        return start
    return keep[int(torch.argmax(_ncc(template, torch.stack(cands))))]


def _nearest_valid(invalid: torch.Tensor, s: int, e: int) -> tuple[int, int] | None:
    """``(q, q)`` for the valid stretch ``[q, q + e - s)`` nearest to ``s``, or None."""
    length = e - s
    n = invalid.shape[0]
    if n < length:
        return None
    bad = torch.nn.functional.pad(invalid.to(torch.int64).cumsum(0), (1, 0))
    q = torch.arange(0, n - length + 1)
    ok = (bad[q + length] - bad[q]) == 0
    if not bool(ok.any()):
        return None
    q = q[ok]
    best = int(q[torch.argmin((q - s).abs())])
    return best, best


def _copy(row: torch.Tensor, length: int, p_left: int | None, p_right: int | None,
          crossfade: int) -> torch.Tensor:
    """``fill[length]``: the left-aligned source, turning into the right-aligned one over the
    last ``crossfade`` samples (equal power). Linear in ``row``, so gradients reach it."""
    if p_left is None:
        assert p_right is not None
        return row[p_right : p_right + length]
    main = row[p_left : p_left + length]
    if p_right is None or p_right == p_left or crossfade == 0:
        return main
    f = min(crossfade, length)
    fade_out, fade_in = equal_power(f, device=row.device, dtype=row.dtype)
    tail = main[length - f :] * fade_out + row[p_right + length - f : p_right + length] * fade_in
    return torch.cat([main[: length - f], tail])
