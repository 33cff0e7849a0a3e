"""``musicnn`` encoder: frame-level features of the pretrained musicnn tagger (FAD, PAMT).

J. Pons and X. Serra, "musicnn: pre-trained convolutional neural networks for music audio
tagging", ISMIR 2019 LBD; weights from the ``musicnn==0.1.0`` wheel (ISC licence), via the
port in :mod:`musicbench_plugins.models.musicnn`.

The features are the densely connected **mid-end output**, 753 dims per frame (front end 561
= timbral 2 x 204 + temporal 3 x 51, then the three 64-filter mid-end convs), at the model's
frame rate (hop 256 at 16 kHz: 62.5 frames/s). It is the last time-resolved representation:
the tagger's decision is a function of its max and mean over time alone, so a distance between
distributions of these frames (FAD) measures what the tagger can see, and a frame-aligned loss
(PAMT) has one vector per 16 ms. (The 200-d "penultimate" layer often used as a musicnn
embedding exists only once per 3 s patch, after temporal pooling: too few frames for a
753-or-200-dim Gaussian fit on a few clips, and no sequence for PAMT.)

Clips of any length (> 256 samples) are processed whole; the frames are those the original
extractor counts (centred frames whose window ends inside the clip). The network is frozen;
the output carries autograd state only when the input does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from musicbench.interfaces import Context, Encoder


@dataclass(frozen=True)
class MusicnnEncoderParams:
    """``model``: which pretrained tagger's features (``msd``: Million Song Dataset, the broader
    training set; ``mtt``: MagnaTagATune)."""

    model: Literal["mtt", "msd"] = "msd"


class MusicnnEncoder(Encoder):
    """``audio[B, samples]`` at 16 kHz -> mid-end features ``[B, frames, 753]``."""

    sample_rate = 16_000
    dim = 753
    version = "1"
    network = "musicnn"  # the leaderboard flags FAD measured by the target's own network
    Params = MusicnnEncoderParams

    def __init__(self, params: MusicnnEncoderParams | None = None):
        super().__init__(params)
        self.net = None

    def load(self, ctx: Context) -> None:
        from musicbench_plugins.models.musicnn.pretrained import load_pretrained

        self.net, _ = load_pretrained(ctx, self.params.model)

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            raise RuntimeError("the musicnn encoder is not loaded; call load(ctx) first")
        if audio.dim() != 2:
            raise ValueError(f"expected audio[B, samples], got shape {tuple(audio.shape)}")
        features = self.net.features(self.net.patch(audio))  # [B, 753, frames]
        assert features.shape[1] == self.dim
        return features.transpose(1, 2)
