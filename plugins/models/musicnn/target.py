"""``musicnn-mtt`` and ``musicnn-msd``: the pretrained musicnn taggers as classifiers over a tag
subset.

J. Pons and X. Serra, "musicnn: pre-trained convolutional neural networks for music audio
tagging", ISMIR 2019 late-breaking demo. Weights from the ``musicnn==0.1.0`` wheel (ISC
licence), ported to PyTorch by :mod:`.network` and converted once by :mod:`.pretrained`.

Each model is a 50-tag multi-label tagger (MagnaTagATune or Million Song Dataset vocabulary).
musicbench evaluates a tagger on a declared tag subset as a classifier (DESIGN §5): ``forward``
returns the pre-sigmoid logits of the ``tags`` parameter's tags, in that order, and the
predicted class is their arg-max. The default subsets are the genre tags of each vocabulary
(:data:`.pretrained.MTT_GENRES`, :data:`.pretrained.MSD_GENRES`).

Inputs are 3 s at 16 kHz, seen as one musicnn patch of 187 frames (as the original extractor
cuts its patches); the Victim averages the logits of longer clips over 3 s windows.
:meth:`MusicnnTarget.taggram` gives the original's per-patch probabilities of all 50 tags.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from musicbench.interfaces import Context, TargetModel
from musicbench_plugins.models.musicnn.pretrained import (
    MSD_GENRES,
    MSD_TAGS,
    MTT_GENRES,
    MTT_TAGS,
    Variant,
    checkpoint_path,
    load_pretrained,
)


def _check_tags(tags: tuple[str, ...], vocabulary: tuple[str, ...], model: str) -> None:
    if not tags:
        raise ValueError(f"{model}: tags must name at least one tag")
    if len(set(tags)) != len(tags):
        raise ValueError(f"{model}: tags has duplicates: {list(tags)}")
    for tag in tags:
        if tag not in vocabulary:
            lower = {t.lower(): t for t in vocabulary}
            close = [lower[c] for c in difflib.get_close_matches(tag.lower(), list(lower), n=3)]
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"{model}: '{tag}' is not one of its 50 tags.{hint} "
                             f"Tags: {', '.join(vocabulary)}")


@dataclass(frozen=True)
class MusicnnMTTParams:
    """``tags``: the MagnaTagATune tags to classify among (default: its genre tags)."""

    tags: tuple[str, ...] = MTT_GENRES

    def __post_init__(self) -> None:
        _check_tags(tuple(self.tags), MTT_TAGS, "musicnn-mtt")


@dataclass(frozen=True)
class MusicnnMSDParams:
    """``tags``: the Million Song Dataset tags to classify among (default: its genre tags)."""

    tags: tuple[str, ...] = MSD_GENRES

    def __post_init__(self) -> None:
        _check_tags(tuple(self.tags), MSD_TAGS, "musicnn-msd")


class TagSubset(nn.Module):
    """``audio[B, samples]`` -> logits of the selected tags ``[B, K]``; ``net`` is the full
    :class:`~.network.MusicnnNet`, so ``net.midend`` is reachable for Grad-CAM hooks."""

    def __init__(self, net: nn.Module, index: list[int]):
        super().__init__()
        self.net = net
        self.register_buffer("index", torch.tensor(index, dtype=torch.long), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.net(audio).index_select(1, self.index)


class MusicnnTarget(TargetModel):
    """Shared implementation of the two musicnn taggers.

    ``cam_layer = "net.midend"``: the densely connected mid-end output ``[B, 753, T]`` (front
    end + three mid-end convs), the last layer that still has a time axis — everything after it
    is the back end's global max/mean pooling and dense layers. Grad-CAM there is the classic
    recipe (last convolutional feature map before pooling). It resolves time only: the front
    end already max-pools over frequency, so no later layer has a frequency axis.
    """

    task = "classification"
    sample_rate = 16_000
    input_seconds = 3.0
    cam_layer = "net.midend"
    # 2: the front end pools over frequency before its ReLU and batch norm (same logits bit
    # for bit, input gradients equal to float32 rounding, ~25% faster)
    version = "2"
    network = "musicnn"  # the leaderboard flags FAD measured by the target's own network
    variant: ClassVar[Variant]
    all_tags: ClassVar[tuple[str, ...]]

    def __init__(self, params=None):  # noqa: ANN001
        super().__init__(params)
        self.labels = tuple(self.params.tags)
        self.net: TagSubset | None = None
        self.metadata: dict = {}

    def load(self, ctx: Context) -> None:
        net, self.metadata = load_pretrained(ctx, self.variant)
        index = [self.all_tags.index(t) for t in self.labels]
        self.net = TagSubset(net, index).to(ctx.device).eval()

    def module(self) -> nn.Module:
        if self.net is None:
            raise RuntimeError(f"{self.name or type(self).__name__} is not loaded; "
                               "call load(ctx) first")
        return self.net

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio[B, samples]`` (16 kHz, nominally 3 s) -> pre-sigmoid logits ``[B, K]`` of
        ``labels``."""
        return self.module()(audio)

    def tag_probabilities(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio[B, samples]`` as one patch -> sigmoid probabilities of all 50 tags
        ``[B, 50]`` (order: :attr:`all_tags`)."""
        return torch.sigmoid(self.module().net(audio))

    def taggram(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio[B, samples]`` -> ``[B, patches, 50]``: probabilities of all 50 tags over
        consecutive 187-frame (3 s) patches, as ``musicnn.extractor`` computes its taggram."""
        return self.module().net.taggram(audio)

    def checkpoint_key(self) -> str:
        return checkpoint_path(Path("."), self.variant).stem


class MusicnnMTT(MusicnnTarget):
    """musicnn trained on MagnaTagATune (50 tags), as a classifier over ``tags``."""

    Params = MusicnnMTTParams
    variant = "mtt"
    all_tags = MTT_TAGS


class MusicnnMSD(MusicnnTarget):
    """musicnn trained on the Million Song Dataset (50 last.fm tags), as a classifier over
    ``tags``."""

    Params = MusicnnMSDParams
    variant = "msd"
    all_tags = MSD_TAGS
