"""Turn a config into cells: validate every name and parameter first, then resolve each
component once and expand the grid into typed :class:`~musicbench.cells.CellSpec` records.

A cell is one (dataset, model, defense, attack). Its key hashes the resolved components
(versions, parameters, trained-weights hashes, the dataset fingerprint), the run settings that
change results and the musicbench version, so a changed plugin, weight file or dataset makes
new cells while a rerun of the same command finds its finished ones.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import types
import typing
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

import musicbench
from musicbench.batch_probe import AUTO_BATCH, probed_batch_size
from musicbench.cells import CellRun, CellSpec, ComponentRef
from musicbench.config import KINDS, TABLES, ComponentSpec, RunConfig, RunSettings, model_samples
from musicbench.defense_checks import DefenseBehaviour, measure, measure_model
from musicbench.errors import ConfigError, did_you_mean
from musicbench.params import component_params
from musicbench.plugins import PluginSystem
from musicbench.protocol import protocol_row
from musicbench.resolved import Resolved

if TYPE_CHECKING:
    from musicbench.workspace import Workspace


def resolve(config: RunConfig, plugins: PluginSystem) -> dict[str, list[Resolved]]:
    """Check every component of ``config``; raises :class:`ConfigError` before any work."""
    out: dict[str, list[Resolved]] = {}
    for kind in KINDS:
        items = []
        for spec in config.components[kind]:
            try:
                entry = plugins.get(kind, spec.name)
            except ConfigError as exc:
                raise ConfigError(str(exc), table=TABLES[kind], key="name") from exc
            cls = entry.load()
            for one in expand_sweep(spec, cls):
                params = component_params(cls, one.params, table=one.table,
                                          what=f"{kind} '{one.name}'")
                items.append(Resolved(one, entry.name, cls, params, entry.provider))
        # counted once (not labels.count per label: quadratic in a long sweep)
        twice = [label for label, n in Counter(r.spec.label for r in items).items() if n > 1]
        if twice:
            raise ConfigError(f"'{twice[0]}' names two entries after sweeps were expanded; "
                              "give one a label = \"...\"", table=TABLES[kind])
        out[kind] = items
    _check_model_datasets(out)
    _check_metrics(config, plugins)
    return out


SWEPT_KINDS = ("attack", "defense")


def expand_sweep(spec: ComponentSpec, cls: type) -> list[ComponentSpec]:
    """A list given for a parameter whose type is a single value (a number, a string, a
    flag) is a sweep: one entry per value, labelled ``"<label>, <key> <value>"``; several
    swept keys give every combination. Parameters that take lists themselves are left alone.
    Only attacks and defenses are swept (a robustness curve over eps, a defense strength)."""
    params_type = getattr(cls, "Params", None)
    if spec.kind not in SWEPT_KINDS or params_type is None:
        return [spec]
    hints = typing.get_type_hints(params_type)
    swept = {k: v for k, v in spec.params.items()
             if isinstance(v, list) and k in hints and _single_valued(hints[k])}
    for key, values in swept.items():
        if not values:
            raise ConfigError("a sweep needs at least one value", table=spec.table, key=key)
    if not swept:
        return [spec]
    _check_sweep_size(spec, swept)
    out = []
    for combo in itertools.product(*swept.values()):
        chosen = dict(zip(swept, combo, strict=True))
        label = ", ".join([spec.label] + [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in chosen.items()])
        out.append(dataclasses.replace(
            spec, params={**spec.params, **chosen}, label=label,
            table=f"{TABLES[spec.kind]}.{label}", swept_from=spec.label))
    return out


#: Entries one swept entry may expand to: a robustness curve is tens of values, and the
#: product of a few long lists (300 eps x 300 steps: 90,000 entries, two minutes to resolve
#: before any work) is a typo or a generated file, not a benchmark.
MAX_SWEEP = 1_000


def _check_sweep_size(spec: ComponentSpec, swept: dict[str, list[Any]]) -> None:
    """Refuse a sweep whose product of value lists exceeds :data:`MAX_SWEEP`, before it is
    expanded (expanding it is what takes the time and memory)."""
    total = math.prod(len(v) for v in swept.values())
    if total > MAX_SWEEP:
        sizes = " x ".join(f"{k} ({len(v)} values)" for k, v in swept.items())
        raise ConfigError(f"the sweep {sizes} makes {total} entries, more than {MAX_SWEEP}; "
                          "sweep fewer values, or split it over several entries or runs",
                          table=spec.table, key=next(iter(swept)))


#: Cells one run may plan: past this the grid (datasets x models x defenses x attacks) is a
#: config that multiplies long tables by mistake; planning it would prepare every component
#: first and only then find it cannot finish.
MAX_CELLS = 100_000


def check_grid_size(resolved: dict[str, list[Resolved]]) -> None:
    """Refuse a run of more than :data:`MAX_CELLS` cells (counted as the planner forms them:
    each model's datasets, defenses and attacks), before any component is prepared."""
    cells = 0
    for _, model in model_dataset_pairs(resolved):
        defenses = sum(_selected(d.spec, model.spec.defenses) for d in resolved["defense"])
        attacks = sum(_selected(a.spec, model.spec.attacks) for a in resolved["attack"])
        cells += defenses * attacks
    if cells > MAX_CELLS:
        counts = ", ".join(f"{len(resolved[k])} {TABLES[k]}" for k in KINDS)
        raise ConfigError(f"this config plans {cells} cells ({counts}), more than {MAX_CELLS} "
                          "in one run; narrow it with --only, a model's attacks/defenses/"
                          "datasets keys, or split it into several configs")


def _single_valued(annotation: Any) -> bool:
    """int, float, str, bool, a Literal, or an Optional of one of those."""
    if annotation in (int, float, str, bool):
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return True
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(_single_valued(a) for a in args)
    return False


def _check_metrics(config: RunConfig, plugins: PluginSystem) -> None:
    if config.run.fad_encoder:
        try:
            plugins.get("encoder", config.run.fad_encoder)
        except ConfigError as exc:
            raise ConfigError(str(exc), table="run", key="fad_encoder") from exc
    for key, level in (("metrics", "sample"), ("set_metrics", "set")):
        for name in getattr(config.run, key):
            try:
                cls = plugins.get("metric", name).load()
            except ConfigError as exc:
                raise ConfigError(str(exc), table="run", key=key) from exc
            if getattr(cls, "level", "sample") != level:
                other = "set_metrics" if level == "sample" else "metrics"
                raise ConfigError(f"metric '{name}' is computed per {getattr(cls, 'level', '?')}"
                                  f"; list it under {other}", table="run", key=key)


def _check_model_datasets(resolved: dict[str, list[Resolved]]) -> None:
    dataset_names = [r.name for r in resolved["dataset"]]
    for model in resolved["model"]:
        for name in model.spec.datasets or ():
            if name not in dataset_names:
                hint = did_you_mean(name, dataset_names)
                raise ConfigError(
                    f"dataset '{name}' is not in this config's [[datasets]].{hint}",
                    table=model.spec.table, key="datasets",
                )


def apply_only(resolved: dict[str, list[Resolved]], only: list[str]) -> dict[str, list[Resolved]]:
    """Keep only the components named by ``--only KIND=NAME`` (repeatable; union per kind)."""
    wanted: dict[str, set[str]] = {}
    for item in only:
        kind, sep, name = item.partition("=")
        kind = kind.strip()
        if not sep or kind not in KINDS or not name.strip():
            raise ConfigError(
                f"--only takes KIND=NAME with KIND one of {', '.join(KINDS)}; got {item!r}"
            )
        wanted.setdefault(kind, set()).add(name.strip())
    out = dict(resolved)
    for kind, names in wanted.items():
        present = ({r.name for r in resolved[kind]} | {r.spec.label for r in resolved[kind]}
                   | {r.spec.swept_from for r in resolved[kind] if r.spec.swept_from})
        for name in names:
            if name not in present:
                hint = did_you_mean(name, sorted(present))
                raise ConfigError(
                    f"--only {kind}={name!r}: no such {kind} in this config.{hint} "
                    f"The config has: {', '.join(sorted(present))}."
                )
        out[kind] = [r for r in resolved[kind] if r.name in names or r.spec.label in names
                     or r.spec.swept_from in names]
    return out


def resolve_only(config: RunConfig, plugins: PluginSystem, only: list[str]
                 ) -> dict[str, list[Resolved]]:
    """:func:`resolve`, narrowed by ``--only`` (:func:`apply_only`), keeping the attacks a
    survivor cascade needs (:func:`with_cascade_predecessors`)."""
    full = resolve(config, plugins)
    narrowed = apply_only(full, only)
    out = with_cascade_predecessors(full, narrowed) if config.run.cascade else narrowed
    check_grid_size(out)
    return out


def with_cascade_predecessors(full: dict[str, list[Resolved]],
                              narrowed: dict[str, list[Resolved]]) -> dict[str, list[Resolved]]:
    """``narrowed`` (``--only``) with, under ``[run] cascade``, every attack that comes before
    a chosen one in the config: a cascade cell attacks what the earlier attacks of its row
    left, so its key (and result) needs them; finished ones are found in the store, not run
    again."""
    chosen = {id(r) for r in narrowed["attack"]}
    last = max((i for i, r in enumerate(full["attack"]) if id(r) in chosen), default=-1)
    return narrowed | {"attack": full["attack"][: last + 1]} if last >= 0 else narrowed


def model_dataset_pairs(
    resolved: dict[str, list[Resolved]],
) -> list[tuple[Resolved, Resolved]]:
    """(dataset, model) pairs to evaluate: the model's ``datasets`` or every dataset of its task."""
    pairs = []
    for model in resolved["model"]:
        for ds in resolved["dataset"]:
            if model.spec.datasets is not None:
                if ds.name not in model.spec.datasets and ds.spec.name not in model.spec.datasets:
                    continue
                if ds.cls.task != model.cls.task:
                    raise ConfigError(
                        f"model '{model.name}' ({model.cls.task}) cannot be evaluated on dataset "
                        f"'{ds.name}' ({ds.cls.task})", table=model.spec.table, key="datasets",
                    )
            elif ds.cls.task != model.cls.task:
                continue
            pairs.append((ds, model))
    return pairs


@dataclass
class Plan:
    """Every cell of a run, resolved, and what the leaderboard header says of each dataset."""

    specs: list[CellSpec]
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)  # by dataset label


def plan_cells(
    resolved: dict[str, list[Resolved]], ws: Workspace, settings: RunSettings, *, quick: bool
) -> Plan:
    """Resolve every cell once: prepare datasets (fingerprints), load models (weights), prepare
    attacks (threat model, inpainter weights). Raises :class:`ConfigError` on a mismatch the
    config must fix (labels of a model that do not match its dataset)."""
    pairs = model_dataset_pairs(resolved)
    datasets: dict[str, Any] = {}
    meta: dict[str, dict[str, Any]] = {}
    for ds in resolved["dataset"]:
        if any(d is ds for d, _ in pairs):
            prepared = ws.dataset(ds.name, ds.params_dict())
            datasets[ds.spec.label] = prepared
            meta[ds.spec.label] = {"name": ds.name, "fingerprint": prepared.fingerprint(),
                                   "skipped": [list(p) for p in prepared.problems()]}
    _warn_short_splits(pairs, datasets, settings, quick=quick)
    models: dict[str, ComponentRef] = {}
    random_models: set[str] = set()  # labels of models whose own forward draws (dropout on)
    for ds, model in pairs:
        loaded = ws.model(model.name, model.params_dict())
        if model.spec.label not in models:
            models[model.spec.label] = model.ref(weights=loaded.weights_digest())
            clips_here = measurement_clips(datasets[ds.spec.label])
            if measure_model(loaded, ws.device, clips_here).attack_randomized:
                random_models.add(model.spec.label)
        _check_labels(model, loaded, datasets[ds.spec.label])
    rates = {model.spec.label: ws.model(model.name, model.params_dict()).sample_rate
             for _, model in pairs}
    clips: dict[int, Any] = {}  # rate -> real clips the defenses' flags are measured on
    for ds, model in pairs:
        clips.setdefault(rates[model.spec.label], measurement_clips(datasets[ds.spec.label]))
    defenses = [_plan_defense(d, ws, clips) for d in resolved["defense"]]
    attacks = []
    for attack in resolved["attack"]:
        made = ws.make("attack", attack.name, attack.params_dict())
        made.prepare(ws.ctx)
        attacks.append((attack, attack.ref(weights=made.weights_digest()), made.threat,
                        made.threat_model()))
    loaded_metrics = [ws.metric(name) for name in (*settings.metrics, *settings.set_metrics)]
    metric_weights = tuple(sorted((m.name, m.weights_digest()) for m in loaded_metrics
                                  if m.weights_digest() is not None))
    batch_sizes = {model.spec.label: _batch_size(settings, ws, model, datasets[ds.spec.label])
                   for ds, model in pairs}
    specs = []
    repeats: list[str] = []  # non-adaptive cells on defenses with nothing to adapt to
    for ds, model in pairs:
        ds_ref = ds.ref(fingerprint=meta[ds.spec.label]["fingerprint"])
        for defense in defenses:
            if not _selected(defense.resolved.spec, model.spec.defenses):
                continue
            behaviour = defense.behaviour.get(rates[model.spec.label])
            defense_ref = _defense_ref(defense, ws, model, datasets[ds.spec.label])
            row: list[tuple[CellSpec, Resolved]] = []
            for attack, attack_ref, threat, threat_model in attacks:
                if not _selected(attack.spec, model.spec.attacks):
                    continue
                how = evaluation(settings, defense.resolved.spec, attack.spec, threat, behaviour,
                                 model_randomized=model.spec.label in random_models)
                if how is None:
                    repeats.append(f"{defense.resolved.spec.label} / {attack.spec.label}")
                    continue
                run = CellRun(seed=settings.seed,
                              samples=model_samples(model.spec, settings, quick=quick),
                              batch_size=batch_sizes[model.spec.label],
                              keep_audio=settings.keep_audio,
                              fad_encoder=settings.fad_encoder,
                              metrics=tuple(settings.metrics) + tuple(settings.set_metrics),
                              pseudo_labels=model.spec.pseudo_labels,
                              metric_weights=metric_weights, amp=settings.amp, **how)
                row.append((CellSpec(ds_ref, models[model.spec.label], defense_ref,
                                     attack_ref, run, threat, threat_model, harness_version()),
                            attack))
            gated = settings.sanity and defense.defended
            specs += protocol_row(row, cascade=settings.cascade, sanity=gated,
                                  behaviour=behaviour)
    if repeats:
        from musicbench.ui import print_note

        unique = sorted(set(repeats))
        print_note(f"not planned: {len(repeats)} non-adaptive cell(s) on defenses with nothing "
                   "to adapt to (deterministic and differentiable: identical to their adaptive "
                   f"twins): {', '.join(unique[:6])}{' ...' if len(unique) > 6 else ''}")
    return Plan(specs, meta)


def _batch_size(settings: RunSettings, ws: Workspace, model: Resolved, dataset: Any) -> int:
    """The configured batch size, or (``batch_size = 0``) the one probed for this model on the
    run's device, once per model (:mod:`musicbench.batch_probe`)."""
    if settings.batch_size != AUTO_BATCH:
        return settings.batch_size
    loaded = ws.model(model.name, model.params_dict())

    def probe() -> int:
        split = (dataset.queries("test") if dataset.task == "retrieval"
                 else dataset.examples("test"))
        clip = split[0].audio if len(split) else torch.zeros(loaded.input_samples)
        return probed_batch_size(loaded, clip, ws.device)

    return ws.memo(("probed-batch-size", model.spec.label, str(ws.device)), probe)


def _selected(spec: ComponentSpec, labels: tuple[str, ...] | None) -> bool:
    """Whether a model entry's ``attacks`` / ``defenses`` list (None: all) takes ``spec``,
    by its label or, for an entry expanded from a sweep, the sweep's label."""
    return labels is None or spec.label in labels or spec.swept_from in labels


def _warn_short_splits(pairs: list[tuple[Resolved, Resolved]], datasets: dict[str, Any],
                       settings: RunSettings, *, quick: bool) -> None:
    """A warning for each dataset whose test split holds fewer clips than a model's cells ask
    for: those cells evaluate the whole split (the n column and the leaderboard header say how
    many), not the number in the config."""
    from musicbench.ui import print_note

    told: set[tuple[str, int]] = set()
    for ds, model in pairs:
        asked = model_samples(model.spec, settings, quick=quick)
        if not asked or (ds.spec.label, asked) in told:
            continue
        told.add((ds.spec.label, asked))
        have = len(datasets[ds.spec.label].queries("test"))
        if have < asked:
            where = (f"[{model.spec.table}] samples" if model.spec.samples is not None
                     and not (quick and settings.quick_samples and asked == settings.quick_samples)
                     else "[run] " + ("quick_samples" if quick else "samples"))
            print_note(f"warning: {where} = {asked}, but dataset '{ds.spec.label}' has only "
                       f"{have} test clips: its cells evaluate {have} clips (the n column)",
                       "yellow")


@dataclass
class _PlannedDefense:
    resolved: Resolved
    ref: ComponentRef
    behaviour: dict[int, DefenseBehaviour]  # by sample rate; empty for training defenses
    # False for an identity preprocessor (the undefended row, `none`): it gets no sanity
    # gates. Measured on the clips, never told by the defense's name.
    defended: bool = True


def measurement_clips(dataset: Any) -> Any:
    """``audio[B, T]``: the first two test clips of ``dataset``, on which the planner and the
    runner measure a defense's flags besides the probe (the same clips for both)."""
    import torch

    examples = list(dataset.examples("test"))[:2]
    return torch.stack([e.audio for e in examples]) if examples else None


def _plan_defense(defense: Resolved, ws: Workspace, clips: dict[int, Any]) -> _PlannedDefense:
    """Bind and load a defense at every model rate of the run (a parameter the rate makes
    impossible, such as a cutoff above Nyquist, is a config error now, before any work) and
    measure how it behaves there, on the probe and on real clips at that rate."""
    behaviour: dict[int, DefenseBehaviour] = {}
    made = None
    identity = True
    for rate in sorted(clips):
        try:
            made = ws.defense(defense.name, defense.params_dict(), rate)
        except ConfigError as exc:
            raise ConfigError(exc.message, table=defense.spec.table, key=exc.key) from None
        if made.kind == "preprocessor":
            try:
                behaviour[rate] = measure(made, rate, ws.device, clips[rate])
                identity = identity and _is_identity(made, clips[rate], ws.device)
            except Exception:  # noqa: BLE001, S110 - a broken defense costs its cells, not the run:
                pass  # the runner measures again and fails each cell with the error
        else:
            identity = False
    weights = made.weights_digest() if made is not None else None
    return _PlannedDefense(defense, defense.ref(weights=weights), behaviour,
                           defended=not identity)


def _is_identity(defense: Any, clips: Any, device: torch.device) -> bool:
    """Whether a preprocessor returns the measurement clips unchanged, bit for bit: the
    undefended row, whatever the defense is called."""
    if clips is None:
        return False
    x = clips.to(device, torch.float32)
    with torch.no_grad():
        out = defense.forward(x, torch.Generator(device=x.device).manual_seed(0))
    return bool(out.shape == x.shape and torch.equal(out, x))


def _defense_ref(defense: _PlannedDefense, ws: Workspace, model: Resolved,
                 dataset: Any) -> ComponentRef:
    """The defense's entry in a cell key. A training defense's ``weights`` are those of the
    model it fits to this (model, dataset): their content address,
    :func:`musicbench.training.defended_key` (base weights, dataset fingerprint, defense
    version and params), known without training them, so planning never trains a defense and
    a retrained base makes new cells."""
    if defense.resolved.cls.kind != "training":
        return defense.ref
    from musicbench.training import defended_key

    base = ws.model(model.name, model.params_dict())
    made = ws.defense(defense.resolved.name, defense.resolved.params_dict(), base.sample_rate)
    return defense.resolved.ref(weights=defended_key(made, base, dataset))


def evaluation(settings: RunSettings, defense: ComponentSpec, attack: ComponentSpec,
               threat: str, behaviour: DefenseBehaviour | None, *,
               model_randomized: bool = False) -> dict[str, Any] | None:
    """How the harness attacks and judges one (defense, attack) pair (docs/architecture.md, 'Evaluation protocol'),
    or None when the cell would only repeat another.

    EOT where the defense is randomized (declared or measured), for white-box and black-box
    attacks alike (``eot_samples``: an attack entry's wins over the defense entry's, which
    wins over ``[run]``): a black-box attack's every query is averaged over the draws and
    each draw counts against its budget, so it stops on a clip only when the draws say so,
    never on one draw's resampling noise; judgement over ``eval_draws`` draws wherever the
    defense is randomized; BPDA where it lacks useful gradients and the attack is white-box.
    A defense entry's own ``eot_samples`` or ``bpda = true`` overrule what the defense
    declares and the harness measures (a reviewer forcing EOT or BPDA on a defense).
    ``adaptive = false`` turns EOT and BPDA off (a non-adaptive evaluation, for contrast); on
    a defense with nothing to adapt to such a cell would repeat its adaptive twin exactly, so
    it is not planned. ``adaptive = "oblivious"``: the attack crafts on the undefended model
    (the transfer setting defense papers report); the harness still judges through the
    defense. A model whose own forward draws (``model_randomized``, measured by
    :func:`musicbench.defense_checks.measure_model`: dropout left on) is attacked and judged
    like a randomized defense."""
    adaptive = settings.adaptive if attack.adaptive is None else attack.adaptive
    oblivious, naive = adaptive == "oblivious", adaptive is False
    white = threat == "white-box"
    # behaviour None: a training defense (a model like any other), or a broken one; there is
    # no preprocessor to force EOT or BPDA on, only the model's own draws to adapt to
    if behaviour is None and not model_randomized:
        return None if naive else {"oblivious": oblivious}
    preprocessor = behaviour is not None
    randomized = model_randomized or (preprocessor and behaviour.attack_randomized)
    eot = attack.eot_samples or defense.eot_samples or settings.eot_samples
    forced_eot = preprocessor and defense.eot_samples is not None
    uses_eot = (randomized or forced_eot) and eot > 1
    uses_bpda = white and preprocessor and (behaviour.attack_with_bpda or bool(defense.bpda))
    if naive and not (uses_eot or uses_bpda):
        return None
    plain = naive or oblivious
    return {
        "eot_samples": eot if uses_eot and not plain else 1,
        "eval_draws": (defense.eval_draws or settings.eval_draws) if randomized else 1,
        "bpda": uses_bpda and not plain,
        "adaptive": not naive,
        "oblivious": oblivious,
    }


def harness_version() -> str:
    """What cell keys hold of the harness: its release and its results version."""
    return f"{musicbench.__version__}+results.{musicbench.RESULTS_VERSION}"


def _check_labels(model: Resolved, loaded: Any, dataset: Any) -> None:
    """A classifier is scored on the dataset's labels mapped onto its own by name. Labels that
    do not match are a config error unless the model entry chose pseudo-label mode."""
    if loaded.task != "classification" or model.spec.pseudo_labels:
        return
    missing = [lab for lab in dataset.labels if lab not in loaded.labels]
    if missing:
        hints = "".join(f" '{lab}':{did_you_mean(lab, loaded.labels) or ' no close match.'}"
                        for lab in missing[:5])
        raise ConfigError(
            f"dataset '{dataset.name}' has labels that model '{model.name}' does not know:{hints}"
            " Rename the labels, or set pseudo_labels = true on the model to score it against"
            " its own clean top-1 (pseudo-label mode).",
            table=model.spec.table, key="pseudo_labels",
        )
