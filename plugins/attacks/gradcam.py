"""White-box importance for MAIA: Grad-CAM on the target's ``cam_layer``, mapped to time
segments of the inpainter's gap length (and a frequency band per segment for the tf-box mask).

Grad-CAM: Selvaraju et al., ICCV 2017, as MAIA (Liu et al., ISMIR 2025, arXiv 2509.04980)
uses it: alpha_k = mean over positions of d y_c / d F_k, map = ReLU(sum_k alpha_k F_k),
normalised. Readings of what the paper leaves open (docs/maia.md):

- y_c is the true class's logit for classification (the paper's "clean class"); for retrieval
  it is the Victim's margin (best similarity to the true work minus the best other work), since
  a retrieval model has no class score. ``score="margin"`` uses the margin for both.
- The activation at ``cam_layer`` is ``[N, C, T']`` or ``[N, C, F', T']`` with time last, one
  row per scoring window (the Victim averages windows of ``input_seconds``). Column j of a
  window starting at sample s is taken to cover samples ``s + [j, j + 1) * window / T'``: a
  linear map that ignores the front end's centred frames and receptive fields (an error of a
  few frames, well below a gap).
- Rows of a 2-D map are mapped to Hz through the model's front-end filterbank (the first
  submodule with a ``filters`` buffer ``[bands, n_fft / 2 + 1]``, e.g. a mel or constant-Q
  bank): row i covers the bands ``[i, i + 1) * bands / F'`` and so the Hz span of their filters.
  Without such a bank rows are taken as linear in frequency; a folded (chroma) front end or a
  1-D map gives the full band.
- The Grad-CAM call is one counted forward-and-gradient call on the Victim (made with a forward
  hook on the model's module, so it costs the attack exactly what a PGD step does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from musicbench.victim import Victim, margin_from_logits
from musicbench_plugins.attacks.maia_masks import Regions, top_segments

CamScore = Literal["auto", "class", "margin"]


@dataclass
class CamResult:
    """``cam[B, N, F']``: the normalised Grad-CAM map on a grid of ``cell`` samples (N cells
    cover the clip; F' = 1 for a map without a frequency axis); ``rows_hz[F', 2]``: the Hz span
    of each row; ``margin[B]``: the Victim's margin on the clean clip (from the same call)."""

    cam: torch.Tensor
    cell: int
    rows_hz: torch.Tensor
    margin: torch.Tensor


def window_starts(samples: int, window: int) -> list[int]:
    """Where the Victim's scoring windows start in a clip of ``samples`` (see
    :func:`musicbench.windows.split_windows`: hop ``window``, the last one aligned to the end)."""
    if samples <= window:
        return [0]
    starts = list(range(0, samples - window + 1, window))
    if starts[-1] != samples - window:
        starts.append(samples - window)
    return starts


def gradcam(
    victim: Victim,
    audio: torch.Tensor,
    target: torch.Tensor,
    *,
    layer: str | None = None,
    score: CamScore = "auto",
    cell: int = 160,
    index: torch.Tensor | None = None,
) -> CamResult:
    """Grad-CAM of ``audio[B, T]`` for its true labels ``target[B]``.

    :param layer: dotted submodule of ``victim.model.module()``; default the model's
        ``cam_layer``.
    :param cell: resolution of the returned map in samples.
    :param index: which of the victim's samples the rows are (for counting).
    """
    model = victim.model
    layer = layer or model.cam_layer
    if not layer:
        raise ValueError(f"model '{model.name}' declares no cam_layer; Grad-CAM needs one")
    net = model.module()
    module = net.get_submodule(layer)
    acts: list[torch.Tensor] = []

    def hook(_mod, _inp, out):
        acts.append(out[0] if isinstance(out, (tuple, list)) else out)

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            x = audio.detach().requires_grad_(True)
            logits = victim.scores(x, index=index)
            margin = margin_from_logits(logits, target)
            use_margin = score == "margin" or (score == "auto" and victim.task == "retrieval")
            y = margin if use_margin else logits.gather(1, target[:, None]).squeeze(1)
            grads = torch.autograd.grad(y.sum(), acts, allow_unused=True)
    finally:
        handle.remove()
    maps = []
    for act, grad in zip(acts, grads):
        if grad is None:
            grad = torch.zeros_like(act)
        if act.dim() == 3:  # [N, C, T'] -> [N, C, 1, T']
            act, grad = act[:, :, None], grad[:, :, None]
        if act.dim() != 4:
            raise ValueError(f"cam_layer '{layer}' gives shape {tuple(act.shape)}; Grad-CAM "
                             "reads [N, C, T'] or [N, C, F', T'] with time last")
        alpha = grad.mean(dim=(2, 3), keepdim=True)  # [N, C, 1, 1]
        maps.append(torch.relu((alpha * act).sum(1)).detach())  # [N, F', T']
    # EOT draws of a randomized defense each run the model once: average their maps.
    cam_windows = torch.stack(maps).mean(0)
    cam = _to_cells(cam_windows, audio.shape[0], audio.shape[1], model.input_samples, cell)
    peak = cam.flatten(1).amax(1).clamp(min=1e-12)
    cam = cam / peak[:, None, None]
    rows_hz = row_bands(net, cam.shape[2], victim.sample_rate).to(audio.device)
    return CamResult(cam=cam, cell=cell, rows_hz=rows_hz, margin=margin.detach())


def _to_cells(cam: torch.Tensor, batch: int, samples: int, window: int, cell: int
              ) -> torch.Tensor:
    """Per-window maps ``[B * W, F', T']`` -> per-clip ``[B, N, F']`` on a grid of ``cell``
    samples (overlapping windows averaged)."""
    starts = window_starts(samples, window)
    if cam.shape[0] != batch * len(starts):
        raise ValueError(f"cam_layer ran on {cam.shape[0]} rows for {batch} clips of "
                         f"{samples} samples ({len(starts)} windows each): does a defense "
                         "change the length?")
    cam = cam.reshape(batch, len(starts), cam.shape[1], cam.shape[2])
    n = -(-samples // cell)
    centres = (torch.arange(n, device=cam.device) + 0.5) * cell
    total = torch.zeros(batch, n, cam.shape[2], device=cam.device, dtype=cam.dtype)
    count = torch.zeros(n, device=cam.device, dtype=cam.dtype)
    cols = cam.shape[3]
    for w, s in enumerate(starts):
        inside = (centres >= s) & (centres < s + window)
        col = ((centres[inside] - s) * cols / window).long().clamp(max=cols - 1)
        total[:, inside] += cam[:, w, :, col].permute(0, 2, 1)
        count[inside] += 1
    return total / count.clamp(min=1)[None, :, None]


def row_bands(net: torch.nn.Module, rows: int, sample_rate: int) -> torch.Tensor:
    """``[rows, 2]``: the Hz span ``(low, high)`` each row of a CAM map stands for."""
    nyquist = sample_rate / 2
    if rows == 1:
        return torch.tensor([[0.0, nyquist]])
    bank = None
    for mod in net.modules():
        filters = getattr(mod, "filters", None)
        if isinstance(filters, torch.Tensor) and filters.dim() == 2:
            if getattr(mod, "fold", 0):  # chroma: rows are pitch classes, not frequencies
                return torch.tensor([[0.0, nyquist]]).expand(rows, 2).clone()
            bank = filters.detach().cpu()
            break
    if bank is None:
        edges = torch.linspace(0, nyquist, rows + 1)
        return torch.stack([edges[:-1], edges[1:]], 1)
    bands, bins = bank.shape
    bin_hz = nyquist / (bins - 1)
    out = torch.empty(rows, 2)
    for i in range(rows):
        group = bank[i * bands // rows : max(i * bands // rows + 1, (i + 1) * bands // rows)]
        nonzero = (group.sum(0) > 0).nonzero().squeeze(1)
        out[i, 0] = nonzero.min() * bin_hz if nonzero.numel() else 0.0
        out[i, 1] = nonzero.max() * bin_hz if nonzero.numel() else nyquist
    return out


def cam_regions(cam: CamResult, samples: int, gap: int, regions: int,
                band_fraction: float = 0.5) -> Regions:
    """Top-``regions`` non-overlapping segments of ``gap`` samples by summed Grad-CAM, and for
    each the contiguous run of ``ceil(band_fraction * F')`` rows with the most CAM mass inside
    the segment as its frequency band."""
    gap = min(gap, samples)
    curve = cam.cam.sum(2)  # [B, N]
    width = max(1, round(gap / cam.cell))
    start_cells, score, valid = top_segments(curve, width, regions)
    start = (start_cells * cam.cell).clamp(max=samples - gap)
    rows = cam.cam.shape[2]
    band = cam.rows_hz[[0, -1], [0, 1]].expand(*start.shape, 2).clone()
    if rows > 1:
        height = max(1, min(rows, math.ceil(band_fraction * rows)))
        cells = torch.arange(cam.cam.shape[1], device=curve.device)
        for k in range(regions):
            s = start_cells[:, k : k + 1]
            inside = ((cells[None] >= s) & (cells[None] < s + width)).to(cam.cam.dtype)
            profile = (cam.cam * inside[:, :, None]).sum(1)  # [B, F']
            low, _, _ = top_segments(profile, height, 1)
            low = low[:, 0]
            band[:, k, 0] = cam.rows_hz[low, 0]
            band[:, k, 1] = cam.rows_hz[low + height - 1, 1]
    return Regions(start=start, length=gap, valid=valid, score=score, band=band)
