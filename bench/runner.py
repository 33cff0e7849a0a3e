"""Run one cell: clean scoring, the attack on clean-correct clips, per-clip and cell metrics.

``run_cell(spec, workspace) -> CellRecord`` depends only on the spec, the plugins and the cache,
so the local and distributed executors produce the same records.
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

from musicbench.errors import MusicbenchError
from musicbench.fad import fad
from musicbench.interfaces import Attack, Dataset, Example, Preprocessor, TargetModel
from musicbench.memory import PeakMemory
from musicbench.metrics import classification_summary, retrieval_ranking
from musicbench.planner import cell_seed
from musicbench.store import CellRecord, MetricValue, SampleRecord
from musicbench.victim import ReferenceSet, Victim, margin_from_logits
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


def run_cell(spec: dict[str, Any], ws: Workspace, environment: dict[str, Any]) -> CellRecord:
    """Evaluate one cell; any exception becomes a ``failed`` record with its traceback."""
    started, t0 = now(), time.perf_counter()
    record = CellRecord(key=spec["key"], spec=spec, status="ok", started=started,
                        finished=started, seconds=0.0, environment=environment)
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
        record.info["load_average"] = [load_start, load_average()]
        record.info["cpus"] = os.cpu_count()
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
    victim_kwargs: dict[str, Any] = field(default_factory=dict)
    pseudo_labels: bool = False
    reference_works: list[str] = field(default_factory=list)


def _evaluate(spec: dict[str, Any], ws: Workspace, record: CellRecord) -> None:
    device = ws.device
    ds_ref, model_ref = spec["dataset"], spec["model"]
    dataset = ws.dataset(ds_ref["name"], ds_ref["params"])
    if dataset.fingerprint() != ds_ref["fingerprint"]:
        raise MusicbenchError(
            f"dataset '{ds_ref['name']}' changed since the run was planned "
            f"({dataset.fingerprint()[:12]} != {ds_ref['fingerprint'][:12]})"
        )
    model: TargetModel = ws.model(model_ref["name"], model_ref["params"])
    defense = ws.make("defense", spec["defense"]["name"], spec["defense"]["params"])
    if defense.kind == "training":
        model = ws.defended_model(defense, model, dataset)
        preprocessor: Preprocessor | None = None
    else:
        preprocessor = None if spec["defense"]["name"] == "none" else defense
    if dataset.sample_rate != model.sample_rate:
        raise MusicbenchError(
            f"dataset '{dataset.name}' is at {dataset.sample_rate} Hz but model "
            f"'{model.name}' expects {model.sample_rate} Hz"
        )
    attack: Attack = ws.make("attack", spec["attack"]["name"], spec["attack"]["params"])
    attack.prepare(ws.ctx)
    black_box = attack.threat == "black-box"
    seed = cell_seed(spec)
    common = dict(
        defense=preprocessor,
        eot_samples=getattr(attack.params, "eot_samples", 1),
        generator=torch.Generator(device=device).manual_seed(seed),
    )
    samples_wanted, run_seed = spec["run"]["samples"], spec["run"]["seed"]
    if model.task == "retrieval":
        data = _retrieval_data(dataset, model, Victim, common, device, samples_wanted, run_seed,
                               spec["run"]["batch_size"])
    else:
        data = _classification_data(dataset, model, samples_wanted, run_seed)
    victim = Victim(model, allow_gradients=not black_box,
                    budget=getattr(attack.params, "budget", None) if black_box else None,
                    **common, **data.victim_kwargs)
    generator = torch.Generator(device=device).manual_seed(seed)
    sample_metrics = [
        ws.make("metric", e.name) for e in ws.plugins.registry("metric")
        if getattr(e.load(), "level", "sample") == "sample"
    ]
    batch_size = spec["run"]["batch_size"]
    keep = spec["run"]["keep_audio"]
    samples: list[SampleRecord] = []
    embeddings: dict[str, list[torch.Tensor]] = {"clean": [], "adv": []}
    kept: dict[str, list[Any]] = {"clean": [], "adv": [], "clean_ids": []}
    label = " / ".join(spec[k].get("label", spec[k]["name"]) for k in ("model", "attack"))
    examples = data.examples
    with ws.ctx.progress(f"  clips: {label}", total=len(examples)) as bar:
        for start in range(0, len(examples), batch_size):
            batch = _Batch(examples[start : start + batch_size],
                           data.targets[start : start + batch_size], start)
            _run_batch(batch, victim, attack, generator, sample_metrics, dataset.sample_rate,
                       keep, record, samples, device, data.pseudo_labels, embeddings, kept)
            bar.advance(len(batch.examples))
    record.samples = samples
    record.attack_seconds = round(record.attack_seconds, 4)
    record.metrics = _cell_metrics(samples, [m.name for m in sample_metrics],
                                   record.attack_seconds, data.pseudo_labels)
    if model.task == "retrieval":
        record.metrics.update(_retrieval_metrics(samples, embeddings, victim))
    fad_encoder = _fad(spec, ws, kept, record, dataset)
    adaptive = [name for name, used in (("eot", victim.used_eot), ("bpda", victim.used_bpda))
                if used]
    bound = attack.bound()
    flags = ["pseudo-label mode: y = the model's clean top-1"] if data.pseudo_labels else []
    record.info.update({
        "n": len(samples),
        "task": model.task,
        "threat": attack.threat,
        "bound": None if bound is None else {
            "norm": bound.norm, "eps": None if bound.snr_db is not None else bound.eps,
            "snr_db": bound.snr_db},
        "adaptive": "+".join(adaptive) if adaptive else "none",
        "flags": flags,
        "pseudo_labels": data.pseudo_labels,
        "labels": list(model.labels) if model.task == "classification" else [],
        "sample_rate": dataset.sample_rate,
        "device": str(device),
        "fad_encoder": fad_encoder,
        "higher_is_better": {m.name: bool(m.higher_is_better) for m in sample_metrics},
    })


def _classification_data(
    dataset: Any, model: TargetModel, samples: int, seed: int
) -> _CellData:
    """Dataset labels mapped onto the model's labels by name; when some dataset label is not
    one of the model's, pseudo-label mode: the target is the model's clean top-1."""
    if dataset.task != "classification":
        raise MusicbenchError(f"model '{model.name}' classifies but dataset '{dataset.name}' "
                              f"is a {dataset.task} dataset")
    examples = select_examples(dataset.examples("test"), samples, seed)
    model_labels = list(model.labels)
    if all(lab in model_labels for lab in dataset.labels):
        index = [model_labels.index(lab) for lab in dataset.labels]
        targets = torch.tensor([index[e.label] for e in examples], dtype=torch.long)
        return _CellData(examples, targets)
    return _CellData(examples, torch.full((len(examples),), -1, dtype=torch.long),
                     pseudo_labels=True)


def _retrieval_data(
    dataset: Any,
    model: TargetModel,
    victim_cls: type[Victim],
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
    embedder = victim_cls(model, **common)  # the defended model, to embed the references
    with torch.no_grad():
        emb = torch.cat([
            embedder.embed(_stack(refs[i : i + batch_size]).to(device))
            for i in range(0, len(refs), batch_size)
        ])
    ref_works = torch.tensor([work_index[e.work_id] for e in refs], device=device)
    reference_set = ReferenceSet(emb, ref_works, len(works))
    targets = torch.tensor([work_index[e.work_id] for e in queries], dtype=torch.long)
    return _CellData(queries, targets, {"references": reference_set}, reference_works=works)


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
    samples: list[SampleRecord],
    device: torch.device,
    pseudo_labels: bool,
    embeddings: dict[str, list[torch.Tensor]],
    kept: dict[str, list[torch.Tensor]],
) -> None:
    """Score one batch clean, attack its clean-correct clips, append their sample records."""
    n = len(batch.examples)
    x = _stack(batch.examples).to(device=device, dtype=torch.float32)
    with torch.no_grad():
        scores = victim.scores(x, count=False)
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
        record.attack_seconds += time.perf_counter() - t
        adv_all[idx] = result.adv
        with torch.no_grad():
            adv_pred[idx] = victim.scores(result.adv, count=False).argmax(-1)
        success[idx] = result.success
        queries[idx] = result.queries.to(device)
        steps[idx] = result.steps.to(device)
        for metric in sample_metrics:
            values = torch.full((n,), math.nan, dtype=torch.float64, device=device)
            values[idx] = metric.compute(xa, result.adv, sample_rate).to(
                device=device, dtype=torch.float64)
            per_sample[metric.name] = values
        hits = idx[result.success]
        kept["clean"].append(x[hits].cpu())
        kept["adv"].append(adv_all[hits].cpu())
        kept["clean_ids"].extend(batch.examples[row].id for row in hits.tolist())
        for row in hits.tolist():
            if len(record.audio_data) < 2 * keep:
                sid = batch.examples[row].id
                record.audio_data[(sid, "clean")] = x[row].cpu().numpy()
                record.audio_data[(sid, "adv")] = adv_all[row].cpu().numpy()
    if victim.references is not None:
        embeddings["clean"].append(victim.embed(x).cpu())
        embeddings["adv"].append(victim.embed(adv_all).cpu())
    cols = {k: v.cpu().tolist() for k, v in per_sample.items()}
    for i, ex in enumerate(batch.examples):
        samples.append(SampleRecord(
            sample_id=ex.id, position=batch.start + i, label=int(y[i]),
            clean_pred=int(clean_pred[i]), clean_correct=bool(correct[i]),
            attacked=bool(correct[i]), adv_pred=int(adv_pred[i]),
            success=bool(success[i]), queries=int(queries[i]), steps=int(steps[i]),
            metrics={k: float(v[i]) for k, v in cols.items()} if correct[i] else {},
        ))


def _retrieval_metrics(
    samples: list[SampleRecord], embeddings: dict[str, list[torch.Tensor]], victim: Victim
) -> dict[str, MetricValue]:
    """mAP and MR1 of the queries before and after the attack (clean-wrong queries are not
    attacked and keep their clean embedding)."""
    refs = victim.references
    assert refs is not None
    works = torch.tensor([s.label for s in samples])
    out = {}
    for when in ("clean", "adv"):
        ranking = retrieval_ranking(torch.cat(embeddings[when]), works, refs.embeddings.cpu(),
                                    refs.works.cpu())
        out[f"map_{when}"] = MetricValue(float(ranking["ap"].mean()))
        out[f"mr1_{when}"] = MetricValue(float(ranking["first_rank"].mean()))
    return out


def _fad(spec: dict[str, Any], ws: Workspace, kept: dict[str, list[Any]],
         record: CellRecord, dataset: Dataset) -> str | None:
    """FAD between the clean and the adversarial clips of successful attacks, with the run's
    encoder (``[run] fad_encoder``); NaN with a reason when it cannot be computed.

    Clips are embedded one at a time, so a clip's frames do not depend on which clips share
    its batch; that makes the clean frames reusable across the cells of a run (the
    workspace keeps them by encoder, dataset fingerprint and clip id) and FAD independent of
    cache state, batch size and resumption."""
    sample_rate = dataset.sample_rate
    name = spec["run"].get("fad_encoder") or None
    if name is None:
        return None
    clean = torch.cat(kept["clean"]) if kept["clean"] else torch.zeros(0)
    adv = torch.cat(kept["adv"]) if kept["adv"] else torch.zeros(0)
    try:
        encoder = ws.encoder(name)
    except Exception as exc:  # an encoder that cannot load costs the FAD column, not the cell
        record.metrics["fad"] = MetricValue(math.nan)
        record.info["fad_note"] = f"encoder '{name}' unavailable: {type(exc).__name__}: {exc}"
        return name
    reason = None
    if clean.numel() == 0:
        reason = "no successful adversarial example"
    elif encoder.sample_rate != sample_rate:
        reason = (f"encoder '{name}' takes {encoder.sample_rate} Hz audio, the cell's is "
                  f"{sample_rate} Hz")
    if reason is None:
        try:
            def one(clip: torch.Tensor) -> torch.Tensor:  # [T] -> frames [F, dim], float32
                with torch.no_grad():
                    return encoder.embed(clip[None].to(ws.device))[0].float().cpu()

            owner = (name, dataset.name, dataset.fingerprint())
            clean_frames = [ws.clean_frames(owner + (sid,), lambda c=clip: one(c))
                            for sid, clip in zip(kept["clean_ids"], clean, strict=True)]
            frames = {"clean": torch.cat(clean_frames).double().numpy(),
                      "adv": torch.cat([one(clip) for clip in adv]).double().numpy()}
        except Exception as exc:  # the encoder's failure costs the FAD column, not the cell
            reason = f"encoder '{name}' failed: {type(exc).__name__}: {exc}"
    if reason is not None:
        record.metrics["fad"] = MetricValue(math.nan)
        record.info["fad_note"] = reason
        return name
    result = fad(frames["clean"], frames["adv"])
    record.metrics["fad"] = MetricValue(result.value)
    if result.reason:
        record.info["fad_note"] = result.reason
    return name


def _cell_metrics(
    samples: list[SampleRecord], sample_metric_names: list[str], attack_seconds: float,
    pseudo_labels: bool,
) -> dict[str, MetricValue]:
    correct = np.array([s.clean_correct for s in samples], dtype=bool)
    success = np.array([s.success for s in samples], dtype=bool)
    summary = classification_summary(correct, success)
    out = {
        # In pseudo-label mode the model is right on every clean clip by definition.
        "clean_accuracy": MetricValue(math.nan if pseudo_labels else summary["clean_accuracy"]),
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
        out[name] = MetricValue(float(np.mean(vals)) if vals.size else math.nan)
    out["mean_queries"] = MetricValue(
        float(np.mean([s.queries for s in attacked])) if attacked else math.nan)
    out["seconds_per_clip"] = MetricValue(attack_seconds / len(attacked) if attacked else math.nan)
    return out
