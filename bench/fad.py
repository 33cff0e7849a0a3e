"""Fréchet Audio Distance between two sets of frame embeddings (docs/metrics.md, 'FAD').

Kilgour, Zuluaga, Roblek, Sharifi, "Fréchet Audio Distance: A Metric for Evaluating Music
Enhancement Algorithms", 2019. Gaussians are fitted in float64;
FAD = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)). The matrix square root is
scipy's Schur-based ``sqrtm``; when the product is singular (non-finite root) both covariances
get ``eps * I`` added, the usual fallback.

When FAD means nothing it is NaN with the reason. The rule counts **clips**: frames of one clip
are strongly autocorrelated, so a few long clips give many frames but little information about
the distribution of the set. A set needs at least :data:`FAD_MIN_CLIPS` clips, and (because the
covariance of ``D``-dimensional frames is singular below ``D`` samples) ``2 * D`` frames too.
FAD from N clips is biased upward, more so for small N (Chong & Forsyth, "Effectively Unbiased
FID and Inception Score", CVPR 2020), so values compare only between sets of equal N: the
harness scores every attack of one (dataset, model, defense) on the same attacked clips.
"""

from __future__ import annotations

import io
import math
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import linalg

SQRTM_EPS = 1e-6
IMAG_TOLERANCE = 1e-3
NEGATIVE_TOLERANCE = 1e-6  # relative to tr(S1) + tr(S2)
FAD_MIN_CLIPS = 10
"""Fewest clips per set for a FAD value (see the module docstring)."""


@dataclass(frozen=True)
class FadResult:
    value: float
    reason: str | None = None  # why value is NaN, or a warning about its reliability


class FrameGaussian:
    """Mean and unbiased covariance of frames added a chunk (a clip) at a time, in float64,
    holding ``O(D^2)`` numbers instead of the frames: a cell's FAD over 560 musicnn clips
    would otherwise hold 140 000 x 753 frames twice in float64 (1.7 GB). Sums are taken
    about the first chunk's mean (the shifted-data algorithm), so the one-pass covariance
    does not lose the precision the plain ``E[xx^T] - mu mu^T`` loses when the mean is large
    against the spread."""

    def __init__(self) -> None:
        self.frames = 0
        self._shift: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None

    def add(self, frames: np.ndarray) -> None:
        """Add ``frames[F, D]``."""
        x = np.asarray(frames, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"frames must be [F, D]; got {x.shape}")
        if self._shift is None:
            self._shift = x.mean(axis=0)
            self._sum = np.zeros_like(self._shift)
            self._outer = np.zeros((x.shape[1], x.shape[1]))
        elif x.shape[1] != self._shift.shape[0]:
            raise ValueError(f"frames of dimension {x.shape[1]} added to a Gaussian of "
                             f"dimension {self._shift.shape[0]}")
        d = x - self._shift
        self._sum += d.sum(axis=0)
        self._outer += d.T @ d
        self.frames += x.shape[0]

    @property
    def dim(self) -> int:
        return 0 if self._shift is None else int(self._shift.shape[0])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The running sums as arrays (what :meth:`from_arrays` takes back): an exact copy,
        for a cache on disk."""
        if self._shift is None:
            raise ValueError("an empty Gaussian has no arrays")
        return {"frames": np.array(self.frames), "shift": self._shift, "sum": self._sum,
                "outer": self._outer}

    @staticmethod
    def from_arrays(arrays: Any) -> FrameGaussian:
        """The Gaussian :meth:`to_arrays` gave (a mapping of the four arrays); raises
        ValueError or KeyError when they do not fit together."""
        g = FrameGaussian()
        shift = np.asarray(arrays["shift"], dtype=np.float64)
        total = np.asarray(arrays["sum"], dtype=np.float64)
        outer = np.asarray(arrays["outer"], dtype=np.float64)
        frames = int(arrays["frames"])
        d = shift.shape[0] if shift.ndim == 1 else -1
        if d < 1 or total.shape != (d,) or outer.shape != (d, d) or frames < 1:
            raise ValueError("the arrays do not form a frame Gaussian")
        g._shift, g._sum, g._outer, g.frames = shift, total, outer, frames
        return g

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``[D]`` and unbiased covariance ``[D, D]`` (needs two frames or more)."""
        if self._shift is None or self.frames < 2:
            raise ValueError(f"a covariance needs 2 frames or more; got {self.frames}")
        m = self._sum / self.frames
        cov = (self._outer - self.frames * np.outer(m, m)) / (self.frames - 1)
        return self._shift + m, cov


def gaussian(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (unbiased) of ``frames[N, D]``, in float64."""
    g = FrameGaussian()
    g.add(frames)
    return g.mean_cov()


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> FadResult:
    """The Fréchet distance of two Gaussians, float64."""
    diff = mu1 - mu2
    root, trouble = _sqrtm(sigma1 @ sigma2)
    note = None
    if trouble or not np.isfinite(root).all():
        offset = np.eye(sigma1.shape[0]) * SQRTM_EPS
        root, _ = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
        note = f"singular covariance product: added {SQRTM_EPS:g}*I before the square root"
    if np.iscomplexobj(root):
        worst = float(np.max(np.abs(root.imag)))
        if worst > IMAG_TOLERANCE:
            return FadResult(math.nan, f"matrix square root has imaginary part {worst:.3g}")
        root = root.real
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root))
    scale = max(1.0, float(np.trace(sigma1) + np.trace(sigma2)))
    # The eps*I fallback shifts the root's trace by up to about D * eps.
    slack = NEGATIVE_TOLERANCE * scale + (2 * len(mu1) * SQRTM_EPS if note else 0.0)
    if value < -slack:
        return FadResult(math.nan, f"FAD came out negative ({value:.3g}): the square root is "
                                   "numerically unreliable for these covariances")
    return FadResult(max(value, 0.0), note)  # round-off (or the eps fallback) below zero


def _sqrtm(m: np.ndarray) -> tuple[np.ndarray, bool]:
    """scipy's matrix square root and whether it warned that the result is unreliable."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        root = linalg.sqrtm(m)
    return np.asarray(root), any(issubclass(w.category, linalg.LinAlgWarning) for w in caught)


def fad(clean: np.ndarray, adv: np.ndarray, *, clips: int | None = None) -> FadResult:
    """FAD between ``clean[N, D]`` and ``adv[M, D]`` frame embeddings of ``clips`` clips each.

    NaN with a reason when there are fewer than :data:`FAD_MIN_CLIPS` clips, or when either
    set has fewer than ``2 * D`` frames. ``clips=None``: frames are independent items.
    """
    clean = np.asarray(clean)
    adv = np.asarray(adv)
    if clean.ndim != 2 or adv.ndim != 2 or clean.shape[1] != adv.shape[1]:
        raise ValueError(f"fad needs [N, D] and [M, D]; got {clean.shape} and {adv.shape}")
    a, b = FrameGaussian(), FrameGaussian()
    a.add(clean)
    b.add(adv)
    return fad_of(a, b, clips=clips)


def fad_of(clean: FrameGaussian, adv: FrameGaussian, *, clips: int | None = None) -> FadResult:
    """:func:`fad` of two accumulated frame sets (the same rules)."""
    if clean.dim != adv.dim:
        raise ValueError(f"fad needs frames of one dimension; got {clean.dim} and {adv.dim}")
    dim = clean.dim
    if clips is not None and clips < FAD_MIN_CLIPS:
        return FadResult(math.nan, f"{clips} clips < {FAD_MIN_CLIPS}: too few for FAD")
    fewest = min(clean.frames, adv.frames)
    if fewest < 2 * dim or fewest < 2:
        return FadResult(math.nan, f"{fewest} frames < 2 x {dim} dimensions: too few for a "
                                   "covariance estimate")
    return frechet_distance(*clean.mean_cov(), *adv.mean_cov())


def cached_gaussian(path: Path, compute: Callable[[], FrameGaussian], *,
                    what: str) -> FrameGaussian:
    """The Gaussian stored at ``path`` (a ``.npz`` of :meth:`FrameGaussian.to_arrays`), or
    ``compute()`` stored there first, under the entry's build lock so that concurrent runs
    compute it once. An unreadable file is computed again and replaced."""
    from musicbench.datacache import build_lock
    from musicbench.files import atomic_write_bytes

    def read() -> FrameGaussian | None:
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return FrameGaussian.from_arrays(arrays)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            warnings.warn(f"{what} cache at {path} is unreadable ({exc}); computing it again",
                          stacklevel=3)
            return None

    found = read()
    if found is not None:
        return found
    path.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(path, what=what):
        found = read() if path.exists() else None
        if found is not None:
            return found
        g = compute()
        buffer = io.BytesIO()
        np.savez(buffer, **g.to_arrays())
        atomic_write_bytes(path, buffer.getvalue())
        return g
