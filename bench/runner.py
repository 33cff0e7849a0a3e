"""Run one cell: clean scoring, the attack on clean-correct clips, per-clip and cell metrics.

``run_cell(spec, workspace) -> CellRecord`` depends only on the typed :class:`CellSpec`, the
plugins and the cache, so the local and distributed executors produce the same records.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from musicbench.cells import CellInfo, CellSpec, ComponentRef
from musicbench.errors import MusicbenchError
from musicbench.interfaces import Attack, CellAudio, Example, Preprocessor, TargetModel
from musicbench.memory import PeakMemory
from musicbench.metrics import bootstrap_ci, classification_summary
from musicbench.store import CellRecord, MetricValue, SampleRecord
from musicbench.victim import ReferenceSet, Scorer, Victim, judge, margin_from_logits
from musicbench.workspace import Workspace


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def select_examples(examples: list[Example] | Any, samples: int, seed: int) -> list[Example]:
    """``samples`` clips of a split drawn with ``seed`` (the same for every cell of a run),
    kept in dataset order. 0 (or more than the split holds) means the whole split."""
    n = len(examples)
    if samples == 0 or samples >= n:
        return list(examples)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(n, generator=g)[: min(samples, n)].sort().values.tolist()
    return [examples[i] for i in pick]


def run_cell(spec: CellSpec, ws: Workspace, environment: dict[str, Any]) -> CellRecord:
    """Evaluate one cell; any exception becomes a ``failed`` record with its traceback."""
    started, t0 = now(), time.perf_counter()
    record = CellRecord(spec=spec, status="ok", started=started, finished=started, seconds=0.0,
                        environment=environment)
    load_start = load_average()
    try:
        with PeakMemory(ws.device) as mem:
            _evaluate(spec, ws, record)
        record.peak_memory_mb = round(mem.peak_mb, 1)
    except Exception as exc:  # a failing plugin costs its own cell, nothing else
        record.status = "failed"
        record.error = f"{type(exc).__name__}: {exc}"
        record.traceback = traceback.format_exc()
        record.samples, record.metrics, record.audio_data = [], {}, {}
    record.finished = now()
    record.seconds = round(time.perf_counter() - t0, 3)
    if load_start is not None:
        # Wall-time columns mean little without the machine's load beside them.
        record.info.load_average = [load_start, load_average()]
        record.info.cpus = os.cpu_count()
    return record


def load_average() -> float | None:
    """The 1-minute load average, where the OS has one (None on Windows)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _CellData:
    """The clips of a cell and what is right for each: ``targets[N]`` index the victim's
    scores (labels, or works for retrieval)."""

    examples: list[Example]
    targets: torch.Tensor
    references: ReferenceSet | None = None
    pseudo_labels: bool = False


@dataclass
class _Collected:
    """What the batches of a cell add up to."""

    samples: list[SampleRecord] = field(default_factory=list)
    clean: list[torch.Tensor] = field(default_factory=list)  # [b, T] per batch, CPU
    adv: list[torch.Tensor] = field(default_factory=list)
    attacked: list[torch.Tensor] = field(default_factory=list)
    success: list[torch.Tensor] = field(default_factory=list)
    targets: list[torch.Tensor] = field(default_factory=list)
    attack_seconds: float = 0.0


def _evaluate(spec: CellSpec, ws: Workspace, record: CellRecord) -> None:
    device = ws.device
    dataset = ws.dataset(spec.dataset.name, spec.dataset.params)
    _same("dataset", spec.dataset, dataset.fingerprint(), spec.dataset.fingerprint)
    model: TargetModel = ws.model(spec.model.name, spec.model.params)
    _same("model", spec.model, model.weights_digest(), spec.model.weights)
    defense = ws.make("defense", spec.defense.name, spec.defense.params)
    preprocessor: Preprocessor | None = None
    if defense.kind == "training":
        model = ws.defended_model(defense, model, dataset)
    else:
        preprocessor = defense
    if dataset.sample_rate != model.sample_rate:
        raise MusicbenchError(
            f"dataset '{dataset.name}' is at {dataset.sample_rate} Hz but model "
            f"'{model.name}' expects {model.sample_rate} Hz"
        )
    attack: Attack = ws.make("attack", spec.attack.name, spec.attack.params)
    attack.prepare(ws.ctx)
    _same("attack", spec.attack, attack.weights_digest(), spec.attack.weights)
    black_box = attack.threat == "black-box"
    common = dict(
        defense=preprocessor,
        eot_samples=getattr(attack.params, "eot_samples", 1),
        generator=torch.Generator(device=device).manual_seed(spec.seed),
    )
    run = spec.run
    if model.task == "retrieval":
        data = _retrieval_data(dataset, model, common, device, run.samples, run.seed,
                               run.batch_size)
    else:
        data = _classification_data(dataset, model, run.samples, run.seed, run.pseudo_labels)
    victim = Victim(model, allow_gradients=not black_box,
                    budget=getattr(attack.params, "budget", None) if black_box else None,
                    references=data.references, **common)
    generator = torch.Generator(device=device).manual_seed(spec.seed)
    metrics = [ws.make("metric", name) for name in run.metrics]
    sample_metrics = [m for m in metrics if m.level == "sample"]
    set_metrics = [m for m in metrics if m.level == "set"]
    out = _Collected()
    label = " / ".join((spec.model.label, spec.attack.label))
    examples = data.examples
    with ws.ctx.progress(f"  clips: {label}", total=len(examples)) as bar:
        for start in range(0, len(examples), run.batch_size):
            batch = _Batch(examples[start : start + run.batch_size],
                           data.targets[start : start + run.batch_size], start)
            _run_batch(batch, victim, attack, generator, sample_metrics, dataset.sample_rate,
                       run.keep_audio, record, out, device, data.pseudo_labels)
            bar.advance(len(batch.examples))
    record.samples = out.samples
    record.attack_seconds = round(out.attack_seconds, 4)
    info = record.info
    record.metrics = _cell_metrics(out.samples, [m.name for m in sample_metrics],
                                   record.attack_seconds, data.pseudo_labels, info)
    cell_audio = CellAudio(
        dataset=dataset.name, dataset_fingerprint=dataset.fingerprint(), model=model.name,
        task=model.task, sample_rate=dataset.sample_rate, ids=[e.id for e in examples],
        clean=_cat(out.clean), adv=_cat(out.adv), attacked=_cat(out.attacked),
        success=_cat(out.success), targets=_cat(out.targets), fad_encoder=run.fad_encoder,
        model_network=model.network, references=data.references,
        embed=(lambda audio: judge(victim).embed(audio.to(device))) if data.references else None,
    )
    for metric in set_metrics:
        if not metric.applies(cell_audio):
            continue
        result = metric.compute(cell_audio, ws.ctx)
        for column, value in result.values.items():
            record.metrics[column] = MetricValue(value)
        info.set_metrics[metric.name] = {"n": result.n, "note": result.note,
                                         "encoder": result.encoder}
        info.flags += result.flags
    adaptive = [name for name, used in (("eot", victim.used_eot), ("bpda", victim.used_bpda))
                if used]
    info.task = model.task
    info.adaptive = "+".join(adaptive) if adaptive else "none"
    if data.pseudo_labels:
        info.flags.insert(0, "pseudo-label mode: y = the model's clean top-1")
    info.pseudo_labels = data.pseudo_labels
    info.labels = list(model.labels) if model.task == "classification" else []
    info.sample_rate = dataset.sample_rate
    info.device = str(device)
    info.higher_is_better = {m.name: bool(m.higher_is_better) for m in sample_metrics}
    for metric in set_metrics:
        info.higher_is_better.update(metric.columns)


def _same(kind: str, ref: ComponentRef, now_value: str | None, planned: str | None) -> None:
    """A component whose data or weights changed between planning and running would make the
    cell's key lie about what produced it."""
    if now_value != planned:
        what = "content" if kind == "dataset" else "weights"
        raise MusicbenchError(
            f"{kind} '{ref.name}' {what} changed since the run was planned "
            f"({str(now_value)[:12]} != {str(planned)[:12]}); rerun to plan again"
        )


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0)


def _classification_data(
    dataset: Any, model: TargetModel, samples: int, seed: int, pseudo_labels: bool
) -> _CellData:
    """Dataset labels mapped onto the model's labels by name; in pseudo-label mode (the model
    entry's explicit choice) the target is the model's clean top-1."""
    if dataset.task != "classification":
        raise MusicbenchError(f"model '{model.name}' classifies but dataset '{dataset.name}' "
                              f"is a {dataset.task} dataset")
    examples = select_examples(dataset.examples("test"), samples, seed)
    if pseudo_labels:
        return _CellData(examples, torch.full((len(examples),), -1, dtype=torch.long),
                         pseudo_labels=True)
    model_labels = list(model.labels)
    missing = [lab for lab in dataset.labels if lab not in model_labels]
    if missing:  # the planner checks this; a plugin whose labels changed since lands here
        raise MusicbenchError(f"dataset '{dataset.name}' labels {missing[:5]} are not labels "
                              f"of model '{model.name}'; set pseudo_labels = true on the model "
                              "to score it against its clean top-1")
    index = [model_labels.index(lab) for lab in dataset.labels]
    targets = torch.tensor([index[e.label] for e in examples], dtype=torch.long)
    return _CellData(examples, targets)


def _retrieval_data(
    dataset: Any,
    model: TargetModel,
    common: dict[str, Any],
    device: torch.device,
    samples: int,
    seed: int,
    batch_size: int,
) -> _CellData:
    """Queries drawn from the test split, every reference of the split embedded once."""
    if dataset.task != "retrieval":
        raise MusicbenchError(f"retrieval model '{model.name}' needs a retrieval dataset; "
                              f"'{dataset.name}' is {dataset.task}")
    refs = list(dataset.references("test"))
    queries = select_examples(dataset.queries("test"), samples, seed)
    works = sorted({e.work_id for e in refs})
    work_index = {w: i for i, w in enumerate(works)}
    missing = sorted({e.work_id for e in queries} - set(work_index))
    if missing:
        raise MusicbenchError(f"dataset '{dataset.name}': queries of works without a reference "
                              f"in the test split: {missing[:5]}")
    embedder = Scorer(model, defense=common["defense"], generator=common["generator"])
    emb = torch.cat([embedder.embed(_stack(refs[i : i + batch_size]).to(device))
                     for i in range(0, len(refs), batch_size)])
    ref_works = torch.tensor([work_index[e.work_id] for e in refs], device=device)
    targets = torch.tensor([work_index[e.work_id] for e in queries], dtype=torch.long)
    return _CellData(queries, targets, ReferenceSet(emb, ref_works, len(works)))


def _stack(examples: list[Example]) -> torch.Tensor:
    """``audio[B, T]``; clips of one dataset must share a length (Dataset contract)."""
    lengths = {e.audio.shape[-1] for e in examples}
    if len(lengths) > 1:
        raise MusicbenchError(f"clips of one dataset must have one length; got lengths "
                              f"{sorted(lengths)[:5]} (e.g. '{examples[0].id}')")
    return torch.stack([e.audio for e in examples])


@dataclass
class _Batch:
    examples: list[Example]
    targets: torch.Tensor
    start: int


def _run_batch(
    batch: _Batch,
    victim: Victim,
    attack: Attack,
    generator: torch.Generator,
    sample_metrics: list[Any],
    sample_rate: int,
    keep: int,
    record: CellRecord,
    out: _Collected,
    device: torch.device,
    pseudo_labels: bool,
) -> None:
    """Score one batch clean, attack its clean-correct clips, append their sample records."""
    n = len(batch.examples)
    x = _stack(batch.examples).to(device=device, dtype=torch.float32)
    scorer = judge(victim)
    scores = scorer.scores(x)
    clean_pred = scores.argmax(-1)
    y = clean_pred.clone() if pseudo_labels else batch.targets.to(device)
    correct = margin_from_logits(scores, y) > 0  # pseudo-labels: right unless tied
    idx = correct.nonzero().squeeze(1)
    adv_pred = clean_pred.clone()
    success = torch.zeros_like(correct)
    queries = torch.zeros(n, dtype=torch.long, device=device)
    steps = torch.zeros(n, dtype=torch.long, device=device)
    per_sample: dict[str, torch.Tensor] = {}
    adv_all = x.clone()
    if idx.numel():
        xa, ya = x[idx], y[idx]
        _sync(device)
        t = time.perf_counter()
        result = attack(victim, xa, ya, generator=generator)
        _sync(device)
        out.attack_seconds += time.perf_counter() - t
        adv_all[idx] = result.adv
        adv_pred[idx] = scorer.predict(result.adv)
        success[idx] = result.success
        queries[idx] = result.queries.to(device)
        steps[idx] = result.steps.to(device)
        for metric in sample_metrics:
            values = torch.full((n,), math.nan, dtype=torch.float64, device=device)
            values[idx] = metric.compute(xa, result.adv, sample_rate).to(
                device=device, dtype=torch.float64)
            per_sample[metric.name] = values
        for row in idx[result.success].tolist():
            if len(record.audio_data) < 2 * keep:
                sid = batch.examples[row].id
                record.audio_data[(sid, "clean")] = x[row].cpu().numpy()
                record.audio_data[(sid, "adv")] = adv_all[row].cpu().numpy()
    out.clean.append(x.cpu())
    out.adv.append(adv_all.cpu())
    out.attacked.append(correct.cpu())
    out.success.append(success.cpu())
    out.targets.append(y.cpu())
    cols = {k: v.cpu().tolist() for k, v in per_sample.items()}
    for i, ex in enumerate(batch.examples):
        out.samples.append(SampleRecord(
            sample_id=ex.id, position=batch.start + i, label=int(y[i]),
            clean_pred=int(clean_pred[i]), clean_correct=bool(correct[i]),
            attacked=bool(correct[i]), adv_pred=int(adv_pred[i]),
            success=bool(success[i]), queries=int(queries[i]), steps=int(steps[i]),
            metrics={k: float(v[i]) for k, v in cols.items()} if correct[i] else {},
        ))


def _cell_metrics(
    samples: list[SampleRecord], sample_metric_names: list[str], attack_seconds: float,
    pseudo_labels: bool, info: CellInfo,
) -> dict[str, MetricValue]:
    """Rates with exact intervals over the cell's clips; per-sample metrics averaged over the
    successful clips (``info.n_success`` of them), with a bootstrap interval of the mean."""
    correct = np.array([s.clean_correct for s in samples], dtype=bool)
    success = np.array([s.success for s in samples], dtype=bool)
    summary = classification_summary(correct, success)
    info.n, info.n_attacked, info.n_success = (summary["n"], summary["n_attacked"],
                                               summary["n_success"])
    out = {
        # In pseudo-label mode the model is right on every clean clip by definition.
        "clean_accuracy": (MetricValue(math.nan) if pseudo_labels else
                           MetricValue(summary["clean_accuracy"], summary["clean_accuracy_ci"])),
        "asr": MetricValue(summary["asr"], summary["asr_ci"]),
        "robust_accuracy": MetricValue(summary["robust_accuracy"],
                                       summary["robust_accuracy_ci"]),
    }
    attacked = [s for s in samples if s.attacked]
    succeeded = [s for s in attacked if s.success]
    # Perceptual cost is that of the adversarial examples an attacker would ship: the
    # successful ones. NaN when the attack never succeeded.
    for name in sample_metric_names:
        vals = np.array([s.metrics.get(name, math.nan) for s in succeeded], dtype=np.float64)
        out[name] = (MetricValue(float(np.mean(vals)), bootstrap_ci(vals)) if vals.size
                     else MetricValue(math.nan))
    out["mean_queries"] = MetricValue(
        float(np.mean([s.queries for s in attacked])) if attacked else math.nan)
    out["seconds_per_clip"] = MetricValue(attack_seconds / len(attacked) if attacked else math.nan)
    return out
