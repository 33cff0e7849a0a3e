"""FAD as a set-level metric: the cell's attacked clips, clean against returned, in the
embedding space of the run's ``fad_encoder`` (definition and NaN rules in docs/metrics.md, 'FAD'
and :mod:`musicbench.fad`)."""

from __future__ import annotations

import hashlib
import json
import math

import torch

from musicbench.fad import FrameGaussian, cached_gaussian, fad_of
from musicbench.interfaces import CellAudio, Context, SetMetric, SetMetricResult

CLEAN_CACHE_FORMAT = "1"
"""Bumped if what a stored clean Gaussian holds, or how it is keyed, changes."""


class FAD(SetMetric):
    """Fréchet Audio Distance (Kilgour et al., 2019) over **every attacked clip** of a cell.

    Every attack on one (dataset, model, defense) runs on the same clean-correct clips, so
    scoring all of them (not only the successful ones) puts every attack's FAD on the same N and
    the values compare across attacks; clips an attack failed on still carry what it changed.
    Clips are embedded one at a time, so a clip's frames do not depend on its batch; the clean
    clips' Gaussian is computed once per process for each set of clips and shared by every
    cell on that set (every attack of one (dataset, model, defense) row).
    """

    # 2: Gaussians summed clip by clip instead of over the held frames (equal to float64
    # rounding; a 560-clip cell's FAD no longer needs 1.7 GB)
    version = "2"
    higher_is_better = False
    columns = {"fad": False}

    def applies(self, cell: CellAudio) -> bool:
        return bool(cell.fad_encoder)

    def compute(self, cell: CellAudio, ctx: Context) -> SetMetricResult:
        name = cell.fad_encoder
        idx = cell.attacked.nonzero().squeeze(1).tolist()
        result = SetMetricResult({"fad": math.nan}, n=len(idx), encoder=name)
        if ctx.encoder is None:
            result.note = "no encoder resolver in this context"
            return result
        try:
            encoder = ctx.encoder(name, {})
        except Exception as exc:  # an encoder that cannot load costs the FAD column only
            result.note = f"encoder '{name}' unavailable: {type(exc).__name__}: {exc}"
            return result
        if encoder.network is not None and encoder.network == cell.model_network:
            result.flags.append(f"FAD encoder '{name}' is built on the target's own network "
                                f"({encoder.network}): FAD is measured by the model under attack")
        if not idx:
            result.note = "no attacked clip"
            return result
        if encoder.sample_rate != cell.sample_rate:
            result.note = (f"encoder '{name}' takes {encoder.sample_rate} Hz audio, the cell's "
                           f"is {cell.sample_rate} Hz")
            return result
        device = ctx.device

        def frames(clip: torch.Tensor) -> torch.Tensor:  # [T] -> [F, dim], float32 on the CPU
            with torch.no_grad():
                return encoder.embed(clip[None].to(device))[0].float().cpu()

        def clean_gaussian() -> FrameGaussian:
            g = FrameGaussian()
            for i in idx:
                g.add(frames(cell.clean[i]).numpy())
            return g

        # Every attack of a (dataset, model, defense) row attacks the same clips: their clean
        # Gaussian is computed once per process (4.5 MB for musicnn), not the frames kept
        # (560 clips: 420 MB) for every later cell; and once per cache, on disk, keyed by the
        # encoder (name, version, parameters, weights), torch's version, the dataset's
        # fingerprint and the clip ids, so a later run (and every row of this one with the
        # same clean-correct clips) reads it instead of embedding the clean clips again.
        clip_set = hashlib.sha256("\n".join(cell.ids[i] for i in idx).encode()).hexdigest()
        key = ("fad-clean-gaussian", name, cell.dataset, cell.dataset_fingerprint, clip_set)

        def stored_clean_gaussian() -> FrameGaussian:
            identity = json.dumps([CLEAN_CACHE_FORMAT, self.version, encoder.describe(),
                                   encoder.weights_digest(), torch.__version__,
                                   cell.dataset_fingerprint, clip_set], sort_keys=True)
            digest = hashlib.sha256(identity.encode()).hexdigest()[:24]
            path = ctx.cache_dir / "metrics" / "fad-clean" / f"{name}-{digest}.npz"
            return cached_gaussian(path, clean_gaussian, what=f"FAD clean Gaussian ({name})")

        adv = FrameGaussian()  # clip by clip: no frame set is held
        try:
            clean = (ctx.memo(key, stored_clean_gaussian) if ctx.memo is not None
                     else stored_clean_gaussian())
            for i in idx:
                adv.add(frames(cell.adv[i]).numpy())
        except Exception as exc:  # the encoder's failure costs the FAD column, not the cell
            result.note = f"encoder '{name}' failed: {type(exc).__name__}: {exc}"
            return result
        value = fad_of(clean, adv, clips=len(idx))
        result.values["fad"] = value.value
        result.note = value.reason
        return result
