"""Conformance checks for one plugin (``musicbench validate NAME``), the same checks the
contract tests apply to every built-in. Odd lengths, determinism, budgets, ranges.

Every check is explicit (:func:`require` raises :class:`CheckFailed`), never a bare
``assert``: ``python -O`` strips assert statements, and a validator that passes everything
under ``-O`` is worse than none (HEAR's validator raises for the same reason).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from musicbench.cache import cache_dir
from musicbench.defense_checks import (
    SURROGATE_ERROR_MAX,
    SURROGATE_FIDELITY_MAX,
    checked_output,
    measure,
    measure_model,
)
from musicbench.environment import resolve_device
from musicbench.errors import ConfigError, GradientRefusedError, UnknownNameError, did_you_mean
from musicbench.hookspecs import REGISTER_HOOKS
from musicbench.plugins import PluginSystem, get_plugins
from musicbench.testing import TinyClassifier, tone_batch
from musicbench.victim import ReferenceSet, Victim, begin_batch, judge
from musicbench.workspace import Workspace

MEASUREMENT_DATASET = "m21-styles"
"""The dataset ``musicbench validate`` measures a defense on besides the probe (built in,
rendered locally on first use, 16 kHz: the default run's dataset)."""

DEFAULT_CLIPS = "<default>"
"""``validate_plugin(clips=...)``'s default (see there)."""


class CheckFailed(Exception):
    """The plugin broke the check being run; the message says how (with the values seen)."""


def require(condition: bool | torch.Tensor, message: str) -> None:
    """Fail the running check with ``message`` unless ``condition`` holds."""
    if not bool(condition):
        raise CheckFailed(message)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class ValidationReport:
    kind: str
    name: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def check(self, name: str, fn: Callable[[], Any],
              reraise: tuple[type[Exception], ...] = ()) -> Any:
        """Run ``fn`` and record the check: :class:`CheckFailed` and :class:`ConfigError` (a
        parameter the plugin rejects) fail it with their one-line message, any other exception
        (the plugin crashed) with its type, message and the last frames of its traceback.
        Exceptions of the ``reraise`` types are not recorded but raised (the user's errors)."""
        try:
            value = fn()
        except reraise:
            raise
        except (CheckFailed, ConfigError) as exc:
            self.checks.append(Check(name, False, str(exc)))
            return None
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}"
            self.checks.append(Check(name, False, detail))
            return None
        self.checks.append(Check(name, True))
        return value


def find_kind(plugins: PluginSystem, name: str, kind: str | None) -> str:
    if kind is not None:
        kind = kind.rstrip("s")
        if kind not in REGISTER_HOOKS:
            raise ConfigError(f"unknown kind '{kind}'; kinds: {', '.join(REGISTER_HOOKS)}")
        plugins.get(kind, name)
        return kind
    kinds = [k for k in REGISTER_HOOKS if name in plugins.registry(k)]
    if not kinds:
        names = sorted({n for k in REGISTER_HOOKS for n in plugins.registry(k).names()})
        import difflib

        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(f"no plugin called '{name}'.{hint}")
    if len(kinds) > 1:
        raise ConfigError(f"'{name}' names a plugin of each of these kinds: {', '.join(kinds)}; "
                          "pass --kind")
    return kinds[0]


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["root='/data/gtzan'", "steps=5"]`` -> a parameter mapping; values are TOML
    (a bare word that is not valid TOML is taken as a string: ``root=/data/gtzan``)."""
    import tomllib

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param takes KEY=VALUE, got '{item}'")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw
    return out


def validate_plugin(
    name: str,
    *,
    kind: str | None = None,
    device: str | None = None,
    plugins: PluginSystem | None = None,
    params: dict[str, Any] | None = None,
    sample_rate: int = 16_000,
    clips: str | None = DEFAULT_CLIPS,
) -> ValidationReport:
    """Run the conformance checks of ``name`` (a defense is bound to ``sample_rate``).

    ``clips``: the dataset whose first two test clips a defense's flags are measured on
    besides the probe, as a run measures them on its own dataset's
    (:func:`musicbench.planner.measurement_clips`); resampled when its rate is not
    ``sample_rate``. By default :data:`MEASUREMENT_DATASET` when checking against the
    installed plugins (``plugins`` None: what ``musicbench validate`` does), and the probe
    only with a plugin system of the caller's own (tests with a private cache, where
    rendering m21-styles would take minutes: name a dataset to measure on real clips). None,
    or a dataset the plugin system lacks: the probe only (the check's name says which)."""
    if clips == DEFAULT_CLIPS:
        clips = MEASUREMENT_DATASET if plugins is None else None
    plugins = plugins or get_plugins()
    kind = find_kind(plugins, name, kind)
    ws = Workspace(plugins, cache_dir=cache_dir(), device=resolve_device(device or "auto"))
    # The parameters are checked first, given or not: a rejected value, or a required one the
    # user left out (the folder dataset's manifest), is a usage error (exit 2), not a failure
    # of the plugin.
    try:
        made = ws.make(kind, name, params)  # raises ConfigError ([table] key: message)
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - the plugin's own crash: the checks below record it
        made = None
    if params and kind == "defense" and getattr(made, "kind", None) == "preprocessor":
        made.bind(sample_rate)  # a cutoff above Nyquist is the user's value, too
    report = ValidationReport(kind, name)
    checks = {"attack": _attack, "model": _model, "dataset": _dataset, "defense": _defense,
              "metric": _metric, "inpainter": _inpainter, "encoder": _encoder}
    if kind not in checks:
        report.check("instantiates", lambda: ws.make(kind, name, params))
        return report
    if kind == "defense":
        _defense(ws, name, params or {}, report, sample_rate, clips)
    else:
        checks[kind](ws, name, params or {}, report)
    return report


def _attack(ws: Workspace, name: str, params: dict[str, Any], report: ValidationReport) -> None:
    device = ws.device
    attack = report.check("instantiates with default parameters",
                          lambda: ws.make("attack", name, params))
    if attack is None:
        return
    if report.check("prepares (loads what it needs besides the victim)",
                    lambda: attack.prepare(ws.ctx) or True) is None:
        return
    model = TinyClassifier()
    model.load(ws.ctx)
    x = tone_batch(4, model.input_samples + 37, seed=1, device=device)  # odd length: windows
    probe = Victim(model)
    with torch.no_grad():
        y = judge(probe).predict(x)
    y[0] = (y[0] + 1) % len(model.labels)  # sample 0 is already misclassified
    black_box = attack.threat == "black-box"
    budget = getattr(attack.params, "budget", None)

    def run(seed: int):
        victim = Victim(model, allow_gradients=not black_box,
                        budget=budget if black_box else None)
        gen = torch.Generator(device=device).manual_seed(seed)
        # ids as the harness gives them (an attack reading per-clip files looks them up)
        ids = [f"validate-{i:03d}" for i in range(x.shape[0])]
        return victim, attack(victim, x, y, generator=gen, clip_ids=ids)

    # __call__ checks shape, dtype, device, finiteness, [-1, 1], bound and autograd state.
    first = report.check("output contract (shape, dtype, device, finite, [-1, 1], bound)",
                         lambda: run(0))
    if first is None:
        return
    victim, res = first
    report.check("deterministic for a fixed seed",
                 lambda: require(torch.equal(run(0)[1].adv, res.adv), "two runs differ"))
    if attack.transfer:
        report.check("transfer: makes no query of the target", lambda: require(
            int(res.queries.sum()) == 0, f"queries {res.queries.tolist()}"))
    else:
        report.check("counts its queries", lambda: require(
            bool((res.queries > 0).all()), f"queries {res.queries.tolist()}"))
    if budget is not None:
        report.check(f"queries within budget {budget}", lambda: require(
            int(res.queries.max()) <= budget, f"max queries {int(res.queries.max())}"))
    report.check("stops early on a sample that is already wrong", lambda: require(
        int(res.queries[0]) <= 2, f"{int(res.queries[0])} queries on an already-wrong sample"))
    if black_box:
        def refuses() -> None:
            v = Victim(model, allow_gradients=False)
            begin_batch(v, x.shape[0])
            try:
                v.loss(x.clone().requires_grad_(True), y)
            except GradientRefusedError:
                return
            raise CheckFailed("a black-box victim handed out gradients")
        report.check("black-box: victim refuses gradients", refuses)


def _model(ws: Workspace, name: str, params: dict[str, Any], report: ValidationReport) -> None:
    model = report.check("loads (training it if it must)", lambda: _loaded(ws, name, params))
    if model is None:
        return
    device = ws.device
    make_victim, k = _victim_factory(model, device, report)
    if make_victim is None:
        return
    for label, length in (("input length", model.input_samples),
                          ("odd longer length", int(model.input_samples * 1.5) + 7),
                          ("shorter length", model.input_samples // 2 + 3)):
        x = tone_batch(3, length, seed=2, device=device)
        victim = make_victim()
        report.check(f"scores [B, K] at {label} ({length} samples)",
                     lambda x=x, victim=victim: _scores(victim, x, k))
        if not report.checks[-1].ok:
            return
    x = tone_batch(2, model.input_samples, seed=3, device=device)
    victim = make_victim()
    with torch.no_grad():
        a = judge(victim).scores(x)

    def deterministic() -> None:
        # The run's measurement (musicbench.defense_checks.measure_model): a randomized model
        # is attacked with EOT there; a plugin should not be one by accident.
        behaviour = measure_model(model, device, x)
        require(not behaviour.flags(), "; ".join(behaviour.flags()))
    report.check("deterministic (the same measurement as a run's)", deterministic)

    def batch_independent() -> None:
        # A module left in train mode scores a clip by its batch (batch norm's batch statistics,
        # dropout) and drifts (running statistics update on every forward): every figure of a
        # run would then depend on the batch size and on what ran before.
        require(not model.module().training, "module() is in train mode; call .eval() in load()")
        with torch.no_grad():
            alone = judge(victim).scores(x[1:])
        require(torch.allclose(alone, a[1:], rtol=1e-4, atol=1e-5),
                "a clip scores differently alone than in a batch (max difference "
                f"{(alone - a[1:]).abs().max().item():.3g}): batch statistics in the forward?")
    report.check("eval mode, each clip scored independently of its batch", batch_independent)

    def grad() -> None:
        xg = x.clone().requires_grad_(True)
        begin_batch(victim, 2)
        loss = victim.loss(xg, a.argmax(-1))
        (g,) = torch.autograd.grad(loss.sum(), xg)
        require(torch.isfinite(g).all(), "non-finite input gradient")
        require(g.abs().sum() > 0, "zero input gradient: is the front end inside the model?")
    report.check("differentiable from the waveform", grad)
    _cam_layer(model, make_victim(), x, report)


def _cam_layer(model: Any, victim: Victim, x: torch.Tensor, report: ValidationReport) -> None:
    """``cam_layer`` (what Grad-CAM, hence MAIA-WB, reads) names a submodule of ``module()``
    whose activation is ``[N, C, T']`` or ``[N, C, F', T']`` and depends on the audio."""
    layer = model.cam_layer
    if not layer:
        report.check("cam_layer: none declared (Grad-CAM attacks such as maia-wb cannot run "
                     "on this model)", lambda: None)
        return

    def reads() -> None:
        net = model.module()
        names = [n for n, _ in net.named_modules() if n]
        if layer not in names:
            shown = ", ".join(names[:12]) + (f" (and {len(names) - 12} more)"
                                             if len(names) > 12 else "")
            raise CheckFailed(
                f"cam_layer '{layer}' is not a submodule of module() "
                f"({type(net).__name__}).{did_you_mean(layer, names)} Set cam_layer to one of "
                f"its named_modules(): {shown or 'it has none'}")
        acts: list[torch.Tensor] = []
        handle = net.get_submodule(layer).register_forward_hook(
            lambda _m, _i, out: acts.append(out[0] if isinstance(out, (tuple, list)) else out))
        try:
            xg = x.clone().requires_grad_(True)
            begin_batch(victim, x.shape[0])
            with torch.enable_grad():
                scores = victim.scores(xg)
        finally:
            handle.remove()
        require(bool(acts), f"cam_layer '{layer}' did not run in a forward pass")
        bad = [tuple(a.shape) for a in acts if a.dim() not in (3, 4)]
        require(not bad, f"cam_layer '{layer}' gives activations of shape {bad[:1]}; Grad-CAM "
                         "reads [N, C, T'] or [N, C, F', T'] with time last")
        grads = torch.autograd.grad(scores.sum(), acts, allow_unused=True)
        require(any(g is not None and bool(g.abs().sum() > 0) for g in grads),
                f"the scores do not depend on cam_layer '{layer}' (zero or no gradient): "
                "name a block the logits are computed from")
    report.check(f"cam_layer '{layer}' is a submodule Grad-CAM can read", reads)


def _loaded(ws: Workspace, name: str, params: dict[str, Any]):
    return ws.model(name, params)


def _victim_factory(model, device: torch.device, report: ValidationReport):  # noqa: ANN001
    """Victims for the checks and the number of scores K: the labels of a classifier, or three
    tone 'works' as the reference set of a retrieval model (after checking its embeddings)."""
    if model.task == "classification":
        return (lambda: Victim(model)), len(model.labels)
    refs_audio = tone_batch(3, model.input_samples, seed=9, device=device)

    def embeddings() -> torch.Tensor:
        with torch.no_grad():
            emb = model.embed(refs_audio)
        require(emb.dim() == 2 and emb.shape[0] == 3,
                f"embed gave {tuple(emb.shape)}, expected [3, D]")
        require(torch.isfinite(emb).all(), "non-finite embeddings")
        norms = emb.norm(dim=1)
        require(torch.allclose(norms, torch.ones_like(norms), atol=1e-4),
                f"embeddings are not L2-normalised (norms {norms.tolist()})")
        return emb
    emb = report.check("embed -> [B, D], L2-normalised", embeddings)
    if emb is None:
        return None, 0
    refs = ReferenceSet(emb, torch.arange(3, device=device), 3)
    return (lambda: Victim(model, references=refs)), 3


def _scores(victim: Victim, x: torch.Tensor, k: int) -> None:
    with torch.no_grad():
        out = judge(victim).scores(x)
    require(out.shape == (x.shape[0], k), f"got {tuple(out.shape)}, expected ({x.shape[0]}, {k})")
    require(out.dtype == torch.float32, f"dtype {out.dtype}, expected torch.float32")
    require(torch.isfinite(out).all(), "non-finite logits")


def _dataset(ws: Workspace, name: str, params: dict[str, Any], report: ValidationReport) -> None:
    # a ConfigError while preparing (a manifest or root that is not there) is the user's to
    # fix: it ends the command (exit 2) instead of failing a check of the plugin
    ds = report.check("prepares", lambda: ws.dataset(name, params), reraise=(ConfigError,))
    if ds is None:
        return
    for source, reason in ds.problems():  # every input the user may want to fix, in full
        logging.getLogger("musicbench.validate").warning("%s: skipped %s: %s", name, source,
                                                         reason)
    works: dict[str, str] = {}
    for split in ("train", "valid", "test"):
        examples = report.check(f"split '{split}' is not empty", lambda s=split: _nonempty(ds, s))
        if examples is None:
            continue

        def clips(examples=examples, split=split) -> None:
            for e in examples:
                a = e.audio
                if a.dim() != 1 or a.dtype != torch.float32:
                    raise CheckFailed(f"{e.id}: audio {a.dtype} of shape {tuple(a.shape)}, "
                                      "expected torch.float32 of shape [T]")
                if not torch.isfinite(a).all():
                    raise CheckFailed(f"{e.id}: non-finite samples")
                if a.abs().max() > 1.0:
                    raise CheckFailed(f"{e.id}: peak {float(a.abs().max()):.3g} is outside "
                                      "[-1, 1]")
                if ds.task == "classification" and not (
                        e.label is not None and 0 <= e.label < len(ds.labels)):
                    raise CheckFailed(f"{e.id}: label {e.label!r} is not an index into the "
                                      f"{len(ds.labels)} labels")
                work = e.work_id or e.id
                other = works.setdefault(work, split)
                if other != split:
                    raise CheckFailed(f"work '{work}' is in splits {other} and {split}")
        report.check(f"split '{split}': clips are float32 mono in [-1, 1], split by work", clips)
    if ds.task == "retrieval":
        def query_sets() -> None:
            for split in ("train", "valid", "test"):
                queries, refs = ds.queries(split), ds.references(split)
                if split == "test":
                    require(bool(queries) and bool(refs),
                            f"the test split has {len(queries)} queries and {len(refs)} "
                            "references; it needs both")
                ref_works = {e.work_id for e in refs}
                lost = sorted({e.work_id for e in queries} - ref_works)
                require(not lost,
                        f"split '{split}': queries of works without a reference: {lost[:3]}")
        report.check("retrieval: every query's work has a reference", query_sets)
    fresh = ws.make("dataset", name, params)

    def stable() -> None:
        fresh.prepare(ws.ctx)
        require(fresh.fingerprint() == ds.fingerprint(),
                f"fingerprint changed on re-prepare: {ds.fingerprint()!r} then "
                f"{fresh.fingerprint()!r}")
    report.check("fingerprint is stable", stable)


def _nonempty(ds, split: str):  # noqa: ANN001
    examples = ds.examples(split)
    require(len(examples) > 0, f"split '{split}' has no examples")
    return examples


def _defense(ws: Workspace, name: str, params: dict[str, Any], report: ValidationReport,
             sample_rate: int = 16_000, clips: str | None = None) -> None:
    """A preprocessor binds and loads at ``sample_rate``; keeps the output contract; is
    reproducible under a fixed generator; and its declared flags are not weaker than what the
    harness measures (docs/architecture.md, 'Evaluation protocol'): a defense that varies
    between draws must declare ``randomized``, one without useful input gradients must not declare
    ``differentiable``.
    The flags are measured as a run measures them (:func:`measure`, on the probe and on the
    first two test clips of ``clips``); the BPDA surrogate's fidelity is printed, and a
    surrogate far from the defense is a warning (:meth:`DefenseBehaviour.warnings`), not a
    failure."""
    made = report.check("instantiates", lambda: ws.make("defense", name, params))
    if made is None or made.kind != "preprocessor":
        return
    defense = report.check(f"binds to {sample_rate} Hz and loads",
                           lambda: ws.defense(name, params, sample_rate))
    if defense is None:
        return
    x = tone_batch(3, sample_rate + 1, seed=4, device=ws.device)  # odd length: framing

    def out(seed: int) -> torch.Tensor:
        with torch.no_grad():
            return defense.forward(x, torch.Generator(device=ws.device).manual_seed(seed))

    def contract() -> None:
        before = x.clone()
        checked_output(defense, x, out(0))
        require(torch.equal(x, before), "modified its input in place")
    report.check("keeps shape, finite, in [-1, 1]; input untouched", contract)
    report.check("reproducible for a fixed generator state",
                 lambda: require(torch.equal(out(0), out(0)), "two calls with one seed differ"))
    real, source = _measurement_clips(ws, clips, sample_rate)
    behaviour = report.check(f"flags measured on the probe{source}",
                             lambda: measure(defense, sample_rate, ws.device, real))
    if behaviour is None:
        return

    def declared(flag: str) -> None:
        problems = [m for m in behaviour.mismatches() if flag in m]
        require(not problems, "; ".join(problems))
    note = " ".join(f"(note: {n})" for n in behaviour.notes())
    if behaviour.gradient_fd_ratios:
        ratios = ", ".join(f"{r:.3g} at step {h}" for h, r in behaviour.gradient_fd_ratios.items())
        note = (f"(finite differences along the gradient over the autograd slope: {ratios}; "
                f"zero gradient on {behaviour.zero_gradient_fraction:.1%} of the samples) "
                f"{note}").strip()
    report.check(f"declared randomized = {defense.randomized} holds", lambda: declared("random"))
    report.check(f"declared differentiable = {defense.differentiable} holds" +
                 (f" {note}" if note else ""), lambda: declared("differentiable"))
    if behaviour.attack_with_bpda:
        def surrogate() -> None:
            xs = x.clone().requires_grad_(True)
            with torch.enable_grad():
                s = defense.surrogate(xs)
                require(s.shape == x.shape, f"surrogate returned {tuple(s.shape)}")
                (g,) = torch.autograd.grad(s.sum(), xs, allow_unused=True)
            require(g is not None and bool(torch.isfinite(g).all()) and bool(g.abs().sum() > 0),
                    "the surrogate has no finite, nonzero input gradient: BPDA would be blind")
        report.check("BPDA surrogate keeps the shape and has input gradients", surrogate)
        if behaviour.surrogate_fidelity is not None:
            warn = (" — WARNING: BPDA gradients may ignore what the defense does to the clip"
                    if behaviour.warnings() else "")
            report.check(
                "BPDA surrogate fidelity ‖f(x) − g(x)‖ / ‖f(x) − x‖ = "
                f"{behaviour.surrogate_fidelity:.2f} (identity: 1; flagged above "
                f"{SURROGATE_FIDELITY_MAX:g}), off by {behaviour.surrogate_error:.1%} of the "
                f"defense's output (flagged above {SURROGATE_ERROR_MAX:.0%}){warn}", lambda: None)


def _measurement_clips(ws: Workspace, name: str | None, sample_rate: int
                       ) -> tuple[torch.Tensor | None, str]:
    """The first two test clips of dataset ``name`` at ``sample_rate`` (what a run measures a
    defense on, :func:`musicbench.planner.measurement_clips`) and how to name them in a
    check; (None, "") without them."""
    if not name or name not in ws.plugins.registry("dataset"):
        return None, ""
    from musicbench.planner import measurement_clips

    try:
        dataset = ws.dataset(name, {})
    except Exception as exc:  # noqa: BLE001 - the dataset's problem, not the defense's
        return None, f" only (no clips of {name}: {type(exc).__name__}: {exc})"
    audio = measurement_clips(dataset)
    if audio is None:
        return None, ""
    where = f" and {audio.shape[0]} test clips of {name}"
    if dataset.sample_rate != sample_rate:
        import julius

        audio = julius.resample_frac(audio, dataset.sample_rate, sample_rate)
        where += f" (resampled from {dataset.sample_rate} Hz)"
    return audio, where


def _metric(ws: Workspace, name: str, params: dict[str, Any], report: ValidationReport) -> None:
    metric = report.check("instantiates and loads (weights trained on first use)",
                          lambda: ws.metric(name, params))
    if metric is None or getattr(metric, "level", "sample") != "sample":
        return
    x = tone_batch(3, 8000, seed=5)
    y = (x + 0.01 * tone_batch(3, 8000, seed=6)).clamp(-1, 1)

    def shape() -> None:
        v = metric.compute(x, y, 16_000)
        require(v.shape == (3,), f"returned shape {tuple(v.shape)} for 3 pairs, expected (3,)")
        require(torch.isfinite(v).all(), f"non-finite values {v.tolist()}")
    report.check("one finite value per pair", shape)


def _encoder(ws: Workspace, name: str, params: dict[str, Any],
             report: ValidationReport) -> None:
    """Loads; ``embed`` gives ``[B, frames, dim]`` finite frames with ``frames >= 1``, more
    frames for longer clips, rows independent of their batch, deterministic (FAD and PAMT
    need all of these)."""
    encoder = report.check("loads", lambda: ws.encoder(name, params))
    if encoder is None:
        return
    sr = encoder.sample_rate
    x = tone_batch(3, 3 * sr + 37, seed=11, device=ws.device)  # odd length

    def shape() -> torch.Tensor:
        with torch.no_grad():
            e = encoder.embed(x)
        require(e.dim() == 3 and e.shape[0] == 3 and e.shape[2] == encoder.dim,
                f"embed gave {tuple(e.shape)}, expected [3, frames, dim={encoder.dim}]")
        require(e.shape[1] >= 1 and torch.isfinite(e).all(), "no frames, or non-finite")
        return e
    e = report.check(f"embed -> [B, frames, dim={encoder.dim}], finite", shape)
    if e is None:
        return
    with torch.no_grad():
        again, alone = encoder.embed(x), encoder.embed(x[1:2])
        longer = encoder.embed(torch.cat([x, x], dim=1)[:1])
    report.check("deterministic", lambda: require(torch.equal(again, e), "two calls differ"))
    report.check("a row's frames do not depend on its batch", lambda: require(
        torch.allclose(alone[0], e[1], atol=1e-4, rtol=1e-4), "batched and alone differ"))
    report.check("longer clips give more frames", lambda: require(
        longer.shape[1] > e.shape[1], f"{longer.shape[1]} frames for twice the audio, "
                                      f"{e.shape[1]} for once"))


def _inpainter(ws: Workspace, name: str, params: dict[str, Any],
               report: ValidationReport) -> None:
    """Loads; keeps unmasked samples bit-identical; fills every gap (middle, clip edges,
    several per row) with finite, non-silent audio in [-1, 1]; deterministic; gradients reach
    the audio, and reach z wherever a small change of z changes the fill."""
    inpainter = report.check("loads (training it if it must)",
                             lambda: ws.inpainter(name, params))
    if inpainter is None:
        return
    device = ws.device
    sr = inpainter.sample_rate
    x = tone_batch(3, 2 * sr + 37, seed=7, device=device)  # odd length
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[0, sr - 2000 : sr + 2000] = True  # one gap in the middle
    mask[1, :3000] = True  # at the clip's start and end
    mask[1, -2500:] = True
    mask[2, 5000:7000] = True  # several gaps of different lengths
    mask[2, 16000:22000] = True
    gen = torch.Generator(device=device).manual_seed(0)
    z = report.check(f"sample_latent -> [B, latent_dim={inpainter.latent_dim}], finite",
                     lambda: _latent(inpainter, gen))
    if z is None:
        return

    def contract() -> torch.Tensor:
        with torch.no_grad():
            y = inpainter.inpaint(x, mask, z)
        require(y.shape == x.shape and y.dtype == x.dtype,
                f"returned {tuple(y.shape)} {y.dtype} for {tuple(x.shape)} {x.dtype}")
        require(y.device == x.device, f"device {y.device}, input on {x.device}")
        require(torch.isfinite(y).all() and y.abs().max() <= 1.0, "non-finite or outside [-1,1]")
        require(torch.equal(y[~mask], x[~mask]), "unmasked samples changed")
        for b in range(3):
            rms = float(y[b][mask[b]].square().mean().sqrt())
            require(rms > 1e-3, f"row {b}: the gaps stay (nearly) silent (rms {rms:.2g})")
        return y
    y = report.check("fills the gaps: shape, dtype, finite, [-1, 1], unmasked samples "
                     "unchanged, non-silent", contract)
    if y is None:
        return
    with torch.no_grad():
        again = inpainter.inpaint(x, mask, z)
    report.check("deterministic", lambda: require(torch.equal(again, y), "two calls differ"))

    def gradients() -> None:
        xg, zg = x.clone().requires_grad_(True), z.clone().requires_grad_(True)
        out = inpainter.inpaint(xg, mask, zg)
        weight = tone_batch(3, x.shape[1], seed=8, device=device)  # a generic loss
        gx, gz = torch.autograd.grad((out * weight * mask).sum(), (xg, zg), allow_unused=True)
        require(gx is not None and torch.isfinite(gx).all(), "no finite gradient in the audio")
        require(gx.abs().sum() > 0, "zero gradient in the audio through the fill")
        if inpainter.latent_dim == 0:
            return
        gz = torch.zeros_like(z) if gz is None else gz
        require(torch.isfinite(gz).all(), "non-finite gradient in z")
        with torch.no_grad():
            moved = inpainter.inpaint(x, mask, z + 1e-3 * torch.sign(z + 0.5))
        changes = (moved - y).abs().amax(dim=1) > 1e-6
        require(not bool((changes & (gz.abs().sum(1) == 0)).any()),
                "the fill moves with z but its gradient in z is zero")
    report.check("differentiable in the audio and in z", gradients)


def _latent(inpainter: Any, gen: torch.Generator) -> torch.Tensor:
    z = inpainter.sample_latent(3, gen)
    require(z.shape == (3, inpainter.latent_dim),
            f"shape {tuple(z.shape)}, expected (3, {inpainter.latent_dim})")
    require(torch.isfinite(z).all(), "non-finite latent")
    return z
