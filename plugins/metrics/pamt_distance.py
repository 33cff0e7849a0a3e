"""``pamt-distance``: how far adversarial audio is from the clean clip in PAMT feature space.

PAMT (Liu et al., "Training a Perceptual Model for Evaluating Auditory Similarity in Music
Adversarial Attack", arXiv 2509.04985, CMMR 2025) trains a projection head on a frozen music
encoder so that clean and psychoacoustically perturbed views of a clip stay close frame by
frame; the paper uses the trained model as a perceptual similarity measure (Spearman 0.65 with
listeners). Ours (docs/pamt.md):

    d(x, x') = mean over frames t of  1 - cos(h(E(x))_t, h(E(x'))_t)

with E the frozen encoder (``encoder``, default ``musicnn``) and h the PAMT head
(:mod:`musicbench_plugins.defenses.pamt_head`), both views conditioned on the head's **null
vector**: the perturbation behind adversarial audio is unknown, so neither branch gets
perturbation parameters (``condition = "null"``, the one reading implemented). Cosine distance
because InfoNCE trains on cosine similarity (the features are L2-normalised in the loss), so
it is the geometry the head learned; values lie in [0, 2], 0 for identical audio. The head runs
on windows of ``window_frames`` frames, the length it trained on (sinusoidal positions past
that length were never seen).

Weights: trained on first use (or by ``musicbench train pamt-distance``) on ``train_dataset``
(default ``m21-styles``), cached under ``<cache>/metrics/pamt-distance-<key>.safetensors``,
the key covering every parameter, the encoder's name, version, parameters and weights, and the
dataset's fingerprint; with training refused, :class:`~musicbench.errors.NotTrainedError`.
Training: ``train_clips`` random train clips cropped to ``crop_seconds``, their encoder frames
and those of ``views`` psychoacoustic perturbations each computed once
(:func:`~musicbench_plugins.defenses.pamt_training.encode_views`), then the head trains on the
cached frames (:func:`~musicbench_plugins.defenses.pamt_training.train_head`), keeping the
epoch with the lowest InfoNCE on ``valid_clips`` valid clips. The defaults train in minutes on
a CPU; they are a starting point, not a validated recipe.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from musicbench.api import (
    Context,
    Dataset,
    SampleMetric,
    TrainedOnFirstUse,
    check_number,
    check_seed,
)
from musicbench_plugins._limits import MAX_LEARNING_RATE, MAX_SECONDS, MAX_SIZE, MAX_STEPS
from musicbench_plugins.defenses.pamt_head import HeadConfig, PamtHead
from musicbench_plugins.defenses.pamt_psychoacoustic import (
    MaskingModel,
    PerturbationSpace,
    PsychoacousticPerturbation,
    vector_size,
)
from musicbench_plugins.defenses.pamt_training import (
    TrainConfig,
    encode_views,
    frozen,
    train_head,
)
from musicbench_plugins.encoders.fad_backbones import resample


@dataclass(frozen=True)
class PamtDistanceParams:
    """Every field is part of the checkpoint key.

    - ``train_dataset``, ``train_dataset_params``, ``seed``: what the head trains on, and the
      seed of every draw (weights, crops, perturbations, batches).
    - ``encoder``, ``encoder_params``: the frozen encoder (any registered Encoder).
    - head (:class:`~musicbench_plugins.defenses.pamt_head.HeadConfig`): ``d_model``,
      ``layers``, ``heads``, ``ffn_mult``, ``dropout``, ``cond_dim``, ``ppe_hidden``,
      ``out_dim``, ``positions``.
    - perturbation (:mod:`~musicbench_plugins.defenses.pamt_psychoacoustic`): ``level_db_min``,
      ``level_db_max`` (re masking threshold), ``min_bands``, ``max_bands`` (0: all),
      ``span_min``, ``span_max`` (fraction of the clip), ``tonality``, ``spl_full_scale_db``.
    - cache: ``train_clips``, ``valid_clips`` (0: no validation, keep the last epoch),
      ``views`` per clip, ``crop_seconds`` per clip (0: whole clips).
    - training (:class:`~musicbench_plugins.defenses.pamt_training.TrainConfig`): ``epochs``,
      ``batch_size``, ``learning_rate``, ``window_frames``, ``temperature``, ``negatives``,
      ``exclude_radius``.
    - ``condition``: what conditions the head when measuring (only ``"null"``: both clips
      through the null vector).
    """

    train_dataset: str = "m21-styles"
    train_dataset_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    encoder: str = "musicnn"
    encoder_params: dict[str, Any] = field(default_factory=dict)
    d_model: int = 128
    layers: int = 4
    heads: int = 4
    ffn_mult: int = 2
    dropout: float = 0.1
    cond_dim: int = 32
    ppe_hidden: int = 64
    out_dim: int = 64
    positions: Literal["sinusoidal", "none"] = "sinusoidal"
    level_db_min: float = -20.0
    level_db_max: float = 20.0
    min_bands: int = 1
    max_bands: int = 0
    span_min: float = 0.25
    span_max: float = 1.0
    tonality: Literal["frame", "band"] = "frame"
    spl_full_scale_db: float = 96.0
    train_clips: int = 192
    valid_clips: int = 48
    views: int = 3
    crop_seconds: float = 2.0
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 1e-3
    window_frames: int = 64
    temperature: float = 0.1
    negatives: Literal["batch", "clip", "frame"] = "batch"
    exclude_radius: int = 4
    condition: Literal["null"] = "null"

    def __post_init__(self) -> None:
        check_seed("seed", self.seed)
        for name in ("d_model", "layers", "heads", "ffn_mult", "cond_dim", "ppe_hidden",
                     "out_dim", "train_clips", "views", "batch_size", "window_frames",
                     "min_bands"):
            check_number(name, getattr(self, name), at_least=1, at_most=MAX_SIZE, integer=True)
        for name in ("valid_clips", "max_bands", "exclude_radius"):
            check_number(name, getattr(self, name), at_least=0, at_most=MAX_SIZE, integer=True)
        check_number("epochs", self.epochs, at_least=1, at_most=MAX_STEPS, integer=True)
        check_number("dropout", self.dropout, at_least=0, below=1)
        check_number("level_db_min", self.level_db_min, at_least=-120, at_most=120)
        check_number("level_db_max", self.level_db_max, at_least=self.level_db_min,
                     at_most=120)
        check_number("span_min", self.span_min, above=0, at_most=1)
        check_number("span_max", self.span_max, at_least=self.span_min, at_most=1)
        check_number("spl_full_scale_db", self.spl_full_scale_db, at_least=0, at_most=200)
        check_number("crop_seconds", self.crop_seconds, at_least=0, at_most=MAX_SECONDS)
        check_number("learning_rate", self.learning_rate, above=0, at_most=MAX_LEARNING_RATE)
        check_number("temperature", self.temperature, above=0, at_most=100)
        if self.train_clips < 2:
            raise ValueError(f"train_clips must be >= 2 (InfoNCE needs negatives), got "
                             f"{self.train_clips}")
        # the rest is checked where it is used; fail here, not hours later
        self.head_config(input_dim=1, param_dim=1)
        self.space()
        self.train_config()
        if self.condition != "null":
            raise ValueError(f"condition must be 'null', got {self.condition!r}")

    def head_config(self, input_dim: int, param_dim: int) -> HeadConfig:
        return HeadConfig(input_dim=input_dim, param_dim=param_dim, d_model=self.d_model,
                          layers=self.layers, heads=self.heads, ffn_mult=self.ffn_mult,
                          dropout=self.dropout, cond_dim=self.cond_dim,
                          ppe_hidden=self.ppe_hidden, out_dim=self.out_dim,
                          positions=self.positions)

    def masking_model(self, sample_rate: int) -> MaskingModel:
        return MaskingModel(sample_rate=sample_rate, tonality=self.tonality,
                            spl_full_scale_db=self.spl_full_scale_db)

    def space(self) -> PerturbationSpace:
        return PerturbationSpace(level_db=(self.level_db_min, self.level_db_max),
                                 min_bands=self.min_bands, max_bands=self.max_bands,
                                 span_fraction=(self.span_min, self.span_max))

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size,
                           learning_rate=self.learning_rate, window_frames=self.window_frames,
                           temperature=self.temperature, negatives=self.negatives,
                           exclude_radius=self.exclude_radius)


class PamtDistance(TrainedOnFirstUse, SampleMetric):
    """``compute(clean[B, T], adv[B, T], sample_rate) -> Tensor[B]``: mean over frames of the
    cosine distance between PAMT features (0 = identical; lower = perceptually closer)."""

    higher_is_better = False
    unit = ""
    version = "1"
    Params = PamtDistanceParams
    checkpoint_prefix = "pamt-distance"
    checkpoint_folder = "metrics"

    def __init__(self, params: PamtDistanceParams | None = None):
        super().__init__(params)
        self.encoder: Any = None

    # -- TrainedOnFirstUse ----------------------------------------------------------------------

    def check_dataset(self, ds: Dataset) -> None:
        pass  # any sample rate: clips are resampled to the encoder's

    def key_params(self) -> dict[str, Any]:
        if self.encoder is None:
            raise RuntimeError("pamt-distance: load the encoder before asking for the key")
        return dataclasses.asdict(self.params) | {
            "encoder_component": self.encoder.describe(),
            "encoder_weights": self.encoder.weights_digest()}

    def make_net(self, ds: Dataset) -> PamtHead:
        sr = self.encoder.sample_rate
        param_dim = vector_size(self.params.masking_model(sr))
        return PamtHead(self.params.head_config(self.encoder.dim, param_dim))

    def freeze(self, net: nn.Module) -> None:
        self.net = frozen(net)

    def load(self, ctx: Context) -> None:
        """Load the encoder, then the head's cached weights (or train them first)."""
        self._load_encoder(ctx)
        super().load(ctx)

    def _load_encoder(self, ctx: Context) -> None:
        if self.encoder is not None:
            return
        if ctx.encoder is None:
            raise RuntimeError("pamt-distance needs a Context whose `encoder` resolves "
                               "encoders (the harness's does)")
        self.encoder = ctx.encoder(self.params.encoder, dict(self.params.encoder_params))

    def fit(self, ctx: Context) -> dict[str, Any]:
        """Cache encoder frames of clean and perturbed crops, train the head on them, save."""
        p = self.params
        self._load_encoder(ctx)
        ds = self.training_dataset(ctx)
        sr = self.encoder.sample_rate
        gen = torch.Generator().manual_seed(p.seed)
        train = self._clips(ds, "train", p.train_clips, gen)
        if train is None or train.shape[0] < 2:
            raise ValueError(f"'{ds.name}' has fewer than 2 train clips to train "
                             "pamt-distance on")
        valid_split = "valid" if ds.examples("valid") else "test"
        valid = self._clips(ds, valid_split, p.valid_clips, gen) if p.valid_clips else None
        perturbation = PsychoacousticPerturbation(p.masking_model(sr), p.space())
        t0 = time.perf_counter()
        n_clips = train.shape[0] + (0 if valid is None else valid.shape[0])
        embed = self._embedder(ctx.device)
        with ctx.progress(f"pamt-distance: encoding {n_clips} clips x {1 + p.views} views "
                          f"with {p.encoder}", total=n_clips) as task:
            train_views = encode_views(embed, train, perturbation, p.views, gen,
                                       batch_size=p.batch_size, progress=task.advance)
            valid_views = None if valid is None else encode_views(
                embed, valid, perturbation, p.views, gen, batch_size=p.batch_size,
                progress=task.advance)
        encode_seconds = time.perf_counter() - t0
        net = self.build_net(ds, ctx.device)
        config = p.train_config()
        steps = p.epochs * -(-train.shape[0] // p.batch_size)
        with ctx.progress(f"training pamt-distance on {ds.name}", total=steps) as task, \
                torch.random.fork_rng(devices=[]):
            torch.manual_seed(p.seed)  # dropout

            def report(row: dict[str, float]) -> None:
                task.update(description=f"training pamt-distance: epoch {row['epoch']}/"
                                        f"{p.epochs}, InfoNCE {row['loss']:.3f}, valid "
                                        f"{row['valid_loss']:.3f}")

            history = train_head(net, train_views, config, gen, valid=valid_views,
                                 on_step=task.advance, on_epoch=report)
        best = min(history, key=lambda r: r["valid_loss"]) if valid is not None else history[-1]
        summary = {
            "dataset": ds.name, "dataset_fingerprint": ds.fingerprint(),
            "encoder": self.encoder.describe(), "train_clips": train.shape[0],
            "valid_clips": 0 if valid is None else valid.shape[0],
            "frames": train_views.frames, "best_epoch": best["epoch"],
            "valid_loss": best["valid_loss"] if valid is not None else None,
            "history": history,
            "parameters": sum(q.numel() for q in net.parameters()),
            "encode_seconds": round(encode_seconds, 1),
            "train_seconds": round(time.perf_counter() - t0 - encode_seconds, 1),
            "params": asdict(p),
        }
        return self.save_trained(ctx, ds, net, summary)

    def _embedder(self, device: torch.device):  # noqa: ANN202
        def embed(audio: torch.Tensor) -> torch.Tensor:
            return self.encoder.embed(audio.to(device))
        return embed

    def _clips(self, ds: Dataset, split: str, count: int, gen: torch.Generator
               ) -> torch.Tensor | None:
        """``[n, T]`` at the encoder's rate: ``count`` clips of ``split`` (seeded subset), each
        cropped to ``crop_seconds`` at a seeded random offset."""
        examples = list(ds.examples(split))  # type: ignore[arg-type]
        if not examples:
            return None
        pick = torch.randperm(len(examples), generator=gen)[:count].sort().values
        audio = torch.stack([examples[int(i)].audio for i in pick]).float()
        audio = resample(audio, ds.sample_rate, self.encoder.sample_rate)
        crop = round(self.params.crop_seconds * self.encoder.sample_rate)
        if 0 < crop < audio.shape[1]:
            starts = torch.randint(0, audio.shape[1] - crop + 1, (audio.shape[0],),
                                   generator=gen)
            audio = torch.stack([a[s : s + crop] for a, s in zip(audio, starts, strict=True)])
        return audio

    # -- the metric -----------------------------------------------------------------------------

    @torch.no_grad()
    def features(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """``audio[B, T]`` at ``sample_rate`` -> PAMT features ``[B, F, out_dim]`` (null
        condition), the head run on consecutive windows of ``window_frames`` frames."""
        if self.net is None or self.encoder is None:
            raise RuntimeError("pamt-distance has no weights loaded: call load(ctx) first (the "
                               "harness must load metrics that have weights; docs/pamt.md)")
        device = next(self.net.parameters()).device
        x = resample(audio.float(), sample_rate, self.encoder.sample_rate).to(device)
        frames = self.encoder.embed(x).float()  # [B, F, E]
        w = self.params.window_frames
        return torch.cat([self.net(frames[:, i : i + w], None)
                          for i in range(0, frames.shape[1], w)], dim=1)

    def compute(self, clean: torch.Tensor, adv: torch.Tensor, sample_rate: int) -> torch.Tensor:
        if clean.shape != adv.shape or clean.dim() != 2:
            raise ValueError(f"pamt-distance takes clean and adv [B, T] of one shape, got "
                             f"{tuple(clean.shape)} and {tuple(adv.shape)}")
        zc, za = self.features(clean, sample_rate), self.features(adv, sample_rate)
        d = 1 - F.cosine_similarity(zc, za, dim=-1)  # [B, F]
        return d.mean(1).clamp_min(0).to(clean.device)
