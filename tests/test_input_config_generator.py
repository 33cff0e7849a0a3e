"""Generated malformed configs (issue 26, item 4): every one ends in a :class:`ConfigError`
(exit 2, one line) before any work, never another exception.

The generator starts from the embedded default config (``bench/default.toml``) and every
published example (``leaderboards/configs/*.toml``) and breaks one thing at a time: every key
of every table gets a string for a number, a number for a string, an array for a table, a
table for an array, a negative, zero, NaN, infinite or huge number, an empty array; every
table gets an unknown key; every entry a duplicate, an unknown plugin name, no name; and every
parameter of every built-in dataset, model, defense and attack gets the wrong types and
non-finite numbers. Each config goes through what ``musicbench run`` does before heavy work,
in-process: :func:`musicbench.session.execute` (load_config, with_options, the planner's
resolve and ``--only``, the device, the executor, the output folder, the lock) and the
planner's model/dataset pairing, stopped where datasets would be built.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from musicbench import session
from musicbench.config import TABLES, RunSettings, default_config_text
from musicbench.errors import ConfigError
from musicbench.planner import MAX_CELLS, MAX_SWEEP, model_dataset_pairs
from musicbench.plugins import get_plugins

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "leaderboards" / "configs").glob("*.toml"))
HUGE_INT = 2**63 - 1
HUGE_FLOAT = 1e308
# Values no key of a run config accepts (the run's own keys and the harness's keys of an
# entry are all checked to a range or a set; plugin parameters too, see
# tests/test_malformed_configs.py), so each must be a ConfigError, not merely "no crash".
NEVER_VALID_FLOATS = (math.nan, math.inf, -math.inf)
# Values some keys accept (a seed of 0, a negative SNR): any outcome but another exception.
MAYBE_VALID = (-1, 0, -1.5, 0.0)


# -- TOML out -----------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    """``value`` as a TOML value (inline tables and arrays; NaN and infinities as TOML
    writes them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def toml_text(config: dict[str, Any]) -> str:
    """A config dict as TOML: each top-level key on its own line."""
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in config.items())


# -- the generator -----------------------------------------------------------------------------


def base_configs() -> dict[str, dict[str, Any]]:
    out = {"default": tomllib.loads(default_config_text())}
    for path in EXAMPLES:
        out[path.stem] = tomllib.loads(path.read_text(encoding="utf-8"))
    return out


def wrong_values(value: Any) -> Iterator[tuple[str, Any, bool]]:
    """``(what, replacement, must_fail)`` for a value of ``value``'s type: the other types,
    out-of-range numbers, empty containers. ``must_fail``: no key may accept it."""
    if isinstance(value, bool):
        yield "string-for-bool", "true", True
        yield "number-for-bool", 1, True
        yield "array-for-bool", [value], True
        return
    if isinstance(value, (int, float)):
        yield "string-for-number", str(value), True
        yield "array-for-number", [value], True
        yield "table-for-number", {"value": value}, True
        yield "bool-for-number", True, True
        for v in NEVER_VALID_FLOATS:
            yield f"number-{v}", v, True
        yield "huge", HUGE_FLOAT if isinstance(value, float) else HUGE_INT, True
        yield "-huge", -HUGE_FLOAT if isinstance(value, float) else -HUGE_INT, True
        for v in MAYBE_VALID:
            yield f"number-{v}", v, False
        return
    if isinstance(value, str):
        yield "number-for-string", 1, True
        yield "float-for-string", 0.5, True
        yield "array-for-string", [value], False  # a sweep, where the key is swept
        yield "table-for-string", {"value": value}, True
        yield "empty-string", "", False
        yield "line-break", value + "\n\u2028x", False
        yield "nan-for-string", math.nan, True
        return
    if isinstance(value, list):
        yield "table-for-array", {"value": value}, True
        yield "string-for-array", "x", False  # a key that takes one value or a list
        yield "number-for-array", 1, False
        yield "empty-array", [], False
        yield "nested-array", [value], False
        yield "array-of-nan", [math.nan], True
        return
    if isinstance(value, dict):
        yield "array-for-table", [value], True
        yield "string-for-table", "x", True
        yield "empty-table", {}, False


Case = tuple[str, dict[str, Any], bool]  # (id, config, must be a ConfigError)


def config_cases() -> Iterator[Case]:
    """Every single-point break of every base config, and configs too big to plan."""
    for base_name, base in base_configs().items():
        yield from _table_cases(base_name, base)
        yield from _entry_cases(base_name, base)
    yield from size_cases()


def size_cases() -> Iterator[Case]:
    """Sweeps and grids past the planner's limits (they resolved, then planning would have
    prepared everything first: 300 eps x 300 steps took two minutes to resolve alone), and
    the largest that are still accepted."""
    base = tomllib.loads(default_config_text())
    pgd = {"name": "pgd", "eps": [1e-4 * (i + 1) for i in range(MAX_SWEEP + 1)]}
    yield "size/sweep-one-key", {**base, "attacks": [pgd]}, True
    pgd = {"name": "pgd", "eps": [1e-4 * (i + 1) for i in range(40)], "steps": list(range(1, 27))}
    yield "size/sweep-product", {**base, "attacks": [pgd]}, True
    pgd = {"name": "pgd", "eps": [1e-4 * (i + 1) for i in range(MAX_SWEEP)]}
    yield "size/sweep-at-the-limit", {**base, "attacks": [pgd]}, False
    defenses = [{"name": "none", "label": f"d{i}"} for i in range(MAX_CELLS // 250 + 1)]
    attacks = [{"name": "fgsm", "label": f"a{i}", "eps": 0.001} for i in range(250)]
    yield "size/grid", {**base, "defenses": defenses, "attacks": attacks}, True
    yield "size/grid-at-the-limit", {**base, "defenses": defenses[:-1], "attacks": attacks}, \
        False


#: The harness's own keys of an entry (not plugin parameters), each with a valid value, so
#: that every one is broken even where no base config sets it.
ENTRY_KEYS: dict[str, dict[str, Any]] = {
    "datasets": {"label": "data"},
    "models": {"label": "net", "samples": 8, "datasets": ["m21-styles"], "attacks": ["fgsm"],
               "defenses": ["none"], "pseudo_labels": False},
    "defenses": {"label": "guard", "eot_samples": 4, "eval_draws": 5, "bpda": True},
    "attacks": {"label": "atk", "eot_samples": 4, "adaptive": True},
}


def _run_keys(base: dict[str, Any]) -> dict[str, Any]:
    """Every ``[run]`` key: the base's value, else the default of :class:`RunSettings`."""
    defaults = {f.name: getattr(RunSettings(), f.name) for f in dataclasses.fields(RunSettings)}
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}
    return values | base.get("run", {})


def _table_cases(base_name: str, base: dict[str, Any]) -> Iterator[Case]:
    for key, value in _run_keys(base).items():
        for what, bad, must in wrong_values(value):
            yield f"{base_name}/run.{key}/{what}", _with(base, ("run", key), bad), must
    yield f"{base_name}/run/unknown-key", _with(base, ("run", "zz_unknown"), 1), True
    yield f"{base_name}/run/array", {**base, "run": [base.get("run", {})]}, True
    yield f"{base_name}/run/string", {**base, "run": "x"}, True
    yield f"{base_name}/unknown-table", {**base, "zz_unknown": [{"name": "x"}]}, True
    for table in TABLES.values():
        entries = base[table]
        yield f"{base_name}/{table}/table-for-array", {**base, table: entries[0]}, True
        yield f"{base_name}/{table}/empty", {**base, table: []}, True
        yield f"{base_name}/{table}/missing", {k: v for k, v in base.items() if k != table}, \
            True
        yield f"{base_name}/{table}/strings", {**base, table: [e["name"] for e in entries]}, \
            True
        yield f"{base_name}/{table}/duplicate", {**base, table: entries + [entries[0]]}, True


def _entry_cases(base_name: str, base: dict[str, Any]) -> Iterator[Case]:
    for table in TABLES.values():
        for i, entry in enumerate(base[table]):
            where = f"{base_name}/{table}[{i}]"
            for key, value in (ENTRY_KEYS[table] | entry).items():
                if key in ("attacks", "defenses", "datasets", "label") and key not in entry:
                    continue  # names of other entries: only where the base has them
                for what, bad, must in wrong_values(value):
                    # a list for one value of an attack or defense is a sweep, a valid one
                    sweep = table in ("attacks", "defenses") and what.startswith("array-for")
                    yield (f"{where}.{key}/{what}", _with(base, (table, i, key), bad),
                           must and not sweep)
            yield f"{where}/unknown-key", _with(base, (table, i, "zz_unknown"), 1), True
            yield f"{where}/unknown-plugin", _with(base, (table, i, "name"), "zz-no-such"), True
            yield f"{where}/no-name", _without(base, (table, i, "name")), True
            yield f"{where}/label-twice", _with(base, (table, i, "label"),
                                                _other_label(base[table], i)), \
                len(base[table]) > 1


def _other_label(entries: list[dict[str, Any]], i: int) -> str:
    other = entries[(i + 1) % len(entries)]
    return str(other.get("label", other["name"]))


def _with(base: dict[str, Any], path: tuple, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(base)
    node: Any = out
    for step in path[:-1]:
        node = node.setdefault(step, {}) if isinstance(step, str) else node[step]
    node[path[-1]] = value
    return out


def _without(base: dict[str, Any], path: tuple) -> dict[str, Any]:
    out = copy.deepcopy(base)
    node: Any = out
    for step in path[:-1]:
        node = node[step]
    del node[path[-1]]
    return out


#: The kinds a run config names, with their tables; the other tables stay the default's.
_KIND_TABLE = {"dataset": "datasets", "model": "models", "defense": "defenses",
               "attack": "attacks"}
#: Parameters checked against the model's sample rate when bound (after this point), so a
#: huge value passes the checks before work (tests/test_malformed_configs.py, the same set).
CHECKED_AT_BIND = {"defense/lowpass.cutoff_hz", "defense/mp3.bitrate_kbps"}
#: Required parameters (no usable default) of built-ins, so one other parameter can be broken.
REQUIRED = {"folder": {"manifest": "m.csv"}, "folder-retrieval": {"manifest": "m.csv"},
            "gtzan": {"root": "gtzan"}}


def plugin_param_cases() -> Iterator[Case]:
    """Every parameter of every built-in dataset, model, defense and attack, broken in turn
    (in the default config, the entry of its kind replaced by that plugin)."""
    base = tomllib.loads(default_config_text())
    plugins = get_plugins()
    for kind, table in _KIND_TABLE.items():
        for entry in plugins.registry(kind):
            if not entry.provider.startswith("musicbench "):
                continue
            params = getattr(entry.load(), "Params", None)
            fields = dataclasses.fields(params) if params is not None else ()
            hints = typing.get_type_hints(params) if fields else {}
            for f in fields:
                for what, bad, must in _wrong_for(hints[f.name]):
                    must = must and not (what == "huge" and
                                         f"{kind}/{entry.name}.{f.name}" in CHECKED_AT_BIND)
                    # a model without datasets = [...] pairs with whatever dataset fits
                    values = {"name": entry.name, **REQUIRED.get(entry.name, {}), f.name: bad}
                    sweep = kind in ("attack", "defense") and what.startswith("array-for")
                    yield (f"plugin/{kind}/{entry.name}.{f.name}/{what}",
                           {**base, table: [values]}, must and not sweep)


def _wrong_for(annotation: Any) -> Iterator[tuple[str, Any, bool]]:
    """Values of the wrong type for a parameter of type ``annotation``."""
    text = str(annotation)
    if annotation is bool:
        yield from wrong_values(True)
    elif "float" in text or "int" in text:
        if "str" not in text:
            yield "string-for-number", "1", True
        yield "table-for-number", {"value": 1}, "dict" not in text
        for v in NEVER_VALID_FLOATS:
            yield f"number-{v}", v, True
        yield "huge", HUGE_INT if "float" not in text else HUGE_FLOAT, True
        yield "negative", -1, False
    elif annotation is str or "Literal" in text:
        yield "number-for-string", 1, True
        yield "table-for-string", {"value": "x"}, True
        yield "line-break", "x\n\u2028y", "Literal" in text
    else:
        yield "table-for-it", {"value": 1}, "dict" not in text and "Any" not in text


#: Command-line options of ``musicbench run`` (typer hands them over as str / int / list),
#: with the embedded default config: ``(id, RunOptions fields, must be a ConfigError)``.
OPTION_CASES: list[tuple[str, dict[str, Any], bool]] = [
    *((f"device={v!r}", {"device": v}, True)
      for v in ("tpu", "", "CPU", "cpu\n", "cuda:-1", "cuda:99999", "cuda:", "cuda:1x")),
    *((f"executor={v!r}", {"executor": v}, True) for v in ("", "slurm", "RAY", "local ")),
    *((f"ray_address={v!r}", {"executor": "ray", "ray_address": v}, True)
      for v in ("host:0", "host:99999", "host:", ":1", "host:abc", "ray://", "a b:1")),
    ("executor=ray", {"executor": "ray"}, False),
    *((f"shard_clips={v}", {"shard_clips": v}, True) for v in (-2, 2**63, -(2**63))),
    *((f"only={v}", {"only": v}, True)
      for v in (["x"], ["attack="], ["attack=nope"], ["=fgsm"], ["attack"], ["atack=fgsm"])),
]


# -- running a case ----------------------------------------------------------------------------


class ReachedWork(Exception):
    """Raised where ``musicbench run`` would start building datasets: the config passed
    every check that runs before work."""


@pytest.fixture(scope="module")
def preflight(tmp_path_factory: pytest.TempPathFactory):
    """``check(case_id, config) -> exception or None``: the config through
    :func:`musicbench.session.execute` up to the planner's pairing, in-process."""
    root = tmp_path_factory.mktemp("generated")
    plugins = get_plugins()
    patch = pytest.MonkeyPatch()

    def stop_before_work(options, plugins, progress, argv, config, resolved, *rest):
        model_dataset_pairs(resolved)  # the planner's first check, before any dataset is built
        raise ReachedWork

    patch.setattr(session, "_execute_locked", stop_before_work)

    def check(n: int, config: dict[str, Any], **given: Any) -> BaseException | None:
        path = root / f"case-{n}.toml"
        path.write_text(toml_text(config), encoding="utf-8")
        options = session.RunOptions(**({"device": "cpu"} | given | {
            "config": path, "out": root / f"out-{n}"}))
        try:
            session.execute(options, plugins)
        except (ConfigError, ReachedWork) as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - what the test is looking for
            return exc
        return None

    yield check
    patch.undo()


def _outcomes(cases: list[Case], check) -> tuple[list[str], list[str]]:
    """``(crashes, accepted)``: cases ending in another exception, and must-fail cases that
    passed every check."""
    crashes, accepted = [], []
    for n, (case, config, must_fail) in enumerate(cases):
        exc = check(n, config)
        if isinstance(exc, ConfigError):
            if "\n" in str(exc):  # the CLI prints one line: a value is quoted with repr
                crashes.append(f"{case}: a message of several lines: {str(exc)!r}")
            continue
        if isinstance(exc, ReachedWork):
            if must_fail:
                accepted.append(case)
            continue
        crashes.append(f"{case}: {type(exc).__name__}: {exc}")
    return crashes, accepted


CONFIG_CASES = list(config_cases())
PLUGIN_CASES = list(plugin_param_cases())


def test_the_generator_covers_every_base_config_table_and_built_in_kind():
    names = {case.split("/")[0] for case, _, _ in CONFIG_CASES}
    assert names == {"default", "size", *(p.stem for p in EXAMPLES)} and len(EXAMPLES) >= 5
    kinds = {case.split("/")[1] for case, _, _ in PLUGIN_CASES}
    assert kinds == set(_KIND_TABLE)
    assert len(CONFIG_CASES) > 1000 and len(PLUGIN_CASES) > 300
    for case, config, _ in CONFIG_CASES[:50]:  # the TOML writer round-trips
        assert _same(tomllib.loads(toml_text(config)), config), case


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b and type(a) is type(b)


def test_every_base_config_passes_the_checks_unbroken(preflight):
    """So that each case breaks exactly one thing: the bases themselves reach the work."""
    for n, (name, config) in enumerate(base_configs().items()):
        exc = preflight(3 * 10**6 + n, config)
        assert isinstance(exc, ReachedWork), (name, exc)


def test_sweeps_and_grids_at_the_limits_are_accepted(preflight):
    """The limits refuse only what is past them."""
    for n, (case, config, _) in enumerate(c for c in CONFIG_CASES if "at-the-limit" in c[0]):
        assert isinstance(preflight(10**6 + n, config), ReachedWork), case


def test_every_generated_malformed_config_is_a_config_error(preflight):
    crashes, accepted = _outcomes(CONFIG_CASES, preflight)
    assert not crashes, f"{len(crashes)} of {len(CONFIG_CASES)}:\n" + "\n".join(crashes)
    assert not accepted, f"{len(accepted)} accepted:\n" + "\n".join(accepted)


def test_every_bad_parameter_of_every_built_in_is_a_config_error(preflight):
    crashes, accepted = _outcomes(PLUGIN_CASES, preflight)
    assert not crashes, f"{len(crashes)} of {len(PLUGIN_CASES)}:\n" + "\n".join(crashes)
    assert not accepted, f"{len(accepted)} accepted:\n" + "\n".join(accepted)


def test_every_bad_command_line_option_is_a_config_error(preflight):
    base = tomllib.loads(default_config_text())
    cases = [(case, base, must) for case, _, must in OPTION_CASES]
    options = {case: given for case, given, _ in OPTION_CASES}
    crashes, accepted = _outcomes(cases, lambda n, config: preflight(
        2 * 10**6 + n, config, **options[cases[n][0]]))
    assert not crashes, "\n".join(crashes)
    assert not accepted, "\n".join(accepted)
