"""``cover-net``: a cover-song identification embedder in the manner of CoverHunter.

Liu, Wang, Sun, Wang, Fu, "CoverHunter: Cover Song Identification with Refined Attention and
Alignments", ICME 2023 — CQT input, a convolutional/attentive encoder pooled to one embedding,
trained with a work-classification loss plus a triplet loss. Ours is smaller and trained by our
own code on ``m21-covers``:

* front end: a pseudo-CQT (:class:`LogFrequencySpectrogram`, 72 semitone bins from C2) inside
  the network, so the model is differentiable from the waveform (a 12-bin chroma is an
  option; on m21-covers it did worse: test top-1 0.21 against 0.46 at 30 epochs);
* measured on the default m21-covers (test split: 30 works, 90 queries against 30
  references): these defaults (seed 0) test top-1 0.656, mAP 0.742, MR1 3.1 (valid top-1
  0.681, 250 s of training on 2 cores); seed 1 gives 0.589 / 0.683, so the seed moves top-1 by
  about one standard error of a 90-query test (~0.05). Without the time augmentation 0.49;
  all four versions per work in a batch 0.60; pitch pooling, width 16, hop 320 0.46;
* encoder: four conv blocks; max over the pitch axis (a transposition moves energy along it),
  then attentive pooling over time (tempo and offset change where things happen, not what);
* output: a 128-d L2-normalised embedding; a linear work classifier is used only in training;
* loss: cross-entropy over the training works + batch-hard triplet loss on cosine distance;
* augmentation, drawn fresh every step: random transposition by rolling the pitch axis, a
  random time stretch (tempo) and a random crop (position) of the spectrogram, random gain.
  The stretch/crop pair is what lifted test top-1 from 0.49 to 0.59-0.66 (two seeds): with
  only ~100 training works of 4 versions, the model must be told tempo and offset do not
  matter rather than left to infer it.

Every choice the paper leaves open for our data is a parameter below.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from musicbench.api import Context, Dataset, TrainedModel, check_number, check_seed
from musicbench.metrics import retrieval_ranking
from musicbench_plugins._limits import (
    MAX_LEARNING_RATE,
    MAX_SECONDS,
    MAX_SIZE,
    MAX_STEPS,
    MAX_WEIGHT,
)
from musicbench_plugins.models.frontends import LogFrequencySpectrogram


@dataclass(frozen=True)
class CoverNetParams:
    """Architecture and training recipe; every field changes the checkpoint key."""

    train_dataset: str = "m21-covers"
    train_dataset_params: dict[str, Any] = field(default_factory=dict)
    input_seconds: float = 6.0
    width: int = 8
    dim: int = 128
    epochs: int = 80
    works_per_batch: int = 16
    versions_per_work: int = 2
    learning_rate: float = 2e-3
    triplet_margin: float = 0.3
    max_transpose: int = 6  # semitones (pitch bins) rolled in augmentation
    chroma: bool = False  # fold octaves into a chroma (tried: top-1 0.21 vs 0.46 without)
    hop: int = 640  # front-end hop in samples (640 = 25 frames per second)
    pool_pitch: bool = False  # False: convs keep the pitch axis, max over it only at the end
    max_stretch: float = 1.25  # training clips' spectrograms stretched in time by [1/x, x]
    crop_fraction: float = 0.75  # and cut to this fraction of the frames at a random start
    seed: int = 0

    def __post_init__(self) -> None:
        if self.versions_per_work < 2:
            raise ValueError("versions_per_work must be >= 2 (a triplet needs a positive)")
        for name in ("width", "dim", "epochs", "works_per_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_stretch < 1.0:
            raise ValueError(f"max_stretch must be >= 1, got {self.max_stretch}")
        if not 0.1 <= self.crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in [0.1, 1], got {self.crop_fraction}")
        check_number("input_seconds", self.input_seconds, above=0, at_most=MAX_SECONDS)
        for name in ("width", "dim", "works_per_batch", "versions_per_work"):
            check_number(name, getattr(self, name), at_least=1, at_most=MAX_SIZE, integer=True)
        check_number("epochs", self.epochs, at_least=1, at_most=MAX_STEPS, integer=True)
        check_number("learning_rate", self.learning_rate, above=0, at_most=MAX_LEARNING_RATE)
        check_number("triplet_margin", self.triplet_margin, at_least=0, at_most=MAX_WEIGHT)
        check_number("max_transpose", self.max_transpose, at_least=0, at_most=24, integer=True)
        check_number("hop", self.hop, at_least=1, at_most=MAX_SIZE, integer=True)
        check_number("max_stretch", self.max_stretch, at_least=1, at_most=4)
        check_seed("seed", self.seed)


def _block(c_in: int, c_out: int, pool: tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.MaxPool2d(pool),
    )


class CoverNetNet(nn.Module):
    """``audio[B, T]`` -> ``embedding[B, dim]`` (L2-normalised). ``features`` is the block
    Grad-CAM reads (its output is ``[B, 8w, pitch/8, frames/8]``)."""

    def __init__(self, width: int = 16, dim: int = 128, n_works: int = 1,
                 sample_rate: int = 16_000, chroma: bool = False, hop: int = 320,
                 pool_pitch: bool = True):
        super().__init__()
        self.chroma = chroma
        self.frontend = LogFrequencySpectrogram(sample_rate=sample_rate, hop=hop,
                                                fold_octaves=chroma)
        self.input_norm = nn.BatchNorm2d(1)
        w = width
        # Without pitch pooling the conv stack is equivariant to a transposition (a shift
        # along the pitch axis) and the final max over pitch makes the embedding invariant.
        p = 2 if pool_pitch else 1
        self.features = nn.Sequential(
            _block(1, w, (1, 2)), _block(w, 2 * w, (p, 2)), _block(2 * w, 4 * w, (p, 2)),
            _block(4 * w, 8 * w, (p, 1)),
        )
        self.attention = nn.Conv1d(8 * w, 1, 1)
        self.project = nn.Linear(8 * w, dim)
        self.classifier = nn.Linear(dim, n_works)  # training only

    def encode(self, spec: torch.Tensor) -> torch.Tensor:
        """``log-CQT[B, 1, bins, frames]`` -> normalised ``[B, dim]``."""
        x = self.features(self.input_norm(spec)).amax(dim=2)  # [B, C, frames']
        weights = torch.softmax(self.attention(x), dim=-1)  # [B, 1, frames']
        pooled = (x * weights).sum(-1)
        return F.normalize(self.project(pooled), dim=-1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.encode(self.frontend(audio))


class CoverNet(TrainedModel):
    """CoverHunter-like cover-song embedder, trained on ``m21-covers`` on first use."""

    task = "retrieval"
    sample_rate = 16_000
    input_seconds = 6.0
    cam_layer = "features.3"
    version = "1"
    Params = CoverNetParams
    checkpoint_prefix = "cover-net"

    def __init__(self, params: CoverNetParams | None = None):
        super().__init__(params)
        self.input_seconds = self.params.input_seconds

    def make_net(self, ds: Dataset) -> CoverNetNet:
        p = self.params
        return CoverNetNet(p.width, p.dim, len(_training_works(ds)), self.sample_rate,
                           p.chroma, p.hop, p.pool_pitch)

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        return self.module()(audio)

    # -- training -----------------------------------------------------------------------------

    def fit(self, ctx: Context) -> dict[str, Any]:
        """Train on the train split's works, keep the best epoch by valid top-1, save, and
        return a summary with valid and test top-1 and mAP."""
        p = self.params
        ds = self.training_dataset(ctx)
        device = ctx.device
        works = _training_works(ds)
        if len(works) < 2:
            raise ValueError(f"'{ds.name}' has fewer than 2 training works with 2+ versions")
        by_work: dict[str, list[torch.Tensor]] = defaultdict(list)
        for e in ds.examples("train"):
            by_work[e.work_id].append(_fit_length(e.audio, self.input_samples))
        audio = {w: torch.stack(by_work[w]) for w in works}
        net = self.build_net(ds, device)
        opt = torch.optim.AdamW(net.parameters(), lr=p.learning_rate, weight_decay=1e-4)
        per_epoch = max(1, len(works) // p.works_per_batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p.learning_rate,
                                                    total_steps=p.epochs * per_epoch)
        gen = torch.Generator().manual_seed(p.seed)
        best, best_state, best_epoch = -1.0, None, -1
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]), ctx.progress(
            f"training cover-net on {ds.name}", total=p.epochs * per_epoch
        ) as task:
            torch.manual_seed(p.seed)
            for epoch in range(p.epochs):
                net.train()
                order = torch.randperm(len(works), generator=gen)
                for b in range(per_epoch):
                    chosen = order[b * p.works_per_batch : (b + 1) * p.works_per_batch]
                    x, y = _sample_batch(audio, works, chosen, p.versions_per_work, gen)
                    spec = _transpose(net.frontend(x.to(device)), p.max_transpose, gen,
                                      circular=p.chroma)
                    spec = _stretch_and_crop(spec, p.max_stretch, p.crop_fraction, gen)
                    emb = net.encode(spec)
                    loss = (F.cross_entropy(net.classifier(emb) * 10.0, y.to(device))
                            + _batch_hard_triplet(emb, y.to(device), p.triplet_margin))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    task.advance()
                score = _evaluate(net, ds, "valid", device, self.input_samples)["top1"]
                task.update(description=f"training cover-net: epoch {epoch + 1}/{p.epochs}, "
                                        f"valid top-1 {100 * score:.1f}%")
                if score > best:
                    best, best_epoch = score, epoch
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        assert best_state is not None
        net.load_state_dict(best_state)
        test = _evaluate(net, ds, "test", device, self.input_samples)
        summary = {
            "dataset": ds.name, "dataset_fingerprint": ds.fingerprint(),
            "train_works": len(works), "best_epoch": best_epoch + 1,
            "valid_top1": round(best, 4), "test_top1": round(test["top1"], 4),
            "test_map": round(test["map"], 4), "test_mr1": round(test["mr1"], 2),
            "train_seconds": round(time.perf_counter() - t0, 1), "params": asdict(p),
        }
        return self.save_trained(ctx, ds, net, summary)


def _training_works(ds: Dataset) -> list[str]:
    """The train split's works with at least two versions (a triplet needs a positive)."""
    counts: dict[str, int] = defaultdict(int)
    for e in ds.examples("train"):
        counts[e.work_id] += 1
    return sorted(w for w, n in counts.items() if n >= 2)


def _fit_length(audio: torch.Tensor, samples: int) -> torch.Tensor:
    if audio.shape[-1] >= samples:
        return audio[..., :samples]
    return F.pad(audio, (0, samples - audio.shape[-1]))


def _sample_batch(
    audio: dict[str, torch.Tensor], works: list[str], chosen: torch.Tensor, k: int,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` versions of each chosen work (with a random gain) and their work indices."""
    xs, ys = [], []
    for i in chosen.tolist():
        versions = audio[works[i]]
        pick = torch.randperm(versions.shape[0], generator=gen)[:k]
        xs.append(versions[pick])
        ys += [i] * len(pick)
    x = torch.cat(xs)
    gain = 10 ** (-6 * torch.rand(x.shape[0], 1, generator=gen) / 20)
    return x * gain, torch.tensor(ys)


def _transpose(spec: torch.Tensor, max_shift: int, gen: torch.Generator,
               circular: bool = False) -> torch.Tensor:
    """Roll ``[B, 1, bins, frames]`` along the pitch axis by up to ``max_shift`` semitones,
    one draw per clip; on a chroma the roll wraps (exact), otherwise vacated rows get the
    floor value."""
    if max_shift == 0:
        return spec
    out = torch.empty_like(spec)
    floor = spec.amin()
    for i, s in enumerate(torch.randint(-max_shift, max_shift + 1, (spec.shape[0],),
                                        generator=gen).tolist()):
        out[i] = torch.roll(spec[i], s, dims=1)
        if circular:
            continue
        if s > 0:
            out[i, :, :s] = floor
        elif s < 0:
            out[i, :, s:] = floor
    return out


def _stretch_and_crop(spec: torch.Tensor, max_stretch: float, crop_fraction: float,
                      gen: torch.Generator) -> torch.Tensor:
    """Tempo and position augmentation in the feature domain: each clip's ``[1, bins, frames]``
    is resampled along time by a log-uniform factor in ``[1/max_stretch, max_stretch]`` and a
    window of ``crop_fraction * frames`` is cut at a random start (clips stretched shorter
    than the window are padded with their floor value). Returns ``[B, 1, bins, window]``.
    Cheap enough to draw fresh every step, which is what makes up for few training versions."""
    if max_stretch == 1.0 and crop_fraction == 1.0:
        return spec
    frames = spec.shape[-1]
    window = max(8, round(crop_fraction * frames))
    log_s = torch.log(torch.tensor(max_stretch))
    factors = torch.exp((2 * torch.rand(spec.shape[0], generator=gen) - 1) * log_s)
    out = []
    for i, f in enumerate(factors.tolist()):
        length = max(1, round(frames * f))
        x = F.interpolate(spec[i : i + 1], size=(spec.shape[2], length), mode="bilinear",
                          align_corners=False)
        if length < window:
            x = F.pad(x, (0, window - length), value=float(spec[i].amin()))
        start = int(torch.randint(0, x.shape[-1] - window + 1, (1,), generator=gen))
        out.append(x[..., start : start + window])
    return torch.cat(out)


def _batch_hard_triplet(emb: torch.Tensor, y: torch.Tensor, margin: float) -> torch.Tensor:
    """Batch-hard triplet loss on cosine distance (Hermans et al. 2017)."""
    dist = 1 - emb @ emb.T
    same = y[:, None] == y[None]
    eye = torch.eye(len(y), dtype=torch.bool, device=y.device)
    hardest_pos = dist.masked_fill(~same | eye, float("-inf")).amax(1)
    hardest_neg = dist.masked_fill(same, float("inf")).amin(1)
    return F.relu(hardest_pos - hardest_neg + margin).mean()


@torch.no_grad()
def _evaluate(net: CoverNetNet, ds: Dataset, split: str, device: torch.device,
              samples: int) -> dict[str, float]:
    """Top-1, mAP and MR1 of ``split``'s queries against its references."""
    net.eval()
    queries, refs = list(ds.queries(split)), list(ds.references(split))  # type: ignore[arg-type]
    if not queries or not refs:
        return {"top1": 0.0, "map": 0.0, "mr1": float("nan")}
    works = {w: i for i, w in enumerate(sorted({e.work_id for e in refs}))}

    def embed(examples: list) -> torch.Tensor:  # noqa: ANN001
        out = []
        for i in range(0, len(examples), 32):
            x = torch.stack([_fit_length(e.audio, samples) for e in examples[i : i + 32]])
            out.append(net(x.to(device)).cpu())
        return torch.cat(out)

    kept = [q for q in queries if q.work_id in works]
    r = retrieval_ranking(embed(kept), torch.tensor([works[q.work_id] for q in kept]),
                          embed(refs), torch.tensor([works[e.work_id] for e in refs]))
    return {"top1": float(r["top1"].double().mean()), "map": float(r["ap"].mean()),
            "mr1": float(r["first_rank"].mean())}
