"""Run one cell: clean scoring, the attack on clean-correct clips, per-clip and cell metrics.

``run_cell(spec, workspace) -> CellRecord`` depends only on the spec, the plugins and the cache,
so the local and distributed executors produce the same records.
"""

from __future__ import annotations

import math
import time
import traceback
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from musicbench.errors import MusicbenchError
from musicbench.interfaces import Attack, Example, Preprocessor, TargetModel
from musicbench.memory import PeakMemory
from musicbench.metrics import classification_summary
from musicbench.planner import cell_seed
from musicbench.store import CellRecord, MetricValue, SampleRecord
from musicbench.victim import Victim
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
    return record


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    if model.task != "classification" or dataset.task != "classification":
        raise MusicbenchError(f"task '{model.task}' is not supported by this runner yet")
    if tuple(dataset.labels) != tuple(model.labels):
        raise MusicbenchError(
            f"model '{model.name}' labels {list(model.labels)} differ from dataset "
            f"'{dataset.name}' labels {list(dataset.labels)}"
        )
    if dataset.sample_rate != model.sample_rate:
        raise MusicbenchError(
            f"dataset '{dataset.name}' is at {dataset.sample_rate} Hz but model "
            f"'{model.name}' expects {model.sample_rate} Hz"
        )
    attack: Attack = ws.make("attack", spec["attack"]["name"], spec["attack"]["params"])
    black_box = attack.threat == "black-box"
    seed = cell_seed(spec)
    victim = Victim(
        model,
        defense=preprocessor,
        allow_gradients=not black_box,
        budget=getattr(attack.params, "budget", None) if black_box else None,
        eot_samples=getattr(attack.params, "eot_samples", 1),
        generator=torch.Generator(device=device).manual_seed(seed),
    )
    generator = torch.Generator(device=device).manual_seed(seed)
    examples = select_examples(dataset.examples("test"), spec["run"]["samples"],
                               spec["run"]["seed"])
    sample_metrics = [
        ws.make("metric", e.name) for e in ws.plugins.registry("metric")
        if getattr(e.load(), "level", "sample") == "sample"
    ]
    batch_size = spec["run"]["batch_size"]
    keep = spec["run"]["keep_audio"]
    samples: list[SampleRecord] = []
    label = " / ".join(spec[k].get("label", spec[k]["name"]) for k in ("model", "attack"))
    with ws.ctx.progress(f"  clips: {label}", total=len(examples)) as bar:
        for start in range(0, len(examples), batch_size):
            _run_batch(examples[start : start + batch_size], start, victim, attack, generator,
                       sample_metrics, dataset.sample_rate, keep, record, samples, device)
            bar.advance(min(batch_size, len(examples) - start))
    attack_seconds = record.attack_seconds
    record.samples = samples
    record.attack_seconds = round(attack_seconds, 4)
    record.metrics = _cell_metrics(samples, [m.name for m in sample_metrics], attack_seconds)
    adaptive = [name for name, used in (("eot", victim.used_eot), ("bpda", victim.used_bpda))
                if used]
    bound = attack.bound()
    record.info.update({
        "n": len(samples),
        "threat": attack.threat,
        "bound": None if bound is None else {"norm": bound.norm, "eps": bound.eps},
        "adaptive": "+".join(adaptive) if adaptive else "none",
        "flags": [],
        "labels": list(dataset.labels),
        "sample_rate": dataset.sample_rate,
        "device": str(device),
        "higher_is_better": {m.name: bool(m.higher_is_better) for m in sample_metrics},
    })


def _run_batch(
    batch: list[Example],
    start: int,
    victim: Victim,
    attack: Attack,
    generator: torch.Generator,
    sample_metrics: list[Any],
    sample_rate: int,
    keep: int,
    record: CellRecord,
    samples: list[SampleRecord],
    device: torch.device,
) -> None:
    """Score one batch clean, attack its clean-correct clips, append their sample records."""
    x = torch.stack([e.audio for e in batch]).to(device=device, dtype=torch.float32)
    y = torch.tensor([e.label for e in batch], device=device)
    clean_pred = victim.predict(x)
    correct = clean_pred == y
    idx = correct.nonzero().squeeze(1)
    adv_pred = clean_pred.clone()
    success = torch.zeros_like(correct)
    queries = torch.zeros(len(batch), dtype=torch.long, device=device)
    steps = torch.zeros(len(batch), dtype=torch.long, device=device)
    per_sample: dict[str, torch.Tensor] = {}
    if idx.numel():
        xa, ya = x[idx], y[idx]
        _sync(device)
        t = time.perf_counter()
        result = attack(victim, xa, ya, generator=generator)
        _sync(device)
        record.attack_seconds += time.perf_counter() - t
        adv_pred[idx] = victim.predict(result.adv)
        success[idx] = result.success
        queries[idx] = result.queries.to(device)
        steps[idx] = result.steps.to(device)
        for metric in sample_metrics:
            values = torch.full((len(batch),), math.nan, dtype=torch.float64, device=device)
            values[idx] = metric.compute(xa, result.adv, sample_rate).to(
                device=device, dtype=torch.float64)
            per_sample[metric.name] = values
        for j, row in enumerate(idx.tolist()):
            if result.success[j] and len(record.audio_data) < 2 * keep:
                sid = batch[row].id
                record.audio_data[(sid, "clean")] = xa[j].cpu().numpy()
                record.audio_data[(sid, "adv")] = result.adv[j].cpu().numpy()
    cols = {k: v.cpu().tolist() for k, v in per_sample.items()}
    for i, ex in enumerate(batch):
        samples.append(SampleRecord(
            sample_id=ex.id, position=start + i, label=int(y[i]),
            clean_pred=int(clean_pred[i]), clean_correct=bool(correct[i]),
            attacked=bool(correct[i]), adv_pred=int(adv_pred[i]),
            success=bool(success[i]), queries=int(queries[i]), steps=int(steps[i]),
            metrics={k: float(v[i]) for k, v in cols.items()} if correct[i] else {},
        ))


def _cell_metrics(
    samples: list[SampleRecord], sample_metric_names: list[str], attack_seconds: float
) -> dict[str, MetricValue]:
    correct = np.array([s.clean_correct for s in samples], dtype=bool)
    success = np.array([s.success for s in samples], dtype=bool)
    summary = classification_summary(correct, success)
    out = {
        "clean_accuracy": MetricValue(summary["clean_accuracy"]),
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
