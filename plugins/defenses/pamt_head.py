"""PAMT's trainable parts: the perturbation-parameter encoder (PPE), the FiLM-modulated
projection head and the sequence (frame-aligned) InfoNCE loss.

PAMT (Liu et al., "Training a Perceptual Model for Evaluating Auditory Similarity in Music
Adversarial Attack", arXiv 2509.04985, CMMR 2025; the paper's Fig. 1, docs/pamt.md):
a frozen encoder's frame sequence goes through a projection head of pre-LN transformer layers,

    h   = x + MHSA(LN(x))
    out = h + FiLM(FFN(LN(h)); c),   FiLM(y; c) = gamma(c) * y + beta(c)

(FiLM: Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer", AAAI 2018),
then a linear projection. ``c`` is the PPE's encoding of the perturbation parameters (a
2-layer MLP) for the perturbed view, a learned null vector for the clean view. The two views
are pulled together frame by frame with InfoNCE (van den Oord et al., "Representation
Learning with Contrastive Predictive Coding", 2018), temperature 0.1 by default.

What the paper leaves open is a field of :class:`HeadConfig` or an argument of
:func:`sequence_info_nce`: widths, heads, dropout, the input projection (the encoder's width
need not suit the attention heads), positions, FiLM's initialisation, and which frames are
negatives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class HeadConfig:
    """Shape of the PAMT head.

    - ``input_dim``: the encoder's frame width (musicnn: 753); ``param_dim``: the length of the
      perturbation parameter vector (:func:`~.pamt_psychoacoustic.vector_size`).
    - ``d_model``: width inside the head (an input linear maps ``input_dim`` to it);
      ``layers``: transformer layers (paper: 4); ``heads``: attention heads; ``ffn_mult``:
      FFN hidden width / ``d_model``; ``dropout``: on attention and FFN outputs.
    - ``cond_dim``: width of ``c`` (PPE output, null vector); ``ppe_hidden``: PPE hidden width.
    - ``out_dim``: width of the final linear projection (the PAMT feature).
    - ``positions``: ``"sinusoidal"`` (added after the input linear; Vaswani et al. 2017) or
      ``"none"`` (attention then sees frames as a set; outputs stay frame-aligned either way).
    - ``film_identity_init``: FiLM's linear starts at zero and gamma = 1 + linear(c), so an
      untrained layer is a plain pre-LN layer (else gamma = linear(c), Perez et al.'s form).
    """

    input_dim: int
    param_dim: int
    d_model: int = 256
    layers: int = 4
    heads: int = 4
    ffn_mult: int = 4
    dropout: float = 0.1
    cond_dim: int = 64
    ppe_hidden: int = 64
    out_dim: int = 128
    positions: Literal["sinusoidal", "none"] = "sinusoidal"
    film_identity_init: bool = True

    def __post_init__(self) -> None:
        for name in ("input_dim", "param_dim", "d_model", "layers", "heads", "ffn_mult",
                     "cond_dim", "ppe_hidden", "out_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of heads "
                             f"({self.heads})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.positions not in ("sinusoidal", "none"):
            raise ValueError(f"positions must be 'sinusoidal' or 'none', got {self.positions!r}")


class PPE(nn.Module):
    """Perturbation-parameter encoder: ``params[B, P] -> c[B, C]`` (Linear, GELU, Linear);
    :meth:`null` gives the learned null vector for clean views: ``[B, C]``."""

    def __init__(self, param_dim: int, hidden: int, cond_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(param_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, cond_dim))
        self.null_vector = nn.Parameter(torch.randn(cond_dim) * 0.02)

    def forward(self, params: torch.Tensor) -> torch.Tensor:
        return self.mlp(params)

    def null(self, batch: int) -> torch.Tensor:
        return self.null_vector.expand(batch, -1)


class FiLM(nn.Module):
    """``FiLM(y[B, F, D]; c[B, C]) = gamma(c) * y + beta(c)`` with gamma, beta ``[B, 1, D]``."""

    def __init__(self, cond_dim: int, dim: int, identity_init: bool = True):
        super().__init__()
        self.linear = nn.Linear(cond_dim, 2 * dim)
        self.identity_init = identity_init
        if identity_init:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    def forward(self, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.linear(c)[:, None].chunk(2, dim=-1)
        if self.identity_init:
            gamma = 1 + gamma
        return gamma * y + beta


class FiLMLayer(nn.Module):
    """One pre-LN layer: ``h = x + MHSA(LN(x))``; ``out = h + FiLM(FFN(LN(h)); c)``.
    ``x[B, F, D]``, ``c[B, C]`` -> ``[B, F, D]``; ``mask bool[B, F]`` marks padding frames."""

    def __init__(self, d_model: int, heads: int, ffn_mult: int, dropout: float, cond_dim: int,
                 film_identity_init: bool = True):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.ln2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn_mult * d_model), nn.GELU(),
                                 nn.Linear(ffn_mult * d_model, d_model), nn.Dropout(dropout))
        self.film = FiLM(cond_dim, d_model, film_identity_init)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, c: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.ln1(x)
        h = x + self.drop(self.attn(y, y, y, key_padding_mask=mask, need_weights=False)[0])
        return h + self.film(self.ffn(self.ln2(h)), c)


def sinusoidal_positions(frames: int, dim: int, device: torch.device | None = None
                         ) -> torch.Tensor:
    """``[frames, dim]`` sinusoidal position codes (Vaswani et al. 2017)."""
    pos = torch.arange(frames, dtype=torch.float32, device=device)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device)
                     * (-math.log(10_000.0) / dim))
    out = torch.zeros(frames, dim, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return out


class PamtHead(nn.Module):
    """``frames[B, F, input_dim]`` (a frozen encoder's output) and perturbation parameters
    ``params[B, P]`` (or None: the clean view, conditioned on the null vector) -> PAMT features
    ``[B, F, out_dim]``, frame-aligned with the input."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        self.ppe = PPE(config.param_dim, config.ppe_hidden, config.cond_dim)
        self.inp = nn.Linear(config.input_dim, config.d_model)
        self.layers = nn.ModuleList(
            FiLMLayer(config.d_model, config.heads, config.ffn_mult, config.dropout,
                      config.cond_dim, config.film_identity_init)
            for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.proj = nn.Linear(config.d_model, config.out_dim)

    def condition(self, batch: int, params: torch.Tensor | None) -> torch.Tensor:
        """``c[B, cond_dim]``: the PPE of ``params[B, P]``, or the null vector if None."""
        return self.ppe.null(batch) if params is None else self.ppe(params)

    def forward(self, frames: torch.Tensor, params: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        if frames.dim() != 3 or frames.shape[-1] != self.config.input_dim:
            raise ValueError(f"PamtHead takes frames[B, F, {self.config.input_dim}], got "
                             f"{tuple(frames.shape)}")
        b, f, _ = frames.shape
        c = self.condition(b, params)
        x = self.inp(frames)
        if self.config.positions == "sinusoidal":
            x = x + sinusoidal_positions(f, self.config.d_model, frames.device)
        for layer in self.layers:
            x = layer(x, c, mask)
        return self.proj(self.norm(x))


def sequence_info_nce(anchor: torch.Tensor, positive: torch.Tensor, *,
                      temperature: float = 0.1,
                      negatives: Literal["batch", "clip", "frame"] = "batch",
                      exclude_radius: int = 0, symmetric: bool = True) -> torch.Tensor:
    """Frame-aligned InfoNCE between two views ``anchor[B, F, D]`` and ``positive[B, F, D]``
    (features are L2-normalised here): frame t of clip i in one view should match frame t of
    clip i in the other, against the negatives; a scalar, the mean over anchors.

    ``negatives`` (the paper does not say): ``"batch"`` — every other frame of every clip in
    the batch (B F - 1 candidates); ``"clip"`` — the other frames of the same clip only
    (contrast in time: what changed at this instant); ``"frame"`` — the same frame of the
    other clips (contrast in content). ``exclude_radius``: frames of the same clip within this
    distance of the positive (but not it) are not negatives (encoder frames overlap heavily in
    time, so near neighbours are near-duplicates, not negatives). ``symmetric``: average the
    loss over both directions (anchor -> positive and back).
    """
    if anchor.shape != positive.shape or anchor.dim() != 3:
        raise ValueError(f"need two [B, F, D] views of one shape, got {tuple(anchor.shape)} "
                         f"and {tuple(positive.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b, f, d = anchor.shape
    a = F.normalize(anchor, dim=-1).reshape(b * f, d)
    p = F.normalize(positive, dim=-1).reshape(b * f, d)
    logits = a @ p.T / temperature  # [BF, BF]
    clip = torch.arange(b, device=a.device).repeat_interleave(f)
    frame = torch.arange(f, device=a.device).repeat(b)
    same_clip = clip[:, None] == clip[None, :]
    dist = (frame[:, None] - frame[None, :]).abs()
    allowed = torch.ones_like(same_clip)
    if negatives == "clip":
        allowed = same_clip
    elif negatives == "frame":
        allowed = dist == 0
    elif negatives != "batch":
        raise ValueError(f"negatives must be 'batch', 'clip' or 'frame', got {negatives!r}")
    if exclude_radius > 0:
        allowed = allowed & ~(same_clip & (dist > 0) & (dist <= exclude_radius))
    logits = logits.masked_fill(~allowed, float("-inf"))
    target = torch.arange(b * f, device=a.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = (loss + F.cross_entropy(logits.T, target)) / 2
    return loss
