"""``advtrain``: adversarial fine-tuning of a base model on the waveform (a training defense).

- ``method = "pgd"``: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models
  Resistant to Adversarial Attacks", ICLR 2018 -- minimise the loss at the L-inf PGD iterate
  (uniform random start, ``steps`` signed steps of ``step_size``, default 2.5 eps / steps).
- ``method = "trades"``: Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan, "Theoretically Principled
  Trade-off between Robustness and Accuracy", ICML 2019 -- clean loss + ``beta`` * KL(clean
  prediction || adversarial prediction), the inner maximisation on that KL from a small
  Gaussian start (std ``trades_init`` * eps: Zhang et al.'s 0.001 at eps = 0.031).
- ``method = "fgsm-rs"``: Wong, Rice, Kolter, "Fast is better than free: Revisiting
  adversarial training", ICLR 2020 -- one FGSM step of 1.25 eps from a uniform random start.
  Known to overfit catastrophically (PGD accuracy collapses while FGSM accuracy climbs), so the
  PGD accuracy on the valid split is measured after every epoch and kept in the training
  summary's ``history``; ``catastrophic_overfitting`` says whether it ever fell more than
  ``overfit_drop`` below its best so far.

Model selection on the valid split by robust accuracy under PGD (``eval_steps`` steps, the
early stopping of Rice, Wong, Kolter, "Overfitting in adversarially robust deep learning", ICML
2020), ``select`` to change it. Training data: the ``train`` split of the cell's dataset.

Tasks:

- classification: cross-entropy over the model's labels (the dataset's labels mapped onto the
  model's by name, as the harness scores them);
- retrieval (cover-net): each batch holds ``batch_size`` training works (those with 2+ versions
  in the train split), one version of each as the query, another as its reference (an in-batch
  gallery, as in contrastive training: the train split's own references, re-embedded by the
  current weights every step, without embedding every reference of the split each step). The
  scores are the query's cosine similarities to the works divided by ``temperature`` -- the
  benchmark's Victim loss (``RETRIEVAL_TEMPERATURE``), so the training attacker maximises what
  the evaluation attacker maximises. ``retrieval_loss = "ce"``: cross-entropy over those
  scores (the adversarial query must stay nearest its own work's clean reference);
  ``"triplet"``: batch-hard triplet loss on cosine distance (Hermans et al. 2017) over the
  adversarial queries and clean references, as cover-net was trained. The inner maximisation
  is always on the scores' cross-entropy (TRADES: their KL).

Choices the papers leave open for us, each a parameter: the attack on BatchNorm running
statistics (``attack_in_eval_mode``: adversarial examples crafted in eval mode, the update in
train mode), the optimiser (AdamW, ``lr``, ``weight_decay``) and ``schedule``, no data
augmentation (the base's own augmentations are model-specific), fine-tuning from the base's
weights (never from scratch).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from musicbench.api import (
    Context,
    Dataset,
    TargetModel,
    TrainingDefense,
    check_number,
    check_seed,
)
from musicbench.victim import RETRIEVAL_TEMPERATURE
from musicbench.windows import score_windows
from musicbench_plugins._limits import (
    MAX_LEARNING_RATE,
    MAX_LINF_EPS,
    MAX_SIZE,
    MAX_STEPS,
    MAX_WEIGHT,
)


@dataclass(frozen=True)
class AdvTrainParams:
    """Every field changes the cache key of the defended model."""

    method: Literal["pgd", "trades", "fgsm-rs"] = "pgd"
    eps: float = 0.002  # L-inf radius on [-1, 1] (docs/architecture.md, 'Threat models')
    steps: int = 7  # inner PGD / TRADES steps (fgsm-rs: one step, whatever this says)
    step_size: float | None = None  # None: 2.5 eps / steps (pgd, trades), 1.25 eps (fgsm-rs)
    epochs: int = 5
    lr: float = 3e-4
    weight_decay: float = 1e-4
    schedule: Literal["cosine", "constant"] = "cosine"
    batch_size: int = 32  # clips (classification) or works (retrieval) per step
    beta: float = 6.0  # TRADES weight of the KL term (Zhang et al.'s 6 for CIFAR-10)
    trades_init: float = 0.032  # TRADES start: Gaussian with std trades_init * eps
    eval_steps: int = 10  # PGD steps of the per-epoch robust validation accuracy
    eval_clips: int = 0  # valid clips (queries) validated on each epoch; 0: the whole split
    select: Literal["robust", "clean", "last"] = "robust"
    attack_in_eval_mode: bool = True
    retrieval_loss: Literal["ce", "triplet"] = "ce"
    temperature: float = RETRIEVAL_TEMPERATURE
    triplet_margin: float = 0.3
    overfit_drop: float = 0.2  # flag: valid PGD accuracy this far below its best so far
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in ("pgd", "trades", "fgsm-rs"):
            raise ValueError(f"method must be pgd, trades or fgsm-rs, got '{self.method}'")
        check_number("eps", self.eps, above=0, at_most=MAX_LINF_EPS)
        for name in ("steps", "epochs", "eval_steps"):
            check_number(name, getattr(self, name), at_least=1, at_most=MAX_STEPS, integer=True)
        if self.step_size is not None:
            check_number("step_size", self.step_size, above=0, at_most=MAX_LINF_EPS)
        check_number("lr", self.lr, above=0, at_most=MAX_LEARNING_RATE)
        check_number("weight_decay", self.weight_decay, at_least=0, at_most=1)
        check_number("batch_size", self.batch_size, at_least=2, at_most=MAX_SIZE, integer=True)
        check_number("beta", self.beta, at_least=0, at_most=MAX_WEIGHT)
        check_number("trades_init", self.trades_init, at_least=0, at_most=1)
        check_number("eval_clips", self.eval_clips, at_least=0, at_most=MAX_SIZE, integer=True)
        check_number("temperature", self.temperature, above=0, at_most=MAX_WEIGHT)
        check_number("triplet_margin", self.triplet_margin, at_least=0, at_most=MAX_WEIGHT)
        check_number("overfit_drop", self.overfit_drop, above=0, at_most=1)
        for name, allowed in (("schedule", ("cosine", "constant")),
                              ("select", ("robust", "clean", "last")),
                              ("retrieval_loss", ("ce", "triplet"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got "
                                 f"'{getattr(self, name)}'")
        check_seed("seed", self.seed)

    @property
    def train_step(self) -> float:
        """The inner attack's step: ``step_size``, or the method's default."""
        if self.step_size is not None:
            return self.step_size
        return 1.25 * self.eps if self.method == "fgsm-rs" else 2.5 * self.eps / self.steps


class AdvTrain(TrainingDefense):
    """PGD / TRADES / FGSM-RS adversarial fine-tuning of the base model on the waveform."""

    version = "1"
    Params = AdvTrainParams

    def fit(self, base: TargetModel, data: Dataset, *, ctx: Context) -> TargetModel:
        """Fine-tune a copy of ``base`` on ``data``'s train split, select on valid, return it
        with ``training_summary`` (per-epoch loss, FGSM/PGD training accuracy, valid clean and
        PGD accuracy)."""
        p = self.params
        device = ctx.device
        if data.sample_rate != base.sample_rate or data.task != base.task:
            raise ValueError(f"advtrain: dataset '{data.name}' ({data.task}, {data.sample_rate}"
                             f" Hz) cannot train '{base.name}' ({base.task}, "
                             f"{base.sample_rate} Hz)")
        task = _Task.make(base, data, p)
        model = self.build(base, data, ctx=ctx)
        net = model.module()
        net.requires_grad_(True)
        scorer = _Scorer(model, p.temperature)
        opt = torch.optim.AdamW(net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        batches = task.batches_per_epoch(p.batch_size)
        total = p.epochs * batches
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, (lambda i: 0.5 * (1 + math.cos(math.pi * i / total))) if p.schedule == "cosine"
            else (lambda i: 1.0))
        gen = torch.Generator().manual_seed(p.seed)
        label = f"advtrain ({p.method}, eps {p.eps:g}) of {base.name} on {data.name}"
        t0 = time.perf_counter()
        history = [{"epoch": 0, **task.validate(scorer, p, device)}]  # the base itself
        best_key, best_state, best_epoch = -math.inf, None, 0
        with ctx.progress(label, total=total) as bar:
            for epoch in range(1, p.epochs + 1):
                losses, correct, seen = 0.0, 0, 0
                for x, y, refs in task.epoch(p.batch_size, gen):
                    x, y = x.to(device), y.to(device)
                    refs = refs.to(device) if refs is not None else None
                    net.train(not p.attack_in_eval_mode)
                    loss, right = _step_loss(scorer, x, y, refs, p, gen, net)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    losses += float(loss.detach()) * len(y)
                    correct += right
                    seen += len(y)
                    bar.advance()
                net.eval()
                row = {"epoch": epoch, "loss": round(losses / max(1, seen), 5),
                       "train_adv_accuracy": round(correct / max(1, seen), 4),
                       **task.validate(scorer, p, device)}
                history.append(row)
                bar.update(description=(
                    f"{label}: epoch {epoch}/{p.epochs}, loss {row['loss']:.3f}, valid clean "
                    f"{100 * row['valid_clean']:.1f}%, PGD-{p.eval_steps} "
                    f"{100 * row['valid_pgd']:.1f}%"))
                key = {"robust": row["valid_pgd"], "clean": row["valid_clean"],
                       "last": epoch}[p.select]
                if key > best_key:
                    best_key, best_epoch = key, epoch
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        assert best_state is not None
        net.load_state_dict(best_state)
        net.eval()
        best = history[best_epoch]
        model.training_summary = {  # type: ignore[attr-defined]
            "dataset": data.name, "best_epoch": best_epoch,
            "valid_clean_accuracy": best["valid_clean"],
            "valid_robust_accuracy": best["valid_pgd"],
            "base_valid_clean_accuracy": history[0]["valid_clean"],
            "base_valid_robust_accuracy": history[0]["valid_pgd"],
            "catastrophic_overfitting": _overfitted(history, p.overfit_drop),
            "history": history, "train_seconds": round(time.perf_counter() - t0, 1),
            "params": asdict(p),
        }
        return model


def _overfitted(history: list[dict[str, Any]], drop: float) -> bool:
    """True when the valid PGD accuracy of an epoch fell more than ``drop`` below the best of
    the epochs before it (the collapse of Wong et al. 2020's catastrophic overfitting)."""
    best = -math.inf
    for row in history[1:]:
        if row["valid_pgd"] < best - drop:
            return True
        best = max(best, row["valid_pgd"])
    return False


class _Scorer:
    """The model's scores as the harness scores them: logits over windows (classification),
    or similarities to references over ``temperature`` (retrieval)."""

    def __init__(self, model: TargetModel, temperature: float):
        self.model = model
        self.temperature = temperature
        self.window = model.input_samples

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        return F.normalize(score_windows(self.model.embed, audio, self.window), dim=-1)

    def logits(self, audio: torch.Tensor) -> torch.Tensor:
        return score_windows(self.model.forward, audio, self.window)

    def scores(self, audio: torch.Tensor, refs: torch.Tensor | None,
               ref_works: torch.Tensor | None = None, n_works: int = 0) -> torch.Tensor:
        """``[B, K]``: logits, or work similarities / temperature against ``refs[R, D]``
        (each reference its own work unless ``ref_works`` says otherwise)."""
        if refs is None:
            return self.logits(audio)
        sims = self.embed(audio) @ refs.T
        if ref_works is not None:
            init = torch.full((sims.shape[0], n_works), -math.inf, device=sims.device,
                              dtype=sims.dtype)
            sims = init.scatter_reduce(1, ref_works.expand(sims.shape[0], -1), sims,
                                       reduce="amax", include_self=True)
        return sims / self.temperature


def _step_loss(scorer: _Scorer, x: torch.Tensor, y: torch.Tensor, ref_audio: torch.Tensor | None,
               p: AdvTrainParams, gen: torch.Generator,
               net: torch.nn.Module) -> tuple[torch.Tensor, int]:
    """The loss of one training step (``net`` in train mode for the update) and how many
    adversarial examples the model still got right."""
    retrieval = ref_audio is not None
    with torch.no_grad():
        refs_fixed = scorer.embed(ref_audio) if retrieval else None
    if p.method == "trades":
        with torch.no_grad():
            p_clean = F.softmax(scorer.scores(x, refs_fixed), -1)

        def inner(xa: torch.Tensor) -> torch.Tensor:
            return F.kl_div(F.log_softmax(scorer.scores(xa, refs_fixed), -1), p_clean,
                            reduction="none").sum(-1)

        start = p.trades_init * p.eps * torch.randn(x.shape, generator=gen).to(x.device)
        x_adv = _pgd(inner, x, start, p.eps, p.steps, p.train_step)
    else:
        def inner(xa: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(scorer.scores(xa, refs_fixed), y, reduction="none")

        start = p.eps * (2 * torch.rand(x.shape, generator=gen) - 1).to(x.device)
        steps = 1 if p.method == "fgsm-rs" else p.steps
        x_adv = _pgd(inner, x, start, p.eps, steps, p.train_step)
    net.train()
    if not retrieval:
        if p.method == "trades":
            logits = scorer.logits(torch.cat([x, x_adv]))
            clean, adv = logits[: len(x)], logits[len(x):]
            loss = F.cross_entropy(clean, y) + p.beta * _kl(clean, adv)
        else:
            adv = scorer.logits(x_adv)
            loss = F.cross_entropy(adv, y)
        return loss, int((adv.argmax(-1) == y).sum())
    assert ref_audio is not None
    b = len(x)
    parts = [x_adv, ref_audio] + ([x] if p.method == "trades" else [])
    emb = scorer.embed(torch.cat(parts))
    e_adv, e_ref = emb[:b], emb[b : 2 * b]
    adv = e_adv @ e_ref.T / p.temperature
    if p.method == "trades":
        e_clean = emb[2 * b:]
        clean = e_clean @ e_ref.T / p.temperature
        loss = _task_loss(clean, e_clean, e_ref, y, p) + p.beta * _kl(clean, adv)
    else:
        loss = _task_loss(adv, e_adv, e_ref, y, p)
    return loss, int((adv.argmax(-1) == y).sum())


def _task_loss(scores: torch.Tensor, e_query: torch.Tensor, e_ref: torch.Tensor,
               y: torch.Tensor, p: AdvTrainParams) -> torch.Tensor:
    """Retrieval: cross-entropy over the in-batch works, or the batch-hard triplet loss."""
    if p.retrieval_loss == "ce":
        return F.cross_entropy(scores, y)
    emb = torch.cat([e_query, e_ref])
    works = torch.cat([y, y])
    dist = 1 - emb @ emb.T
    same = works[:, None] == works[None]
    eye = torch.eye(len(works), dtype=torch.bool, device=emb.device)
    hardest_pos = dist.masked_fill(~same | eye, -math.inf).amax(1)
    hardest_neg = dist.masked_fill(same, math.inf).amin(1)
    return F.relu(hardest_pos - hardest_neg + p.triplet_margin).mean()


def _kl(clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """KL(softmax(clean) || softmax(adv)), mean over the batch (TRADES's robust term)."""
    return F.kl_div(F.log_softmax(adv, -1), F.softmax(clean, -1), reduction="batchmean")


def _pgd(loss_fn: Any, x: torch.Tensor, start: torch.Tensor, eps: float, steps: int,
         step: float) -> torch.Tensor:
    """L-inf ascent on ``loss_fn(x + delta) -> [B]`` from ``start``: ``steps`` signed steps,
    each projected onto the eps-box and [-1, 1]. Returns ``x_adv[B, T]``, detached."""
    delta = ((x + start.clamp(-eps, eps)).clamp(-1, 1) - x).detach()
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(loss_fn(x + delta).sum(), delta)
        delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
        delta = ((x + delta).clamp(-1, 1) - x).detach()
    return (x + delta).detach()


@torch.no_grad()
def _robust(scorer: _Scorer, x: torch.Tensor, y: torch.Tensor, refs: Any,
            p: AdvTrainParams, gen: torch.Generator) -> tuple[int, int]:
    """(clean-correct, PGD-robust) counts of ``x[B, T]``: robust = right at the clean clip
    and at every PGD iterate (``eval_steps`` steps of 2.5 eps / eval_steps, random start)."""
    def score(xa: torch.Tensor) -> torch.Tensor:
        return scorer.scores(xa, *refs) if refs is not None else scorer.logits(xa)

    clean_right = score(x).argmax(-1) == y
    right = clean_right.clone()
    step = 2.5 * p.eps / p.eval_steps
    delta = p.eps * (2 * torch.rand(x.shape, generator=gen) - 1).to(x.device)
    delta = (x + delta).clamp(-1, 1) - x
    for _ in range(p.eval_steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            s = score(x + delta)
            (grad,) = torch.autograd.grad(F.cross_entropy(s, y, reduction="sum"), delta)
        right &= s.detach().argmax(-1) == y
        delta = (delta.detach() + step * grad.sign()).clamp(-p.eps, p.eps)
        delta = (x + delta).clamp(-1, 1) - x
    right &= score(x + delta).argmax(-1) == y
    return int(clean_right.sum()), int(right.sum())


def _validate(scorer: _Scorer, xv: torch.Tensor, yv: torch.Tensor, refs: Any,
              p: AdvTrainParams, device: torch.device) -> dict[str, float]:
    """Clean and PGD accuracy on the first ``eval_clips`` valid clips (all for 0), from the
    same random starts every epoch, so epochs compare."""
    n = len(yv) if p.eval_clips == 0 else min(p.eval_clips, len(yv))
    gen = torch.Generator().manual_seed(p.seed + 1)
    clean = robust = 0
    for i in range(0, n, p.batch_size):
        rows = slice(i, min(n, i + p.batch_size))
        c, r = _robust(scorer, xv[rows].to(device), yv[rows].to(device), refs, p, gen)
        clean, robust = clean + c, robust + r
    return {"valid_clean": round(clean / n, 4), "valid_pgd": round(robust / n, 4)}


def _stack(examples: Any, what: str) -> torch.Tensor:
    lengths = {e.audio.shape[-1] for e in examples}
    if len(lengths) > 1:
        raise ValueError(f"advtrain: clips of {what} must share a length; got "
                         f"{sorted(lengths)[:5]}")
    return torch.stack([e.audio for e in examples]).float()


class _Task:
    """The training and validation data of one task, in the model's terms."""

    @staticmethod
    def make(base: TargetModel, data: Dataset, p: AdvTrainParams) -> _Task:
        return _Retrieval(data) if base.task == "retrieval" else _Classification(base, data)

    def batches_per_epoch(self, batch_size: int) -> int:
        raise NotImplementedError

    def epoch(self, batch_size: int, gen: torch.Generator) -> Any:
        raise NotImplementedError

    def validate(self, scorer: _Scorer, p: AdvTrainParams,
                 device: torch.device) -> dict[str, float]:
        raise NotImplementedError


class _Classification(_Task):
    def __init__(self, base: TargetModel, data: Dataset):
        labels = list(base.labels)
        missing = [lab for lab in data.labels if lab not in labels]
        if missing:
            raise ValueError(f"advtrain: dataset '{data.name}' has labels {missing[:5]} that "
                             f"model '{base.name}' does not know")
        index = [labels.index(lab) for lab in data.labels]
        train, valid = list(data.examples("train")), list(data.examples("valid"))
        if not train or not valid:
            raise ValueError(f"advtrain: dataset '{data.name}' needs train and valid clips "
                             f"(has {len(train)} and {len(valid)})")
        self.x = _stack(train, f"'{data.name}' train")
        self.y = torch.tensor([index[e.label] for e in train])
        self.xv = _stack(valid, f"'{data.name}' valid")
        self.yv = torch.tensor([index[e.label] for e in valid])

    def batches_per_epoch(self, batch_size: int) -> int:
        return (len(self.y) + batch_size - 1) // batch_size

    def epoch(self, batch_size: int, gen: torch.Generator) -> Any:
        order = torch.randperm(len(self.y), generator=gen)
        for b in range(self.batches_per_epoch(batch_size)):
            idx = order[b * batch_size : (b + 1) * batch_size]
            yield self.x[idx], self.y[idx], None

    def validate(self, scorer: _Scorer, p: AdvTrainParams,
                 device: torch.device) -> dict[str, float]:
        return _validate(scorer, self.xv, self.yv, None, p, device)


class _Retrieval(_Task):
    def __init__(self, data: Dataset):
        by_work: dict[str, list[torch.Tensor]] = defaultdict(list)
        for e in data.examples("train"):
            by_work[e.work_id].append(e.audio)
        self.works = sorted(w for w, v in by_work.items() if len(v) >= 2)
        if len(self.works) < 2:
            raise ValueError(f"advtrain: dataset '{data.name}' has {len(self.works)} training "
                             "works with 2+ versions; retrieval training needs 2 or more")
        lengths = {a.shape[-1] for w in self.works for a in by_work[w]}
        if len(lengths) > 1:
            raise ValueError(f"advtrain: clips of '{data.name}' train must share a length")
        self.audio = {w: torch.stack(by_work[w]).float() for w in self.works}
        refs = list(data.references("valid"))
        work_index = {w: i for i, w in enumerate(sorted({e.work_id for e in refs}))}
        queries = [q for q in data.queries("valid") if q.work_id in work_index]
        if not refs or not queries:
            raise ValueError(f"advtrain: dataset '{data.name}' needs valid queries and "
                             "references to select on")
        self.refs = _stack(refs, f"'{data.name}' valid references")
        self.ref_works = torch.tensor([work_index[e.work_id] for e in refs])
        self.n_works = len(work_index)
        self.xv = _stack(queries, f"'{data.name}' valid queries")
        self.yv = torch.tensor([work_index[q.work_id] for q in queries])

    def batches_per_epoch(self, batch_size: int) -> int:
        return max(1, len(self.works) // batch_size)

    def epoch(self, batch_size: int, gen: torch.Generator) -> Any:
        order = torch.randperm(len(self.works), generator=gen)
        size = min(batch_size, len(self.works))
        for b in range(self.batches_per_epoch(batch_size)):
            queries, refs = [], []
            for i in order[b * size : (b + 1) * size].tolist():
                versions = self.audio[self.works[i]]
                pick = torch.randperm(len(versions), generator=gen)[:2]
                queries.append(versions[pick[0]])
                refs.append(versions[pick[1]])
            yield torch.stack(queries), torch.arange(len(queries)), torch.stack(refs)

    def validate(self, scorer: _Scorer, p: AdvTrainParams,
                 device: torch.device) -> dict[str, float]:
        with torch.no_grad():
            emb = torch.cat([scorer.embed(self.refs[i : i + p.batch_size].to(device))
                             for i in range(0, len(self.refs), p.batch_size)])
        refs = (emb, self.ref_works.to(device)[None], self.n_works)
        return _validate(scorer, self.xv, self.yv, refs, p, device)
