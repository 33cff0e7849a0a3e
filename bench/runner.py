"""Run one cell: clean scoring, the attack on clean-correct clips, per-clip and cell metrics.

``run_cell(spec, workspace) -> CellRecord`` depends only on the typed :class:`CellSpec`, the
plugins and the cache, so the local and distributed executors produce the same records. A cell
split into clip shards runs as ``run_shard`` per range of clips and one ``finish_cell``; the
whole cell takes the same steps, so both give the same record (:mod:`musicbench.shards`).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from musicbench.cells import CellInfo, CellSpec, ComponentRef, derive_seed
from musicbench.defense_checks import measure, measure_model
from musicbench.errors import MusicbenchError
from musicbench.interfaces import Attack, CellAudio, Example, Preprocessor, TargetModel
from musicbench.memory import PeakMemory, trim
from musicbench.metrics import bootstrap_ci, classification_summary
from musicbench.planner import measurement_clips
from musicbench.shards import ShardResult, batch_seed, kept_audio, merged_flags
from musicbench.store import CellRecord, MetricValue, SampleRecord
from musicbench.training import defended_key
from musicbench.victim import ReferenceSet, Scorer, Victim, begin_batch, margin_from_logits
from musicbench.workspace import Workspace

VANISHING_GRADIENT_NORM = 1e-6
"""Median input-gradient norm (L2 over the clip, of the cross-entropy) at clean clips below
which a cell is flagged: gradient attacks are blind there and a high robust accuracy says
nothing. Measured on 16 validation clips of m21-styles: style-cnn undefended 12.8 (min 2.2),
behind lowpass 14.2, behind quantize or mp3 without BPDA exactly 0 (docs/defenses.md)."""

VANISHING_GRADIENT_RATIO = 0.02
"""... or below this fraction of the undefended model's median on the same clips (Athalye et
al. 2018: shrinking gradients by orders of magnitude masks them). Measured on style-cnn's
first 64 m21-styles test clips (``benchmarks/gradient_norms.py``; per-clip norms 0.44-97,
median 9.1): honest defenses as the attack gets them 0.026 (noise σ = 0.05, EOT 8), 0.081
(noise σ = 0.01, the default, EOT 8), 0.14 (PGD adversarial training), 0.21 (pamt), 0.42
(quantize, BPDA), 0.53-1.95 (every other preprocessor); a defense that divides the gradient
by 100 scores 0.01 and is flagged. One by 10 (0.1) is not: this statistic cannot tell it from
EOT over noise or adversarial training (a preprocessor doing it fails the finite-difference
check instead: its ratio is 10)."""

OBLIVIOUS_FLAG = ("🔴 defense-oblivious attacker: robustness overstated (adaptive = "
                  "\"oblivious\": crafted on the undefended model, judged through the defense; "
                  "shown only for contrast)")

NON_ADAPTIVE_FLAG = ("🔴 non-adaptive: robustness overstated (adaptive = false: no EOT, no "
                     "BPDA; shown only for contrast)")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def select_examples(examples: list[Example] | Any, samples: int, seed: int) -> list[Example]:
    """``samples`` clips of a split drawn with ``seed`` (the same for every cell of a run),
    kept in dataset order. 0 (or more than the split holds) means the whole split."""
    n = len(examples)
    if samples == 0 or samples >= n:
        return list(examples)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(n, generator=g)[: min(samples, n)].sort().values.tolist()
    return [examples[i] for i in pick]


def run_cell(spec: CellSpec, ws: Workspace, environment: dict[str, Any],
             fooled: frozenset[str] = frozenset()) -> CellRecord:
    """Evaluate one cell in this process; any exception becomes a ``failed`` record with its
    traceback. The same steps as a sharded cell (:func:`run_shard` for every range, then
    :func:`finish_cell`), so both give the same records.

    ``fooled``: the ids of the clips the cells of ``spec.run.after`` fooled (the survivor
    cascade, :mod:`musicbench.protocol`): they are scored clean but not attacked again."""
    started, t0 = now(), time.perf_counter()
    record = CellRecord(spec=spec, status="ok", started=started, finished=started, seconds=0.0,
                        environment=environment)
    load_start = load_average()
    try:
        with PeakMemory(ws.device) as mem:
            cell = _prepare(spec, ws, record.info, attack=True, fooled=fooled)
            shard = _run_clips(cell, 0, len(cell.data.examples))
            _finish(cell, [shard], record)
        record.peak_memory_mb = round(mem.peak_mb, 1)
    except Exception as exc:  # a failing plugin costs its own cell, nothing else
        _fail(record, exc)
    trim()  # what the cell freed back to the OS before the next one loads
    record.finished = now()
    record.seconds = round(time.perf_counter() - t0, 3)
    _note_load(record, load_start)
    return record


def run_shard(spec: CellSpec, ws: Workspace, lo: int, hi: int,
              fooled: frozenset[str] = frozenset()) -> ShardResult:
    """Attack the clips at positions ``[lo, hi)`` of a cell (whole batches: see
    :mod:`musicbench.shards`); an exception becomes a shard with ``error`` set. ``fooled``
    as in :func:`run_cell`."""
    started, t0 = now(), time.perf_counter()
    load_start = load_average()
    try:
        with PeakMemory(ws.device) as mem:
            shard = _run_clips(_prepare(spec, ws, CellInfo(), attack=True, fooled=fooled),
                               lo, hi)
        shard.peak_memory_mb = round(mem.peak_mb, 1)
    except Exception as exc:  # the shard's cell fails, nothing else
        shard = ShardResult(lo, hi, error=f"{type(exc).__name__}: {exc}",
                            traceback=traceback.format_exc())
    trim()
    shard.started, shard.finished = started, now()
    shard.seconds = round(time.perf_counter() - t0, 3)
    if load_start is not None:
        shard.load_average = [load_start, load_average() or 0.0]
    return shard


def finish_cell(spec: CellSpec, ws: Workspace, environment: dict[str, Any],
                shards: list[ShardResult]) -> CellRecord:
    """The cell record from all its shards: rates and intervals, set-level metrics (FAD, mAP)
    over every clip, flags. A failed shard fails the cell (:func:`failed_shards_record`)."""
    shards = sorted(shards, key=lambda s: s.lo)
    if any(s.error is not None for s in shards):
        return failed_shards_record(spec, environment, shards)
    t0 = time.perf_counter()
    record = CellRecord(spec=spec, status="ok", started=shards[0].started if shards else now(),
                        finished=now(), seconds=0.0, environment=environment)
    try:
        with PeakMemory(ws.device) as mem:
            _finish(_prepare(spec, ws, record.info, attack=False), shards, record)
        peaks = [s.peak_memory_mb for s in shards if s.peak_memory_mb is not None]
        record.peak_memory_mb = round(max(peaks + [mem.peak_mb]), 1)
    except Exception as exc:  # a failing plugin costs its own cell, nothing else
        _fail(record, exc)
    trim()
    record.finished = now()
    record.seconds = round(sum(s.seconds for s in shards) + time.perf_counter() - t0, 3)
    loads = [s.load_average for s in shards if s.load_average]
    _note_load(record, loads[0][0] if loads else None)
    return record


def failed_shards_record(spec: CellSpec, environment: dict[str, Any],
                         shards: list[ShardResult]) -> CellRecord:
    """The record of a cell one of whose shards failed: that shard's error and traceback.
    The good shards stay kept in the store, so a rerun runs only what failed."""
    failed = next(s for s in sorted(shards, key=lambda s: s.lo) if s.error is not None)
    return CellRecord(spec=spec, status="failed", started=failed.started or now(),
                      finished=now(), seconds=round(sum(s.seconds for s in shards), 3),
                      environment=environment,
                      error=f"clips {failed.lo}-{failed.hi - 1}: {failed.error}",
                      traceback=failed.traceback)


def _fail(record: CellRecord, exc: BaseException) -> None:
    record.status = "failed"
    record.error = f"{type(exc).__name__}: {exc}"
    record.traceback = traceback.format_exc()
    record.samples, record.metrics, record.audio_data = [], {}, {}


def _note_load(record: CellRecord, load_start: float | None) -> None:
    if load_start is not None:
        # Wall-time columns mean little without the machine's load beside them.
        record.info.load_average = [load_start, load_average()]
        record.info.cpus = os.cpu_count()


def load_average() -> float | None:
    """The 1-minute load average, where the OS has one (None on Windows)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` as tensors name it (``cuda`` -> ``cuda:0``)."""
    device = torch.empty(0, device=device).device
    return torch.Generator(device=device).manual_seed(seed)


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
    # retrieval: the references as the undefended model embeds them (clean accuracy without
    # the defense, for the "defense costs clean accuracy" flag)
    undefended_references: ReferenceSet | None = None


@dataclass
class _Collected:
    """What the batches of a shard add up to."""

    samples: list[SampleRecord] = field(default_factory=list)
    # [n, T] on the CPU for the shard's n clips, allocated once at the first batch: one large
    # block (mmapped by malloc, returned whole) instead of one per batch, which would pin the
    # heap between the batches' freed temporaries (the default run grew by 0.9 GB that way)
    adv: torch.Tensor | None = None
    first: int = 0  # the shard's first clip position
    clips: int = 0
    attacked: list[torch.Tensor] = field(default_factory=list)
    success: list[torch.Tensor] = field(default_factory=list)
    targets: list[torch.Tensor] = field(default_factory=list)
    audio_data: dict[tuple[str, str], Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    attack_seconds: float = 0.0


@dataclass
class _Cell:
    """A cell ready to run: its components loaded and checked against the plan, its clips
    and what is right for each. ``attack`` is None when only finishing (set metrics).

    Every batch of clips draws from its own streams, seeded by the cell's streams and the
    batch's first position (:func:`musicbench.shards.batch_seed`), so a clip's randomness does
    not depend on which process or shard runs its batch: the attack's own stream, the
    defense's draws while attacked (never the attack's stream), those when the harness judges
    the result, those of the gradient probe, and those of the clean verdicts (the row's,
    shared by every attack on the row, so clean accuracy is the same in each of its cells).
    """

    spec: CellSpec
    ws: Workspace
    dataset: Any
    model: TargetModel
    undefended: TargetModel
    preprocessor: Preprocessor | None
    data: _CellData
    attack: Attack | None
    sample_metrics: list[Any]
    set_metrics: list[Any]
    fooled: frozenset[str] = frozenset()  # clips earlier cells of the cascade fooled
    randomized_model: bool = False  # the attacked model's own forward draws (measured)

    @property
    def device(self) -> torch.device:
        return self.ws.device

    def stream(self, name: str, start: int) -> torch.Generator:
        """``name``: ``attack``, ``clean``, or one of :meth:`CellSpec.stream`'s names."""
        spec = self.spec
        seed = {"attack": spec.seed, "clean": spec.row_seed}.get(name)
        return _generator(self.device, batch_seed(
            seed if seed is not None else spec.stream(name), start))

    def victim(self, start: int) -> Victim:
        """What the attack gets. A defense-oblivious attacker (adaptive = "oblivious") crafts
        on the undefended model; the harness still judges through the defense."""
        run, data, attack = self.spec.run, self.data, self.attack
        black_box = self.spec.threat == "black-box"
        model, defense, refs = (
            (self.undefended, None, data.undefended_references or data.references)
            if run.oblivious else (self.model, self.preprocessor, data.references))
        return Victim(model, allow_gradients=not black_box,
                      budget=getattr(attack.params, "budget", None) if black_box else None,
                      references=refs, defense=defense, eot_samples=run.eot_samples,
                      bpda=run.bpda, amp=run.amp, generator=self.stream("defense", start),
                      randomized_model=self.randomized_model and not run.oblivious)

    def judge(self, start: int) -> Scorer:
        return Scorer(self.model, references=self.data.references, defense=self.preprocessor,
                      amp=self.spec.run.amp, generator=self.stream("judge", start),
                      randomized_model=self.randomized_model)

    def probes_coincide(self, clips: torch.Tensor) -> bool:
        """Whether the attack's gradient probe and the undefended one compute the same thing
        on ``clips[B, T]``: no training defense, a deterministic model (one draw whatever the
        EOT setting), the same references, and no preprocessor or one that hands its input
        back as it is (the undefended row's identity: the same tensor object, so the same
        autograd graph; BPDA off, where a surrogate would stand in)."""
        data = self.data
        if (self.model is not self.undefended or self.randomized_model
                or (data.undefended_references is not None
                    and data.undefended_references is not data.references)):
            return False
        if self.preprocessor is None:
            return True
        if self.spec.run.bpda:
            return False
        try:
            with torch.no_grad():
                return self.preprocessor.forward(clips, torch.Generator()) is clips
        except Exception:  # noqa: BLE001 - a defense that fails here fails in the attack too
            return False

    def probes(self, start: int) -> tuple[Victim, Victim] | None:
        """The gradient a white-box attack gets, and the undefended model's (for the
        vanishing-gradient flag); None for black-box and oblivious cells."""
        run, data = self.spec.run, self.data
        if self.spec.threat == "black-box" or run.oblivious:
            return None
        return (Victim(self.model, references=data.references, defense=self.preprocessor,
                       eot_samples=run.eot_samples, bpda=run.bpda, amp=run.amp,
                       generator=self.stream("probe", start),
                       randomized_model=self.randomized_model),
                Victim(self.undefended,
                       references=data.undefended_references or data.references, amp=run.amp))


def _prepare(spec: CellSpec, ws: Workspace, info: CellInfo, *, attack: bool,
             fooled: frozenset[str] = frozenset()) -> _Cell:
    """Load the cell's components, check each against what was planned (data, weights, the
    defense's measured behaviour) and select its clips; the attack only when ``attack``.
    ``fooled``: clips earlier cells of the cascade fooled (not attacked again)."""
    device = ws.device
    dataset = ws.dataset(spec.dataset.name, spec.dataset.params)
    _same("dataset", spec.dataset, dataset.fingerprint(), spec.dataset.fingerprint)
    model: TargetModel = ws.model(spec.model.name, spec.model.params)
    _same("model", spec.model, model.weights_digest(), spec.model.weights)
    undefended = model
    defense = ws.defense(spec.defense.name, spec.defense.params, model.sample_rate)
    preprocessor: Preprocessor | None = None
    if defense.kind == "training":
        # The defended model is attacked like any model; `undefended` (the base) keeps giving
        # pseudo-labels, the clean accuracy without the defense and the oblivious attacker.
        _same("defense", spec.defense, defended_key(defense, model, dataset),
              spec.defense.weights)
        model = ws.defended_model(defense, model, dataset)
        info.flags += list(getattr(model, "cell_flags", ()))  # e.g. pamt: not the base's weights
    else:
        _same("defense", spec.defense, defense.weights_digest(), spec.defense.weights)
        preprocessor = defense
        # the same measurement the planner made; once per process, not once per cell
        behaviour = ws.memo(
            ("defense-behaviour", spec.defense.name, json.dumps(spec.defense.params,
                                                                sort_keys=True),
             str(model.sample_rate), spec.dataset.fingerprint or ""),
            lambda: measure(defense, model.sample_rate, device, measurement_clips(dataset)))
        info.defense_behaviour = dataclasses.asdict(behaviour)
        # a surrogate far from the defense weakens only the cells that attack through it
        info.flags += behaviour.mismatches() + (behaviour.warnings() if spec.run.bpda else [])
        _as_planned(spec, behaviour)
        if spec.run.role == "identity-bpda":
            preprocessor = IdentitySurrogate(defense)
    if dataset.sample_rate != model.sample_rate:
        raise MusicbenchError(
            f"dataset '{dataset.name}' is at {dataset.sample_rate} Hz but model "
            f"'{model.name}' expects {model.sample_rate} Hz"
        )
    the_attack: Attack | None = None
    if attack:
        the_attack = ws.make("attack", spec.attack.name, spec.attack.params)
        the_attack.prepare(ws.ctx)
        _same("attack", spec.attack, the_attack.weights_digest(), spec.attack.weights)
    run = spec.run
    if model.task == "retrieval":
        data = _retrieval_data(dataset, model, undefended, preprocessor, ws, spec)
    else:
        data = _classification_data(dataset, model, run.samples, run.seed, run.pseudo_labels)
    randomized_model = _model_draws(spec, ws, model, dataset, info)
    metrics = [ws.metric(name) for name in run.metrics]
    weights = {m.name: m.weights_digest() for m in metrics if m.weights_digest() is not None}
    if weights != dict(run.metric_weights):  # the key rests on the planned weights
        raise MusicbenchError(f"metric weights changed since the run was planned ({weights} != "
                              f"{dict(run.metric_weights)}); rerun to plan again")
    return _Cell(spec, ws, dataset, model, undefended, preprocessor, data, the_attack,
                 [m for m in metrics if m.level == "sample"],
                 [m for m in metrics if m.level == "set"], fooled, randomized_model)


def cell_clip_count(spec: CellSpec, ws: Workspace) -> int:
    """How many clips (queries, for retrieval) a cell attacks: what its shards cover."""
    dataset = ws.dataset(spec.dataset.name, spec.dataset.params)
    split = (dataset.queries("test") if dataset.task == "retrieval"
             else dataset.examples("test"))
    return len(select_examples(split, spec.run.samples, spec.run.seed))


def _run_clips(cell: _Cell, lo: int, hi: int) -> ShardResult:
    """Judge the clean clips at positions ``[lo, hi)`` and attack the clean-correct ones,
    batch by batch (``lo`` on a batch boundary)."""
    spec, run, device = cell.spec, cell.spec.run, cell.device
    if lo % run.batch_size:
        raise MusicbenchError(f"a shard must start on a batch boundary: clip {lo} with "
                              f"batch_size {run.batch_size}")
    assert cell.attack is not None, "prepared without the attack"
    out = _Collected(first=lo, clips=max(0, min(hi, len(cell.data.examples)) - lo))
    gradient_norms: list[torch.Tensor] = []
    plain_norms: list[torch.Tensor] = []
    shared_probe: bool | None = None
    undefended_right = 0
    examples = cell.data.examples
    hi = min(hi, len(examples))
    label = " / ".join((spec.model.label, spec.attack.label))
    with cell.ws.ctx.progress(f"  clips: {label}", total=hi - lo) as bar:
        for start in range(lo, hi, run.batch_size):
            rows = slice(start, min(start + run.batch_size, hi))
            batch, right = _judge_clean(cell, examples[rows], cell.data.targets[rows], start)
            undefended_right += right
            probes = cell.probes(start)
            if probes is not None:
                norms = _input_gradient_norms(batch, probes[0], device)
                gradient_norms.append(norms)
                if shared_probe is None:
                    shared_probe = cell.probes_coincide(_stack(batch.examples[:1]))
                # the undefended row's two probes are one computation: share it (exactly)
                plain_norms.append(norms if shared_probe else
                                   _input_gradient_norms(batch, probes[1], device))
            _run_batch_fitting_memory(
                batch, cell.victim(start), cell.judge(start), run.eval_draws, cell.attack,
                cell.stream("attack", start), cell.sample_metrics, cell.dataset.sample_rate,
                run.keep_audio, out, device, cell.fooled)
            trim()  # the batch's freed tensors back to the OS (else ~35 MB more per batch)
            bar.advance(len(batch.examples))
    return ShardResult(
        lo, hi, samples=out.samples,
        adv=out.adv if out.adv is not None else torch.zeros(0),
        attacked=_cat(out.attacked).bool(), success=_cat(out.success).bool(),
        targets=_cat(out.targets).long(), gradient_norms=_cat(gradient_norms),
        plain_norms=_cat(plain_norms), audio_data=out.audio_data, flags=out.flags,
        attack_seconds=out.attack_seconds, undefended_right=undefended_right)


def _finish(cell: _Cell, shards: list[ShardResult], record: CellRecord) -> None:
    """The cell's figures and flags from its shards (in clip order)."""
    run, info = cell.spec.run, record.info
    info.flags += merged_flags([s.flags for s in shards])
    if any(s.gradient_norms.numel() for s in shards):
        _flag_vanishing_gradients(torch.cat([s.gradient_norms for s in shards]),
                                  torch.cat([s.plain_norms for s in shards]), info)
    samples = [x for s in shards for x in s.samples]
    if samples:
        info.clean_accuracy_undefended = sum(s.undefended_right for s in shards) / len(samples)
    record.samples = samples
    record.audio_data = kept_audio(shards, run.keep_audio)
    record.attack_seconds = round(sum(s.attack_seconds for s in shards), 4)
    record.metrics = _cell_metrics(samples, [m.name for m in cell.sample_metrics],
                                   record.attack_seconds, cell.data.pseudo_labels, info)
    model, data, dataset = cell.model, cell.data, cell.dataset
    judge = Scorer(model, references=data.references, defense=cell.preprocessor, amp=run.amp,
                   generator=_generator(cell.device, cell.spec.stream("set-metrics")),
                   randomized_model=cell.randomized_model)
    cell_audio = CellAudio(
        dataset=dataset.name, dataset_fingerprint=dataset.fingerprint(), model=model.name,
        task=model.task, sample_rate=dataset.sample_rate, ids=[s.sample_id for s in samples],
        clean=_stack(data.examples) if data.examples else torch.zeros(0),
        adv=_cat([s.adv for s in shards]),
        attacked=_cat([s.attacked for s in shards]), success=_cat([s.success for s in shards]),
        targets=_cat([s.targets for s in shards]), fad_encoder=run.fad_encoder,
        model_network=model.network, references=data.references,
        embed=(lambda audio: judge.embed(audio.to(cell.device))) if data.references else None,
    )
    for metric in cell.set_metrics:
        if not metric.applies(cell_audio):
            continue
        result = metric.compute(cell_audio, cell.ws.ctx)
        for column, value in result.values.items():
            record.metrics[column] = MetricValue(value)
        info.set_metrics[metric.name] = {"n": result.n, "note": result.note,
                                         "encoder": result.encoder}
        info.flags += result.flags
    info.task = model.task
    info.adaptive = run.adaptive_label
    if not run.adaptive:
        info.flags.insert(0, NON_ADAPTIVE_FLAG)
    if run.oblivious:
        info.flags.insert(0, OBLIVIOUS_FLAG)
    if data.pseudo_labels:
        info.flags.insert(0, "pseudo-label mode: y = the undefended model's clean top-1; "
                             "clean accuracy = agreement with it")
    info.pseudo_labels = data.pseudo_labels
    info.labels = list(model.labels) if model.task == "classification" else []
    info.sample_rate = dataset.sample_rate
    info.device = str(cell.device)
    info.higher_is_better = {m.name: bool(m.higher_is_better) for m in cell.sample_metrics}
    for metric in cell.set_metrics:
        info.higher_is_better.update(metric.columns)


RANDOM_MODEL_UNPLANNED = (
    "🔴 model '{name}' is randomized (measured) but its cells were planned without draws "
    "(a training defense's model is measured only when it is trained): attacked with EOT over "
    "{draws} draw(s) and judged over {draws}: robustness overstated; rerun to plan again")


def _model_draws(spec: CellSpec, ws: Workspace, model: TargetModel, dataset: Any,
                 info: CellInfo) -> bool:
    """Whether the model the cell attacks draws at every forward (dropout left on), measured
    once per process (:func:`musicbench.defense_checks.measure_model`); its flags go to the
    cell, and a randomized model on a cell planned without draws is flagged red (the planner
    measures base models; a training defense's model exists only once trained)."""
    behaviour = ws.memo(
        ("model-behaviour", spec.model.name, spec.model.weights or "",
         json.dumps(spec.model.params, sort_keys=True), spec.defense.name,
         spec.defense.weights or "", spec.dataset.fingerprint or ""),
        lambda: measure_model(model, ws.device, measurement_clips(dataset)))
    info.flags += behaviour.flags()
    if behaviour.attack_randomized and spec.run.eval_draws == 1:
        info.flags.append(RANDOM_MODEL_UNPLANNED.format(name=model.name,
                                                        draws=spec.run.eot_samples))
    return behaviour.attack_randomized


class IdentitySurrogate:
    """A preprocessor as it is, but for BPDA through the identity (the ``identity-bpda``
    sanity gate, :mod:`musicbench.protocol`): values from the defense's forward, gradients
    as if it were not there. Where that beats the defense's exact gradients, they were
    masked (Athalye, Carlini & Wagner 2018)."""

    def __init__(self, defense: Preprocessor):
        self._defense = defense

    def __getattr__(self, name: str) -> Any:
        return getattr(self._defense, name)

    def surrogate(self, audio: torch.Tensor) -> torch.Tensor:
        return audio


def _as_planned(spec: CellSpec, behaviour: Any) -> None:
    """The defense must behave as it did when the cell was planned: its key (and the EOT,
    BPDA and draws it was planned with) rests on that measurement."""
    run = spec.run
    if behaviour.attack_randomized and run.eval_draws == 1:
        raise MusicbenchError(f"defense '{spec.defense.name}' behaves randomized now but did "
                              "not when the run was planned; rerun to plan again")
    if (behaviour.attack_with_bpda and run.adaptive and not run.oblivious
            and spec.threat == "white-box" and not run.bpda):
        raise MusicbenchError(f"defense '{spec.defense.name}' has no useful gradient now but "
                              "had one when the run was planned; rerun to plan again")


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
    """The parts in one tensor; a single part as it is (a cell's audio is hundreds of MB)."""
    if len(parts) == 1:
        return parts[0]
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
    undefended: TargetModel,
    defense: Preprocessor | None,
    ws: Workspace,
    spec: CellSpec,
) -> _CellData:
    """Queries drawn from the test split; every reference of the split embedded once through
    the defended model (the defense's draws from the row's stream, so every cell of the row
    matches against the same references) and once through the undefended one."""
    if dataset.task != "retrieval":
        raise MusicbenchError(f"retrieval model '{model.name}' needs a retrieval dataset; "
                              f"'{dataset.name}' is {dataset.task}")
    run, device = spec.run, ws.device
    refs = list(dataset.references("test"))
    queries = select_examples(dataset.queries("test"), run.samples, run.seed)
    works = sorted({e.work_id for e in refs})
    work_index = {w: i for i, w in enumerate(works)}
    missing = sorted({e.work_id for e in queries} - set(work_index))
    if missing:
        raise MusicbenchError(f"dataset '{dataset.name}': queries of works without a reference "
                              f"in the test split: {missing[:5]}")
    ref_works = torch.tensor([work_index[e.work_id] for e in refs], device=device)

    def embed(scorer: Scorer) -> ReferenceSet:
        emb = torch.cat([scorer.embed(_stack(refs[i : i + run.batch_size]).to(device))
                         for i in range(0, len(refs), run.batch_size)])
        return ReferenceSet(emb, ref_works, len(works))

    defended = embed(Scorer(model, defense=defense, amp=run.amp,
                            generator=_generator(device, derive_seed(f"{spec.row_seed}:refs"))))
    plain = ws.memo(("undefended-references", spec.dataset.fingerprint or "", spec.model.name,
                     spec.model.weights or "", json.dumps(spec.model.params, sort_keys=True),
                     str(run.batch_size), run.amp),
                    lambda: embed(Scorer(undefended, amp=run.amp)))
    targets = torch.tensor([work_index[e.work_id] for e in queries], dtype=torch.long)
    return _CellData(queries, targets, defended, undefended_references=plain)


def _judge_clean(cell: _Cell, examples: list[Example], labels: torch.Tensor,
                 start: int) -> tuple[_Batch, int]:
    """Score one batch of clean clips: the undefended model (pseudo-labels, and the clean
    accuracy a defense costs) and the defended one over ``eval_draws`` draws from the row's
    stream for this batch, so every attack on the row sees the same clean verdicts. Returns
    the batch (targets resolved) and how many clips the undefended model gets right."""
    run, data = cell.spec.run, cell.data
    plain = Scorer(cell.undefended, references=data.undefended_references or data.references,
                   amp=run.amp)
    defended = Scorer(cell.model, references=data.references, defense=cell.preprocessor,
                      amp=run.amp, generator=cell.stream("clean", start),
                      randomized_model=cell.randomized_model)
    x = _stack(examples).to(cell.device, torch.float32)
    plain_scores = plain.scores(x)
    y = plain_scores.argmax(-1) if data.pseudo_labels else labels.to(cell.device)
    plain_right = int((margin_from_logits(plain_scores, y) > 0).sum())
    verdict = defended.judge(x, y, run.eval_draws)
    batch = _Batch(examples, y.long().cpu(), start, verdict.prediction.long().cpu(),
                   verdict.wrong_fraction.to(torch.float64).cpu())
    return batch, plain_right


def _flag_vanishing_gradients(norms: torch.Tensor, plain: torch.Tensor, info: CellInfo) -> None:
    """Flag a cell whose attack gets (almost) no input gradient at clean clips: below
    :data:`VANISHING_GRADIENT_NORM`, or below :data:`VANISHING_GRADIENT_RATIO` of what the
    undefended model gives on the same clips (a defense that scales gradients down by orders
    of magnitude masks them as surely as one that zeroes them)."""
    if not norms.numel():
        return
    info.input_gradient_median = median = float(norms.median())
    info.input_gradient_median_undefended = base = float(plain.median())
    if median < VANISHING_GRADIENT_NORM or median < VANISHING_GRADIENT_RATIO * base:
        info.flags.append(
            f"vanishing gradients: median input-gradient norm {median:.2e} at clean clips as "
            f"the attack gets it ({base:.2e} without the defense): gradient attacks are blind "
            "here")


def _input_gradient_norms(batch: _Batch, probe: Victim, device: torch.device) -> torch.Tensor:
    """``[b]``: L2 norms of the loss's input gradient at the batch's clean-correct clips, as
    a gradient attack would get it through the (defended) model (EOT and BPDA as the cell
    applies them). Measured on a separate victim, so the attack's counters never see it."""
    correct = batch.clean_wrong <= 0.5
    if not bool(correct.any()):
        return torch.zeros(0)
    x = _stack([e for e, c in zip(batch.examples, correct.tolist(), strict=True)
                if c])
    x = x.to(device, torch.float32).requires_grad_(True)
    begin_batch(probe, x.shape[0])
    with torch.enable_grad():
        loss = probe.loss(x, batch.targets[correct].to(device)).sum()
        (grad,) = torch.autograd.grad(loss, x)
    return grad.flatten(1).norm(dim=1).cpu()


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
    targets: torch.Tensor  # [b] labels or works (pseudo-labels resolved)
    start: int
    clean_pred: torch.Tensor  # [b] the defended model's clean top-1 (most frequent draw)
    clean_wrong: torch.Tensor  # [b] fraction of eval draws the clean clip was wrong on


OOM_FLAG_START = "out of memory at a batch of "
OOM_FLAG = (OOM_FLAG_START + "{size} clips: that batch ran in halves (halved until it fit), so "
            "its random draws differ from a run at the planned batch size")


def _run_batch_fitting_memory(batch: _Batch, victim: Victim, judge: Scorer, eval_draws: int,
                              attack: Attack, generator: torch.Generator,
                              sample_metrics: list[Any], sample_rate: int, keep: int,
                              out: _Collected, device: torch.device,
                              fooled: frozenset[str] = frozenset()) -> None:
    """:func:`_run_batch`, halving the batch on an out-of-memory error (down to one clip,
    then the error stands) and flagging the cell: a GPU's free memory is not known when the
    run is planned. ``_run_batch`` writes nothing before its last step (sample records, kept
    audio), so a failed attempt leaves no trace but its attack time. The halves draw from the
    same generator in turn, so their results differ from the whole batch's (the flag says so;
    a deterministic attack gives the same records)."""
    args = (victim, judge, eval_draws, attack, generator, sample_metrics, sample_rate, keep,
            out, device, fooled)
    try:
        _run_batch(batch, *args)
        return
    except torch.OutOfMemoryError:
        if len(batch.examples) == 1:
            raise
    _release_memory(device)  # outside the except block: the traceback no longer pins tensors
    if not any(f.startswith(OOM_FLAG_START) for f in out.flags):  # once per shard
        out.flags.append(OOM_FLAG.format(size=len(batch.examples)))
    half = (len(batch.examples) + 1) // 2
    for lo, hi in ((0, half), (half, len(batch.examples))):
        _run_batch_fitting_memory(_slice_batch(batch, lo, hi), *args)


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _slice_batch(batch: _Batch, lo: int, hi: int) -> _Batch:
    return _Batch(batch.examples[lo:hi], batch.targets[lo:hi], batch.start + lo,
                  batch.clean_pred[lo:hi], batch.clean_wrong[lo:hi])


def _run_batch(
    batch: _Batch,
    victim: Victim,
    judge: Scorer,
    eval_draws: int,
    attack: Attack,
    generator: torch.Generator,
    sample_metrics: list[Any],
    sample_rate: int,
    keep: int,
    out: _Collected,
    device: torch.device,
    fooled: frozenset[str] = frozenset(),
) -> None:
    """Attack the batch's clean-correct clips that no earlier cell of the cascade fooled
    (``fooled``), judge the result over ``eval_draws`` draws of the defense, append the
    sample records (a clip the cascade skips: clean-correct, not attacked, not a success)."""
    n = len(batch.examples)
    x = _stack(batch.examples).to(device=device, dtype=torch.float32)
    y = batch.targets.to(device)
    clean_pred = batch.clean_pred.to(device)
    correct = (batch.clean_wrong <= 0.5).to(device)  # not fooled on clean: see Judgement
    survivor = torch.tensor([e.id not in fooled for e in batch.examples], device=device)
    attacked = correct & survivor
    idx = attacked.nonzero().squeeze(1)
    adv_pred = clean_pred.clone()
    success = torch.zeros_like(correct)
    adv_wrong = torch.full((n,), math.nan, dtype=torch.float64)
    queries = torch.zeros(n, dtype=torch.long, device=device)
    steps = torch.zeros(n, dtype=torch.long, device=device)
    per_sample: dict[str, torch.Tensor] = {}
    adv_all = x.clone()
    if idx.numel():
        xa, ya = x[idx], y[idx]
        _sync(device)
        t = time.perf_counter()
        result = attack(victim, xa, ya, generator=generator,
                        clip_ids=[batch.examples[i].id for i in idx.tolist()])
        _sync(device)
        out.attack_seconds += time.perf_counter() - t
        out.flags += result.notes
        verdict = judge.judge(result.adv, ya, eval_draws)
        adv_all[idx] = result.adv
        adv_pred[idx] = verdict.prediction
        success[idx] = verdict.fooled
        adv_wrong[idx.cpu()] = verdict.wrong_fraction.cpu()
        queries[idx] = result.queries.to(device)
        steps[idx] = result.steps.to(device)
        for metric in sample_metrics:
            values = torch.full((n,), math.nan, dtype=torch.float64, device=device)
            values[idx] = metric.compute(xa, result.adv, sample_rate).to(
                device=device, dtype=torch.float64)
            per_sample[metric.name] = values
        for row in idx[verdict.fooled].tolist():
            if len(out.audio_data) < 2 * keep:
                sid = batch.examples[row].id
                out.audio_data[(sid, "clean")] = x[row].cpu().numpy()
                out.audio_data[(sid, "adv")] = adv_all[row].cpu().numpy()
    if out.adv is None:
        out.adv = torch.empty(out.clips, x.shape[-1])
    at = batch.start - out.first
    out.adv[at : at + n] = adv_all
    out.attacked.append(attacked.cpu())
    out.success.append(success.cpu())
    out.targets.append(y.cpu())
    cols = {k: v.cpu().tolist() for k, v in per_sample.items()}
    drawn = eval_draws > 1
    for i, ex in enumerate(batch.examples):
        out.samples.append(SampleRecord(
            sample_id=ex.id, position=batch.start + i, label=int(y[i]),
            clean_pred=int(clean_pred[i]), clean_correct=bool(correct[i]),
            attacked=bool(attacked[i]), adv_pred=int(adv_pred[i]),
            success=bool(success[i]), queries=int(queries[i]), steps=int(steps[i]),
            metrics={k: float(v[i]) for k, v in cols.items()} if attacked[i] else {},
            clean_wrong=float(batch.clean_wrong[i]) if drawn else None,
            adv_wrong=float(adv_wrong[i]) if drawn and attacked[i] else None,
            work_id=ex.work_id,
        ))


def _cell_metrics(
    samples: list[SampleRecord], sample_metric_names: list[str], attack_seconds: float,
    pseudo_labels: bool, info: CellInfo,
) -> dict[str, MetricValue]:
    """Rates with exact intervals over the cell's clips; per-sample metrics averaged over the
    successful clips (``info.n_success`` of them), with a bootstrap interval of the mean."""
    correct = np.array([s.clean_correct for s in samples], dtype=bool)
    success = np.array([s.success for s in samples], dtype=bool)
    attacked = np.array([s.attacked for s in samples], dtype=bool)
    # clips of one work are not independent: intervals resample works where they share one
    summary = classification_summary(correct, success, attacked=attacked,
                                     clusters=[s.work_id for s in samples])
    info.n, info.n_attacked, info.n_success = (summary["n"], summary["n_attacked"],
                                               summary["n_success"])
    out = {
        # In pseudo-label mode: agreement with the undefended model's clean top-1.
        "clean_accuracy": MetricValue(summary["clean_accuracy"], summary["clean_accuracy_ci"]),
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
        works = [s.work_id for s in succeeded]
        out[name] = (MetricValue(float(np.mean(vals)), bootstrap_ci(vals, clusters=works))
                     if vals.size else MetricValue(math.nan))
    out["mean_queries"] = MetricValue(
        float(np.mean([s.queries for s in attacked])) if attacked else math.nan)
    out["seconds_per_clip"] = MetricValue(attack_seconds / len(attacked) if attacked else math.nan)
    return out
