"""``pamt`` and ``pamt-control``: training defenses that replace the base model with a frozen
encoder, (for ``pamt``) a PAMT projection head, and a task head trained for the base's task.

PAMT (Liu et al., "Training a Perceptual Model for Evaluating Auditory Similarity in Music
Adversarial Attack", arXiv 2509.04985, CMMR 2025) reports +9.15 points of robust accuracy when
task heads sit on PAMT features instead of the raw encoder's. Our reading (docs/pamt.md,
docs/pamt.md):

- ``pamt``: frozen encoder ``E`` (any registered Encoder, default ``musicnn``) -> PAMT head
  ``h`` (:class:`~musicbench_plugins.defenses.pamt_head.PamtHead`, trained with the
  frame-aligned InfoNCE between clean and psychoacoustically perturbed views, on cached
  encoder frames: :func:`~musicbench_plugins.defenses.pamt_training.encode_views` and
  :func:`~musicbench_plugins.defenses.pamt_training.train_head`), then frozen -> pooling over
  frames -> a task head;
- ``pamt-control``: the same task head, trained the same way on the same data, on the raw
  encoder frames (no PAMT head). ``pamt`` vs ``pamt-control`` is the paper's claim as a paired
  comparison; both sit beside ``none`` and ``advtrain`` in a run's defense matrix.

**The base model's own weights are not used.** Given a base model, the defense takes only its
task, labels, sample rate and input length, and the cell's training dataset; the defended model
is a different network (encoder + heads) trained from scratch on that dataset. The base stays in
the cell as the undefended twin (pseudo-labels, clean accuracy without the defense, the
oblivious attacker). The defended model carries ``cell_flags`` saying so, for the leaderboard.

Task heads (``LayerNorm -> Linear(hidden) -> GELU -> Dropout -> Linear``) on the pooled
features (``pooling``: mean, mean and standard deviation, or max over frames), trained on
pooled features computed once (the encoder and PAMT head are frozen):

- classification: cross-entropy over the base's labels (the dataset's labels mapped onto the
  base's by name, as advtrain does);
- retrieval: an embedding of ``embed_dim``, L2-normalised, trained with advtrain's retrieval
  loss (``retrieval_loss``: cross-entropy over in-batch work similarities / ``temperature``,
  or the batch-hard triplet loss), one version of each training work as the query and another
  as its reference.

With ``augment_views`` the task head also trains on the perturbed views' features (both
``pamt`` and ``pamt-control``, so the PAMT head stays the only difference). Model selection:
the PAMT head on the valid split's InfoNCE, the task head on the valid split's clean accuracy.

The defended model is a :class:`TargetModel` differentiable from the waveform through the
frozen encoder (the musicnn port's log-mel front end and convolutions are torch), so white-box
attacks get true gradients. Its input is at the base's sample rate, which must equal the
encoder's (no differentiable resampler is built; every built-in model and encoder is 16 kHz).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from musicbench.api import (
    Context,
    Dataset,
    TargetModel,
    TrainingDefense,
    check_number,
    check_seed,
)
from musicbench.checkpoints import state_digest
from musicbench.errors import MusicbenchError
from musicbench.victim import RETRIEVAL_TEMPERATURE
from musicbench_plugins._limits import MAX_LEARNING_RATE, MAX_SIZE, MAX_STEPS, MAX_WEIGHT
from musicbench_plugins.defenses.advtrain import _Classification, _Retrieval, _task_loss
from musicbench_plugins.defenses.pamt_head import PamtHead
from musicbench_plugins.defenses.pamt_psychoacoustic import (
    PsychoacousticPerturbation,
    vector_size,
)
from musicbench_plugins.defenses.pamt_training import (
    CachedViews,
    TrainConfig,
    encode_views,
    frozen,
    train_head,
)
from musicbench_plugins.metrics.pamt_distance import PamtDistanceParams

NOT_THE_BASE_FLAG = (
    "{defense}: a different network (frozen {encoder} encoder{head} + task head trained on "
    "{dataset}); the base model's weights are not used, only its task and labels")


@dataclass(frozen=True)
class PamtControlParams:
    """Every field is part of the defended model's cache key.

    - ``encoder``, ``encoder_params``: the frozen encoder (any registered Encoder).
    - perturbed views (:mod:`~musicbench_plugins.defenses.pamt_psychoacoustic`): ``views`` per
      clip, drawn with ``level_db_min``/``level_db_max`` (dB re the masking threshold),
      ``min_bands``/``max_bands`` (0: all), ``span_min``/``span_max`` (fraction of the clip),
      ``tonality``, ``spl_full_scale_db``; ``augment_views``: the task head trains on them too.
    - data: ``train_clips``, ``valid_clips`` (0: the whole split; a seeded subset otherwise),
      each clip cropped (seeded offset) or zero-padded to the base's ``input_seconds``, the
      window the harness scores; ``encode_batch`` clips per encoder call.
    - task head: ``pooling`` over frames (``mean``, ``mean-std``, ``max``), ``hidden``,
      ``task_dropout``, ``embed_dim`` (retrieval), ``task_epochs``, ``task_batch_size`` (clips,
      or works for retrieval), ``task_lr``, ``weight_decay`` (AdamW, cosine decay);
      ``retrieval_loss`` (``ce`` or ``triplet``), ``temperature``, ``triplet_margin``: as in
      ``advtrain``.
    - ``seed``: every draw (crops, views, initial weights, batches, dropout).
    """

    encoder: str = "musicnn"
    encoder_params: dict[str, Any] = field(default_factory=dict)
    views: int = 3
    level_db_min: float = -20.0
    level_db_max: float = 20.0
    min_bands: int = 1
    max_bands: int = 0
    span_min: float = 0.25
    span_max: float = 1.0
    tonality: Literal["frame", "band"] = "frame"
    spl_full_scale_db: float = 96.0
    augment_views: bool = True
    train_clips: int = 0
    valid_clips: int = 0
    encode_batch: int = 16
    pooling: Literal["mean", "mean-std", "max"] = "mean-std"
    hidden: int = 256
    task_dropout: float = 0.2
    embed_dim: int = 128
    task_epochs: int = 40
    task_batch_size: int = 32
    task_lr: float = 1e-3
    weight_decay: float = 0.01
    retrieval_loss: Literal["ce", "triplet"] = "ce"
    temperature: float = RETRIEVAL_TEMPERATURE
    triplet_margin: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        check_seed("seed", self.seed)
        for name in ("views", "encode_batch", "hidden", "embed_dim", "min_bands"):
            check_number(name, getattr(self, name), at_least=1, at_most=MAX_SIZE, integer=True)
        check_number("task_batch_size", self.task_batch_size, at_least=2, at_most=MAX_SIZE,
                     integer=True)
        for name in ("train_clips", "valid_clips", "max_bands"):
            check_number(name, getattr(self, name), at_least=0, at_most=MAX_SIZE, integer=True)
        check_number("task_epochs", self.task_epochs, at_least=1, at_most=MAX_STEPS,
                     integer=True)
        check_number("task_dropout", self.task_dropout, at_least=0, below=1)
        check_number("task_lr", self.task_lr, above=0, at_most=MAX_LEARNING_RATE)
        check_number("weight_decay", self.weight_decay, at_least=0, at_most=1)
        check_number("temperature", self.temperature, above=0, at_most=MAX_WEIGHT)
        check_number("triplet_margin", self.triplet_margin, at_least=0, at_most=MAX_WEIGHT)
        check_number("spl_full_scale_db", self.spl_full_scale_db, at_least=0, at_most=200)
        check_number("level_db_min", self.level_db_min, at_least=-120, at_most=120)
        check_number("level_db_max", self.level_db_max, at_least=self.level_db_min,
                     at_most=120)
        for name, allowed in (("pooling", ("mean", "mean-std", "max")),
                              ("retrieval_loss", ("ce", "triplet"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got "
                                 f"{getattr(self, name)!r}")
        self.space()  # checks the perturbation ranges now, not after encoding

    # the perturbation fields are pamt-distance's, named alike: its builders serve both
    masking_model = PamtDistanceParams.masking_model
    space = PamtDistanceParams.space


@dataclass(frozen=True)
class PamtParams(PamtControlParams):
    """:class:`PamtControlParams` plus the PAMT head (:class:`~.pamt_head.HeadConfig`:
    ``d_model``, ``layers`` (paper: 4), ``heads``, ``ffn_mult``, ``dropout``, ``cond_dim``,
    ``ppe_hidden``, ``out_dim``, ``positions``) and its InfoNCE training
    (:class:`~.pamt_training.TrainConfig`: ``head_epochs``, ``head_batch_size``, ``head_lr``,
    ``window_frames`` -- also the windows the head runs on at inference, as in
    ``pamt-distance`` --, ``info_nce_temperature`` (paper: 0.1), ``negatives``,
    ``exclude_radius``). At inference the head is conditioned on its null vector (the
    perturbation behind an input is unknown)."""

    d_model: int = 128
    layers: int = 4
    heads: int = 4
    ffn_mult: int = 2
    dropout: float = 0.1
    cond_dim: int = 32
    ppe_hidden: int = 64
    out_dim: int = 64
    positions: Literal["sinusoidal", "none"] = "sinusoidal"
    head_epochs: int = 10
    head_batch_size: int = 16
    head_lr: float = 1e-3
    window_frames: int = 64
    info_nce_temperature: float = 0.1
    negatives: Literal["batch", "clip", "frame"] = "batch"
    exclude_radius: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("d_model", "layers", "heads", "ffn_mult", "cond_dim", "ppe_hidden",
                     "out_dim", "head_batch_size", "window_frames"):
            check_number(name, getattr(self, name), at_least=1, at_most=MAX_SIZE, integer=True)
        check_number("exclude_radius", self.exclude_radius, at_least=0, at_most=MAX_SIZE,
                     integer=True)
        check_number("dropout", self.dropout, at_least=0, below=1)
        check_number("info_nce_temperature", self.info_nce_temperature, above=0, at_most=100)
        check_number("head_epochs", self.head_epochs, at_least=1, at_most=MAX_STEPS,
                     integer=True)
        check_number("head_lr", self.head_lr, above=0, at_most=MAX_LEARNING_RATE)
        self.head_config(input_dim=1, param_dim=1)
        self.train_config()

    head_config = PamtDistanceParams.head_config  # the head fields are named alike too

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.head_epochs, batch_size=self.head_batch_size,
                           learning_rate=self.head_lr, window_frames=self.window_frames,
                           temperature=self.info_nce_temperature, negatives=self.negatives,
                           exclude_radius=self.exclude_radius)


class EncoderTaskNet(nn.Module):
    """Frames ``[B, F, E]`` of the frozen encoder -> (PAMT head on windows of
    ``window_frames``, null condition) -> pooling over frames -> task head ``[B, out]``.
    ``frames`` is an identity hook point with the encoder's frames time-last (``[B, E, F]``),
    the defended model's ``cam_layer``: Grad-CAM (MAIA-WB) weighs the encoder's output."""

    def __init__(self, head: PamtHead | None, width: int, out: int, *, pooling: str,
                 hidden: int, dropout: float, window_frames: int):
        super().__init__()
        self.head = head
        self.pooling = pooling
        self.window_frames = window_frames
        self.frames = nn.Identity()  # the encoder's frames as [B, E, F], time last: Grad-CAM's
        pooled = width * (2 if pooling == "mean-std" else 1)
        self.task = nn.Sequential(nn.LayerNorm(pooled), nn.Linear(pooled, hidden), nn.GELU(),
                                  nn.Dropout(dropout), nn.Linear(hidden, out))

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, F, E]`` -> pooled ``[B, D]`` (what the task head sees)."""
        frames = self.frames(frames.transpose(1, 2)).transpose(1, 2)
        if self.head is not None:
            w = self.window_frames
            frames = torch.cat([self.head(frames[:, i : i + w], None)
                                for i in range(0, frames.shape[1], w)], dim=1)
        if self.pooling == "max":
            return frames.amax(1)
        if self.pooling == "mean-std":
            return torch.cat([frames.mean(1), frames.std(1, unbiased=False)], -1)
        return frames.mean(1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.task(self.features(frames))


class EncoderHeadModel(TargetModel):
    """The defended model: ``audio[B, T]`` -> frozen encoder -> :class:`EncoderTaskNet`;
    logits over the base's labels (``forward``) or an L2-normalised embedding (``embed``).
    Same task, labels, sample rate and input length as the base; :meth:`module` is the
    trained part (PAMT head and task head), what the core caches; the encoder's identity is
    in the training summary and checked on first use."""

    def __init__(self, base: TargetModel, encoder: Any, net: EncoderTaskNet, *, defense: str,
                 dataset: str):
        super().__init__(None)
        self.name = base.name
        self.base_name = base.name
        self.defense = defense
        self.encoder = encoder
        self.net = net
        self.task = base.task  # type: ignore[misc]
        self.sample_rate = base.sample_rate  # type: ignore[misc]
        self.input_seconds = base.input_seconds  # type: ignore[misc]
        self.cam_layer = "frames"  # type: ignore[misc]  # the encoder's output (MAIA-WB)
        self.network = getattr(encoder, "network", None)  # type: ignore[misc]
        self.labels = tuple(base.labels)
        self.training_summary: dict[str, Any] = {}
        self.checkpoint = None
        self.cell_flags = (NOT_THE_BASE_FLAG.format(
            defense=defense, encoder=encoder.name,
            head=" + PAMT head" if net.head is not None else "", dataset=dataset),)
        self._encoder_checked = False

    def load(self, ctx: Context) -> None:
        """Nothing: the core loads the cached weights."""

    def module(self) -> nn.Module:
        return self.net

    def weights_digest(self) -> str | None:
        return state_digest(self.net)

    def checkpoint_key(self) -> str:
        return self.checkpoint.stem if self.checkpoint is not None else ""

    def _frames(self, audio: torch.Tensor) -> torch.Tensor:
        if not self._encoder_checked:
            trained = self.training_summary.get("encoder_weights")
            if trained is not None and trained != self.encoder.weights_digest():
                raise MusicbenchError(
                    f"{self.defense} for '{self.name}' was trained on encoder "
                    f"'{self.encoder.name}' weights {trained}, not the loaded "
                    f"{self.encoder.weights_digest()}; delete {self.checkpoint} to retrain")
            self._encoder_checked = True
        return self.encoder.embed(audio).float()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if self.task != "classification":
            return super().forward(audio)
        return self.net(self._frames(audio))

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        if self.task != "retrieval":
            return super().embed(audio)
        return F.normalize(self.net(self._frames(audio)), dim=-1)


class PamtControl(TrainingDefense):
    """Frozen encoder -> pooled raw frames -> task head (the control arm of ``pamt``)."""

    version = "1"
    Params = PamtControlParams
    uses_head = False

    # -- the network -----------------------------------------------------------------------------

    def _encoder(self, base: TargetModel, ctx: Context) -> Any:
        if ctx.encoder is None:
            raise RuntimeError(f"{self.name} needs a Context whose `encoder` resolves encoders "
                               "(the harness's does)")
        encoder = ctx.encoder(self.params.encoder, dict(self.params.encoder_params))
        if encoder.sample_rate != base.sample_rate:
            raise ValueError(
                f"{self.name}: encoder '{encoder.name}' works at {encoder.sample_rate} Hz but "
                f"model '{base.name}' at {base.sample_rate} Hz; the defended model must take "
                "the base's input and no differentiable resampler is built")
        return encoder

    def _head(self, encoder: Any) -> PamtHead | None:
        return None

    def build(self, base: TargetModel, data: Dataset, *, ctx: Context) -> TargetModel:
        """The untrained defended network for ``base``'s task and labels (not its weights)."""
        p = self.params
        encoder = self._encoder(base, ctx)
        width = encoder.dim if not self.uses_head else p.out_dim
        out = len(base.labels) if base.task == "classification" else p.embed_dim
        if base.task == "classification" and out < 2:
            raise ValueError(f"{self.name}: model '{base.name}' has {out} labels")
        with torch.random.fork_rng(devices=[]):  # seeded init; the caller's RNG untouched
            torch.manual_seed(p.seed)
            head = self._head(encoder)
            net = EncoderTaskNet(head, width, out, pooling=p.pooling, hidden=p.hidden,
                                 dropout=p.task_dropout,
                                 window_frames=getattr(p, "window_frames", 1 << 30))
        return EncoderHeadModel(base, encoder, net.to(ctx.device), defense=self.name,
                                dataset=data.name)

    # -- training --------------------------------------------------------------------------------

    def fit(self, base: TargetModel, data: Dataset, *, ctx: Context) -> TargetModel:
        """Encode the train and valid windows and their perturbed views once, train the PAMT
        head (``pamt``), pool, train the task head; return the defended model with its
        ``training_summary``."""
        p = self.params
        if data.sample_rate != base.sample_rate or data.task != base.task:
            raise ValueError(f"{self.name}: dataset '{data.name}' ({data.task}, "
                             f"{data.sample_rate} Hz) cannot train for '{base.name}' "
                             f"({base.task}, {base.sample_rate} Hz)")
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(p.seed)
        model = self.build(base, data, ctx=ctx)
        assert isinstance(model, EncoderHeadModel)
        net, encoder = model.net, model.encoder
        split = _split(self.name, base, data, p, gen)
        perturbation = PsychoacousticPerturbation(p.masking_model(encoder.sample_rate),
                                                  p.space())
        views = p.views if (p.augment_views or net.head is not None) else 1

        def embed(audio: torch.Tensor) -> torch.Tensor:
            return encoder.embed(audio.to(ctx.device))

        n = split.train.shape[0] + split.valid.shape[0]
        with ctx.progress(f"{self.name}: encoding {n} clips x {1 + views} views with "
                          f"{encoder.name}", total=n) as bar:
            train = encode_views(embed, split.train, perturbation, views, gen,
                                 batch_size=p.encode_batch, progress=bar.advance)
            valid = encode_views(embed, split.valid, perturbation, views, gen,
                                 batch_size=p.encode_batch, progress=bar.advance)
        encode_seconds = time.perf_counter() - t0
        summary: dict[str, Any] = {}
        if net.head is not None:
            summary["head_history"] = self._train_head(net.head, train, valid, gen, ctx,
                                                       f"{base.name} on {data.name}")
            frozen(net.head)
        feats = _pooled(net, train, p.augment_views)  # [N, V', D]
        valid_feats = _pooled(net, valid, False)[:, 0]  # clean only
        history = _train_task(net, split, feats, valid_feats, p, gen, ctx,
                              f"{self.name}: task head for {base.name} on {data.name}")
        best = max(history, key=lambda r: (r["valid_accuracy"], -r["epoch"]))
        net.load_state_dict(best.pop("state"))
        for row in history:
            row.pop("state", None)
        net.eval()
        model.training_summary = summary | {
            "dataset": data.name, "encoder": encoder.describe(),
            "encoder_weights": encoder.weights_digest(),
            "base_weights_used": False, "train_clips": split.train.shape[0],
            "valid_clips": split.valid.shape[0], "frames": train.frames,
            "best_epoch": best["epoch"], "valid_accuracy": best["valid_accuracy"],
            "history": history, "encode_seconds": round(encode_seconds, 1),
            "train_seconds": round(time.perf_counter() - t0 - encode_seconds, 1),
            "parameters": sum(q.numel() for q in net.parameters()), "params": asdict(p),
        }
        return model

    def _train_head(self, head: PamtHead, train: CachedViews, valid: CachedViews,
                    gen: torch.Generator, ctx: Context, what: str) -> list[dict[str, float]]:
        raise NotImplementedError  # pamt only


class Pamt(PamtControl):
    """Frozen encoder -> PAMT head (InfoNCE on cached clean/perturbed frames, then frozen) ->
    pooled PAMT features -> task head."""

    version = "1"
    Params = PamtParams
    uses_head = True

    def _head(self, encoder: Any) -> PamtHead:
        p = self.params
        param_dim = vector_size(p.masking_model(encoder.sample_rate))
        return PamtHead(p.head_config(encoder.dim, param_dim))

    def _train_head(self, head: PamtHead, train: CachedViews, valid: CachedViews,
                    gen: torch.Generator, ctx: Context, what: str) -> list[dict[str, float]]:
        p = self.params
        steps = p.head_epochs * math.ceil(train.clean.shape[0] / p.head_batch_size)
        with ctx.progress(f"pamt: PAMT head for {what}", total=steps) as bar:
            def report(row: dict[str, float]) -> None:
                bar.update(description=f"pamt: PAMT head for {what}: epoch {row['epoch']}/"
                                       f"{p.head_epochs}, InfoNCE {row['loss']:.3f}, valid "
                                       f"{row['valid_loss']:.3f}")

            return train_head(head, train, p.train_config(), gen, valid=valid,
                              on_step=bar.advance, on_epoch=report)


# -- data -----------------------------------------------------------------------------------------


@dataclass
class _Split:
    """Windows at the model's input length: ``train[N, W]`` with labels or work indices
    ``train_y[N]``; ``valid[M, W]``: for classification clips with labels ``valid_y``; for
    retrieval the references (``valid_y`` their works) then the queries (``query_y``)."""

    train: torch.Tensor
    train_y: torch.Tensor
    valid: torch.Tensor
    valid_y: torch.Tensor
    query_y: torch.Tensor | None = None
    n_works: int = 0


def _split(name: str, base: TargetModel, data: Dataset, p: PamtControlParams,
           gen: torch.Generator) -> _Split:
    """The cell's train and valid data in the model's terms (advtrain's task classes: labels
    mapped by name; retrieval works with 2+ training versions, valid queries and references),
    seeded subsets of ``train_clips`` / ``valid_clips``, cropped or padded to the window."""
    window = base.input_samples
    try:
        task = (_Retrieval(data) if base.task == "retrieval"
                else _Classification(base, data))
    except ValueError as err:
        raise ValueError(str(err).replace("advtrain:", f"{name}:")) from err
    if isinstance(task, _Classification):
        x, y = _subset(task.x, task.y, p.train_clips, gen)
        xv, yv = _subset(task.xv, task.yv, p.valid_clips, gen)
        return _Split(_crop(x, window, gen), y, _crop(xv, window, gen), yv)
    clips, works = [], []
    for i, w in enumerate(task.works):
        clips.append(task.audio[w])
        works += [i] * task.audio[w].shape[0]
    x, y = torch.cat(clips), torch.tensor(works)
    if p.train_clips:  # whole works, so every kept work keeps its versions
        keep = torch.randperm(len(task.works), generator=gen)
        rows = torch.isin(y, keep[: max(2, p.train_clips // 2)])
        x, y = x[rows], torch.unique(y[rows], return_inverse=True)[1]
    xq, yq = _subset(task.xv, task.yv, p.valid_clips, gen)
    valid = torch.cat([_crop(task.refs, window, gen), _crop(xq, window, gen)])
    return _Split(_crop(x, window, gen), y, valid, task.ref_works, yq, task.n_works)


def _subset(x: torch.Tensor, y: torch.Tensor, count: int, gen: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    if not count or count >= len(y):
        return x, y
    pick = torch.randperm(len(y), generator=gen)[:count].sort().values
    return x[pick], y[pick]


def _crop(x: torch.Tensor, window: int, gen: torch.Generator) -> torch.Tensor:
    """``[N, T]`` -> ``[N, window]``: a seeded random window of longer clips, shorter ones
    zero-padded at the end (as the harness pads them)."""
    if x.shape[1] <= window:
        return F.pad(x, (0, window - x.shape[1]))
    starts = torch.randint(0, x.shape[1] - window + 1, (x.shape[0],), generator=gen)
    return torch.stack([c[s : s + window] for c, s in zip(x, starts.tolist(), strict=True)])


@torch.no_grad()
def _pooled(net: EncoderTaskNet, views: CachedViews, with_views: bool,
            batch: int = 64) -> torch.Tensor:
    """``[N, V', D]`` pooled features (view 0 clean, then the perturbed views if
    ``with_views``) through the frozen part of ``net``."""
    device = next(net.parameters()).device
    net.eval()
    sets = [views.clean[:, None]] + ([views.perturbed] if with_views else [])
    frames = torch.cat(sets, 1)  # [N, V', F, E]
    n, v = frames.shape[:2]
    flat = frames.flatten(0, 1)
    out = torch.cat([net.features(flat[i : i + batch].to(device, torch.float32))
                     for i in range(0, flat.shape[0], batch)])
    return out.unflatten(0, (n, v))


# -- the task head --------------------------------------------------------------------------------


def _train_task(net: EncoderTaskNet, split: _Split, feats: torch.Tensor,
                valid: torch.Tensor, p: PamtControlParams, gen: torch.Generator,
                ctx: Context, label: str) -> list[dict[str, Any]]:
    """Train ``net.task`` on pooled features ``feats[N, V', D]`` (AdamW, cosine decay); per
    epoch the train loss and the valid clean accuracy, with the state to select on."""
    device = next(net.parameters()).device
    retrieval = split.query_y is not None
    for q in net.parameters():
        q.requires_grad_(False)
    params = list(net.task.parameters())
    for q in params:
        q.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=p.task_lr, weight_decay=p.weight_decay)
    batches = _epoch_batches(split, p, retrieval)
    total = p.task_epochs * batches
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total)))
    score = _retrieval_accuracy if retrieval else _classification_accuracy
    history: list[dict[str, Any]] = []
    with ctx.progress(label, total=total) as bar:
        for epoch in range(1, p.task_epochs + 1):
            net.task.train()
            losses, seen = 0.0, 0
            for loss, count in _task_steps(net, split, feats, p, gen, device, retrieval):
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses += float(loss.detach()) * count
                seen += count
                bar.advance()
            net.task.eval()
            with torch.no_grad():
                accuracy = score(net, split, valid.to(device))
            history.append({"epoch": epoch, "loss": round(losses / max(1, seen), 5),
                            "valid_accuracy": round(accuracy, 4),
                            "state": {k: t.detach().clone()
                                      for k, t in net.state_dict().items()}})
            bar.update(description=f"{label}: epoch {epoch}/{p.task_epochs}, loss "
                                   f"{history[-1]['loss']:.3f}, valid accuracy "
                                   f"{100 * accuracy:.1f}%")
            if len(history) > 1:  # keep only the best state and the last one
                best = max(history[:-1], key=lambda r: (r["valid_accuracy"], -r["epoch"]))
                for row in history[:-1]:
                    if row is not best:
                        row.pop("state", None)
    for q in params:
        q.requires_grad_(False)
    return history


def _epoch_batches(split: _Split, p: PamtControlParams, retrieval: bool) -> int:
    if retrieval:
        works = int(split.train_y.max()) + 1
        return max(1, works // min(p.task_batch_size, works))
    return math.ceil(split.train_y.shape[0] / p.task_batch_size)


def _task_steps(net: EncoderTaskNet, split: _Split, feats: torch.Tensor, p: PamtControlParams,
                gen: torch.Generator, device: torch.device, retrieval: bool
                ) -> Any:
    """Yields ``(loss, count)`` per step of one epoch."""
    n, v = feats.shape[:2]
    if not retrieval:
        order = torch.randperm(n, generator=gen)
        for b in range(_epoch_batches(split, p, False)):
            idx = order[b * p.task_batch_size : (b + 1) * p.task_batch_size]
            view = torch.randint(0, v, (len(idx),), generator=gen)
            x = feats[idx, view].to(device)
            y = split.train_y[idx].to(device)
            yield F.cross_entropy(net.task(x), y), len(idx)
        return
    by_work = [torch.nonzero(split.train_y == w).flatten()
               for w in range(int(split.train_y.max()) + 1)]
    size = min(p.task_batch_size, len(by_work))
    order = torch.randperm(len(by_work), generator=gen)
    for b in range(_epoch_batches(split, p, True)):
        queries, refs = [], []
        for w in order[b * size : (b + 1) * size].tolist():
            pick = by_work[w][torch.randperm(len(by_work[w]), generator=gen)[:2]]
            view = torch.randint(0, v, (2,), generator=gen)
            queries.append(feats[pick[0], view[0]])
            refs.append(feats[pick[1], view[1]])
        e_q = F.normalize(net.task(torch.stack(queries).to(device)), dim=-1)
        e_r = F.normalize(net.task(torch.stack(refs).to(device)), dim=-1)
        y = torch.arange(len(queries), device=device)
        yield _task_loss(e_q @ e_r.T / p.temperature, e_q, e_r, y, p), len(queries)


def _classification_accuracy(net: EncoderTaskNet, split: _Split, valid: torch.Tensor) -> float:
    pred = net.task(valid).argmax(-1).cpu()
    return float((pred == split.valid_y).float().mean())


def _retrieval_accuracy(net: EncoderTaskNet, split: _Split, valid: torch.Tensor) -> float:
    """Top-1 work of each valid query: its most similar reference's work (as the harness
    scores retrieval)."""
    emb = F.normalize(net.task(valid), dim=-1).cpu()
    r = split.valid_y.shape[0]
    sims = emb[r:] @ emb[:r].T
    assert split.query_y is not None
    return float((split.valid_y[sims.argmax(-1)] == split.query_y).float().mean())

