"""Run configuration (TOML; docs/architecture.md, 'Data flow'): parsing and structural
validation.

Plugin names and parameters are checked against the registries by :mod:`musicbench.planner`.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from musicbench.errors import ConfigError, did_you_mean
from musicbench.files import read_input_file
from musicbench.params import build_params, check_number, check_seed

KINDS = ("dataset", "model", "defense", "attack")
TABLES = {"dataset": "datasets", "model": "models", "defense": "defenses", "attack": "attacks"}
DEFAULT_CONFIG = "<embedded default>"
MAX_SAMPLES = 10_000_000  # clips per dataset (and kept audio files): past any test split
MAX_BATCH = 65_536
MAX_CONFIG_BYTES = 1 << 20
"""A config is a few kB; past 1 MiB it is not one (``/dev/zero`` would fill the memory)."""


@dataclass(frozen=True)
class RunSettings:
    """The ``[run]`` table."""

    name: str = "default"
    seed: int = 0
    device: str = "auto"
    samples: int = 64
    quick_samples: int = 16
    batch_size: int = 32
    keep_audio: int = 2
    executor: str = "local"
    fad_encoder: str = "musicnn"  # encoder plugin for the FAD column; "" = no FAD
    # per-clip metrics of attacked clips (metric plugins of level "sample"); part of the key
    metrics: tuple[str, ...] = ("lsd", "snr")
    # metrics over a cell's clip set (level "set"), each where it applies: FAD needs
    # fad_encoder, mAP/MR1 a retrieval cell
    set_metrics: tuple[str, ...] = ("fad", "map")
    # Adaptive evaluation of defenses (docs/architecture.md, 'Evaluation protocol'), applied
    # by the harness: draws of a randomized defense averaged in every gradient (and black-box
    # score) call (EOT); draws
    # over which success against it is judged; adaptive = false only to show what a
    # non-adaptive evaluation would overstate. [[defenses]] and [[attacks]] entries may
    # override eot_samples (an attack's wins), [[defenses]] eval_draws, [[attacks]] adaptive
    # (true, false, or "oblivious": crafted on the undefended model). EOT applies to
    # white-box attacks by default; a black-box entry gets it only with its own eot_samples.
    # a component without cached weights (a model, inpainter, defense or metric trained on
    # first use) fails its cells with the `musicbench train ...` command to run, instead of
    # training inside the run (a cluster job that must not spend hours training)
    allow_training: bool = True
    # The ray executor (``executor = "ray"``, docs/ray.md): "" starts a local cluster on this
    # machine, "auto" joins the cluster this machine is part of, "HOST:PORT" (or
    # "ray://HOST:PORT") one at that address. Each cell is a task that reserves
    # ray_cpus_per_cell CPUs and ray_gpus_per_cell GPUs (-1: one GPU when the run's device is
    # a GPU, else none); ray_workers cells run at once (0: as many as the cluster's
    # resources allow); ray_local_cpus caps the CPUs a local cluster may use (0: all).
    # "bf16": model forward passes under bfloat16 autocast (GPU speed; part of the cell key:
    # results differ slightly from float32); "": float32
    amp: str = ""
    ray_address: str = ""
    ray_cpus_per_cell: float = 1.0
    ray_gpus_per_cell: float = -1.0
    ray_workers: int = 0
    ray_local_cpus: int = 0
    # Clip shards (docs/ray.md, 'Clip shards'): a cell's clips split into shards of this many
    # (rounded up to whole batches) that run as separate tasks and are kept as they finish;
    # the cell's record is the unsharded one's. 0: whole cells; -1: whole cells with the
    # local executor, 32 clips with ray.
    shard_clips: int = -1
    eot_samples: int = 8
    eval_draws: int = 11  # odd: a tie cannot happen (it would count as not fooled)
    adaptive: bool = True
    # The survivor cascade (AutoAttack's rule): within one (dataset, model, defense, threat
    # model) the attacks run in config order, each only on the clips every earlier one left
    # correct; the last cell's robust accuracy is the worst case, at a fraction of the cost.
    cascade: bool = False
    # Sanity gates on every row with a defense (docs/protocol.md): the
    # first gradient attack of each bounded threat model again at 10x its radius, through the
    # identity with BPDA (differentiable preprocessors), and on the survivors with 5 restarts,
    # 2x steps and 2x EOT draws. false only for demonstrations: the header says so.
    sanity: bool = True

    def __post_init__(self) -> None:
        if self.samples < 0 or self.quick_samples < 0:
            raise ValueError("samples and quick_samples must be >= 0 (0: the whole test split)")
        if self.batch_size < 0:
            raise ValueError("batch_size must be >= 1, or 0 to probe the device's memory")
        for name in ("samples", "quick_samples", "keep_audio"):
            check_number(name, getattr(self, name), at_least=0, at_most=MAX_SAMPLES,
                         integer=True)
        # 0: probed per model on a GPU when the run is planned (32 on a CPU), musicbench.batch_probe
        check_number("batch_size", self.batch_size, at_least=0, at_most=MAX_BATCH, integer=True)
        check_seed("seed", self.seed)
        check_one_line("fad_encoder", self.fad_encoder)
        for name in ("metrics", "set_metrics"):
            values = getattr(self, name)
            for value in values:
                check_one_line(name, value)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} lists a metric twice: {list(values)}")
        if self.keep_audio < 0:
            raise ValueError("keep_audio must be >= 0")
        check_draws("eot_samples", self.eot_samples)
        check_draws("eval_draws", self.eval_draws)
        if self.executor not in EXECUTOR_NAMES:
            raise ValueError(f"executor must be one of {', '.join(EXECUTOR_NAMES)}, got "
                             f"{self.executor!r}")
        check_ray_address(self.ray_address)
        if self.amp not in ("", "bf16"):
            raise ValueError(f"amp must be '' (float32) or 'bf16', got {self.amp!r}")
        check_number("ray_cpus_per_cell", self.ray_cpus_per_cell, above=0, at_most=4096)
        if self.ray_gpus_per_cell != -1:
            check_number("ray_gpus_per_cell", self.ray_gpus_per_cell, at_least=0, at_most=64)
        check_number("ray_workers", self.ray_workers, at_least=0, at_most=MAX_BATCH,
                     integer=True)
        check_number("ray_local_cpus", self.ray_local_cpus, at_least=0, at_most=65_536,
                     integer=True)
        check_number("shard_clips", self.shard_clips, at_least=-1, at_most=MAX_SAMPLES,
                     integer=True)
        check_device_name(self.device)
        check_run_name(self.name)


def check_one_line(key: str, value: str) -> None:
    """A name or label is one line of printable text: it is quoted in one-line error
    messages and set in the leaderboard's tables, where a line break or a control character
    would split or garble them. Raises ``ValueError`` naming the first such character."""
    if isinstance(value, str) and not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        raise ValueError(f"{key} must be one line of printable text, got {value!r} (it holds "
                         f"{bad!r}, a line break or control character)")


MAX_RUN_NAME = 100  # characters; "-quick" and a file system's 255-byte names leave room


def check_run_name(name: str) -> None:
    """``[run] name`` names the folder ``runs/<name>`` a run writes when no ``--out`` is given,
    so it must be one safe path component: ASCII letters, digits, ``-``, ``_`` and ``.``, not
    empty and not ``.`` or ``..`` (``../../x`` or ``/etc`` would write outside ``runs/``, and
    ``""`` and ``"."`` would share one store). Raises ``ValueError`` otherwise."""
    if not isinstance(name, str) or not _RUN_NAME.fullmatch(name) or name in (".", "..") \
            or len(name) > MAX_RUN_NAME:
        raise ValueError(
            f"name must be one folder name of 1 to {MAX_RUN_NAME} letters, digits, '-', '_' "
            f"and '.' (not '.' or '..'; it names runs/<name>), got {name!r}")


_RUN_NAME = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ComponentSpec:
    """One ``[[datasets]]``/``[[models]]``/``[[defenses]]``/``[[attacks]]`` entry, unresolved."""

    kind: str
    name: str
    params: dict[str, Any]
    table: str
    datasets: tuple[str, ...] | None = None  # models only: which datasets they are run on
    label: str = ""  # how tables name it; defaults to the name (needed when a name repeats)
    # models only: clips per dataset for this model's cells instead of [run] samples (a model
    # ten times slower than the others can then share a config without setting its size), and
    # which [[attacks]] (by label) run on it; None = the run's samples / every attack.
    samples: int | None = None
    attacks: tuple[str, ...] | None = None
    # models only: evaluate against the model's clean top-1 ("pseudo-label mode") because the
    # dataset's labels are not the model's; an explicit choice, never a side effect of a typo
    pseudo_labels: bool = False
    # defenses and attacks: per-entry overrides of [run] eot_samples / eval_draws / adaptive
    eot_samples: int | None = None
    eval_draws: int | None = None
    adaptive: bool | str | None = None  # True, False or "oblivious"
    # defenses only: bpda = true attacks the defense through its surrogate (BPDA) whatever it
    # declares or the harness measures: a reviewer can force it on someone else's defense
    bpda: bool | None = None
    # an entry expanded from a sweep (``eps = [0.001, 0.002]``): the label it was written with
    swept_from: str = ""
    # models only: which [[defenses]] (by label) this model's cells use; None = every defense.
    # For a defense whose parameters must differ by model (a training length that suits one
    # model's training split and not another's), each model naming its own entry.
    defenses: tuple[str, ...] | None = None


MAX_DRAWS = 1000
EXECUTOR_NAMES = ("local", "ray")


def ray_host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``HOST:PORT`` or ``ray://HOST:PORT`` address; None for ``""`` and
    ``auto`` (Ray resolves those). Raises ValueError for anything else, port in 1..65535."""
    if address in ("", "auto"):
        return None
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() \
            or not 1 <= int(port) <= 65_535 or any(c in host for c in "/ \t"):
        raise ValueError(f"ray_address must be '', 'auto', HOST:PORT or ray://HOST:PORT, got "
                         f"{address!r}")
    return host, int(port)


def check_ray_address(address: str) -> None:
    """The format check of ``[run] ray_address``; whether anything listens there is the ray
    executor's to find out."""
    ray_host_port(address)


def check_device_name(name: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``: the one check of a device name, whether it
    comes from ``[run] device`` or ``--device`` (any command); whether that device exists here
    is :func:`musicbench.environment.resolve_device`'s to say."""
    index = name[5:] if name.startswith("cuda:") else None
    if name in ("auto", "cpu", "cuda") or (index is not None and index.isascii()
                                            and index.isdigit() and len(index) <= 4):
        return
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")


def check_draws(name: str, value: int) -> None:
    """Draw counts are ints in 1..MAX_DRAWS (an odd eval_draws avoids ties but is not
    required: a tie counts as not fooled)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DRAWS:
        raise ValueError(f"{name} must be an int in 1..{MAX_DRAWS}, got {value!r}")


@dataclass
class RunConfig:
    """A parsed config: settings plus the components of each kind, in file order."""

    run: RunSettings
    components: dict[str, list[ComponentSpec]]
    source: str = DEFAULT_CONFIG
    text: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)


def default_config_text() -> str:
    return resources.files("musicbench").joinpath("default.toml").read_text(encoding="utf-8")


def load_config(path: Path | None) -> RunConfig:
    """Read ``path`` (or the embedded default) and check its structure."""
    if path is None:
        text, source = default_config_text(), DEFAULT_CONFIG
    else:
        raw = read_input_file(path, what="config", max_bytes=MAX_CONFIG_BYTES,
                              holds="a run config is a few kB")
        try:
            # universal newlines, as a file opened in text mode reads it
            text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
        except UnicodeDecodeError as exc:
            line = exc.object[: exc.start].count(b"\n") + 1
            raise ConfigError(f"config '{path}' is not UTF-8 text (TOML must be): byte "
                              f"{exc.object[exc.start]:#04x} on line {line}") from None
        source = str(path)
    return parse_config(text, source=source)


def parse_config(text: str, *, source: str = "<string>") -> RunConfig:
    """Parse TOML ``text``; structure errors raise :class:`ConfigError` naming table and key."""
    if text.startswith("\ufeff"):
        raise ConfigError(f"{source} starts with a UTF-8 byte-order mark (BOM), which TOML does "
                          "not allow: save it as UTF-8 without BOM")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{source} nests arrays or tables too deeply to be a run config") \
            from None
    allowed = {"run", *TABLES.values()}
    for key in data:
        if key not in allowed:
            raise ConfigError(
                f"unknown table in {source}. Tables are: {', '.join(sorted(allowed))}.",
                table=key,
            )
    run_values = data.get("run", {})
    if not isinstance(run_values, dict):
        raise ConfigError("must be a table", table="run")
    run = build_params(RunSettings, run_values, table="run")
    components: dict[str, list[ComponentSpec]] = {}
    for kind, table in TABLES.items():
        entries = data.get(table, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ConfigError(f"must be an array of tables ([[{table}]])", table=table)
        if not entries:
            raise ConfigError(
                f"a run needs at least one [[{table}]] entry"
                + (" (use name = \"none\" for no defense)" if kind == "defense" else ""),
                table=table,
            )
        specs = []
        for entry in entries:
            entry = dict(entry)
            name = entry.pop("name", None)
            if not isinstance(name, str) or not name:
                raise ConfigError("every entry needs name = \"...\"", table=table, key="name")
            _one_line(name, table, "name")
            label = entry.pop("label", name)
            if not isinstance(label, str) or not label:
                raise ConfigError("expected a non-empty string", table=f"{table}.{name}",
                                  key="label")
            _one_line(label, table, "label")
            datasets = None
            if kind == "model" and "datasets" in entry:
                datasets = entry.pop("datasets")
                if not isinstance(datasets, list) or not datasets or not all(
                        isinstance(d, str) for d in datasets):
                    raise ConfigError(
                        "expected a non-empty list of dataset names", table=f"{table}.{name}",
                        key="datasets"
                    )
                for dataset in datasets:
                    _one_line(dataset, f"{table}.{label}", "datasets")
                datasets = tuple(datasets)
            samples, attacks, defenses, pseudo = None, None, None, False
            if kind == "model":
                samples, attacks, defenses = _model_run_keys(entry, f"{table}.{label}")
                pseudo = entry.pop("pseudo_labels", False)
                if not isinstance(pseudo, bool):
                    raise ConfigError(f"expected true or false, got {pseudo!r}",
                                      table=f"{table}.{label}", key="pseudo_labels")
            draws = _evaluation_keys(kind, entry, f"{table}.{label}")
            specs.append(ComponentSpec(kind, name, entry, f"{table}.{label}", datasets, label,
                                       samples, attacks, pseudo, **draws,
                                       defenses=defenses))
        # counted once (labels.count per label is quadratic in a long table)
        for lab, n in Counter(s.label for s in specs).items():
            if n > 1:
                raise ConfigError(
                    f"'{lab}' appears {n} times; give each entry its own "
                    'label = "..." so tables can tell them apart', table=table)
        components[kind] = specs
    _check_model_labels(components)
    return RunConfig(run=run, components=components, source=source, text=text)


def _model_run_keys(entry: dict[str, Any], table: str
                    ) -> tuple[int | None, tuple[str, ...] | None, tuple[str, ...] | None]:
    """Pop a model entry's ``samples``, ``attacks`` and ``defenses`` keys (run settings, not
    model parameters)."""
    samples = entry.pop("samples", None)
    # capped as [run] samples is: 2**63 - 1 clips is a typo, not a test split
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int)
                                or not 0 <= samples <= MAX_SAMPLES):
        raise ConfigError(f"expected an int in 0..{MAX_SAMPLES} (0: the whole test split), got "
                          f"{samples!r}", table=table, key="samples")
    return samples, _label_list(entry, "attacks", table), _label_list(entry, "defenses", table)


def _label_list(entry: dict[str, Any], key: str, table: str) -> tuple[str, ...] | None:
    labels = entry.pop(key, None)
    if labels is None:
        return None
    if not isinstance(labels, list) or not labels or not all(
            isinstance(a, str) and a for a in labels):
        raise ConfigError(f"expected a non-empty list of {key[:-1]} labels", table=table,
                          key=key)
    for label in labels:
        _one_line(label, table, key)
    return tuple(labels)


def _one_line(value: str, table: str, key: str) -> None:
    """:func:`check_one_line` as a ConfigError naming ``[table] key``."""
    try:
        check_one_line(key, value)
    except ValueError as exc:
        raise ConfigError(str(exc), table=table, key=key) from None


_EVALUATION_KEYS = {"defense": ("eot_samples", "eval_draws", "bpda"),
                    "attack": ("eot_samples", "adaptive")}


def _evaluation_keys(kind: str, entry: dict[str, Any], table: str) -> dict[str, Any]:
    """Pop the harness's adaptive-evaluation overrides of a defense or attack entry (they are
    run settings, not plugin parameters, so no plugin may define a parameter of that name)."""
    out: dict[str, Any] = {}
    for key in _EVALUATION_KEYS.get(kind, ()):
        if key not in entry:
            continue
        value = entry.pop(key)
        if key == "adaptive":
            if not isinstance(value, bool) and value != "oblivious":
                raise ConfigError(f"expected true, false or \"oblivious\", got {value!r}",
                                  table=table, key=key)
        elif key == "bpda":
            if not isinstance(value, bool):
                raise ConfigError(f"expected true or false, got {value!r}", table=table,
                                  key=key)
        else:
            try:
                check_draws(key, value)
            except ValueError as exc:
                raise ConfigError(str(exc), table=table, key=key) from None
        out[key] = value
    return out


def _check_model_labels(components: dict[str, list[ComponentSpec]]) -> None:
    """Every label a model's ``attacks`` / ``defenses`` names is an entry of this config (a
    sweep is still one entry here: the planner expands it, and its cells keep its label)."""
    for kind, key in (("attack", "attacks"), ("defense", "defenses")):
        labels = [e.label for e in components[kind]]
        for model in components["model"]:
            for name in getattr(model, key) or ():
                if name not in labels:
                    hint = did_you_mean(name, labels)
                    raise ConfigError(
                        f"{kind} '{name}' is not a label in this config's [[{key}]].{hint} "
                        f"Labels: {', '.join(labels)}.", table=model.table, key=key,
                    )


def with_options(config: RunConfig, **options: Any) -> RunConfig:
    """``config`` with command-line options (``device=``, ``executor=``; ``None``: not given)
    applied to its ``[run]`` table through the same checks as the keys they override, so a bad
    ``--device`` fails exactly like a bad ``[run] device``, naming ``[run] key 'device'``,
    before anything is created."""
    given = {k: v for k, v in options.items() if v is not None}
    if not given:
        return config
    values = {f.name: getattr(config.run, f.name) for f in dataclasses.fields(RunSettings)}
    try:
        run = build_params(RunSettings, values | given, table="run")
    except ConfigError as exc:
        flag = f" (--{exc.key.replace('_', '-')})" if exc.key in given else ""
        raise ConfigError(exc.message + flag, table="run", key=exc.key) from None
    return dataclasses.replace(config, run=run, overrides=config.overrides | given)


def model_samples(spec: ComponentSpec, run: RunSettings, *, quick: bool) -> int:
    """Clips per dataset for ``spec``'s cells: its own ``samples`` (capped at ``quick_samples``
    under ``--quick``) or the run's. 0 means the whole split, so it never caps."""
    run_samples = run.quick_samples if quick else run.samples
    if spec.samples is None:
        return run_samples
    if quick and run.quick_samples and (spec.samples == 0 or spec.samples > run.quick_samples):
        return run.quick_samples
    return spec.samples
