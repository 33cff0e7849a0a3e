"""Malformed configs and bad values (issue 14, items 2 and 3): every one ends in exit code 2
with one message naming the table and key, no traceback, and nothing created on disk; every
numeric parameter of every built-in plugin is checked finite and in range.

The corpus is documented in docs/reliability.md ("Malformed configs and bad values").
"""

from __future__ import annotations

import dataclasses
import math
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import cli

from musicbench.config import parse_config
from musicbench.errors import ConfigError
from musicbench.hookspecs import REGISTER_HOOKS
from musicbench.params import build_params
from musicbench.plugins import get_plugins

# -- every numeric parameter of every built-in: finite and in range ----------------------------

# A parameter may take values the Params cannot range-check on its own; it is checked at bind
# against the model's sample rate instead (a ConfigError naming table and key, before any work).
CHECKED_AT_BIND = {"defense/lowpass.cutoff_hz", "defense/mp3.bitrate_kbps"}
# What a Params needs besides the probed key (required parameters without a usable default).
REQUIRED = {"dataset/folder": {"manifest": "m.csv"}, "dataset/folder-retrieval":
            {"manifest": "m.csv"}, "dataset/gtzan": {"root": "/data/gtzan"}}
HUGE_INT = 2**62
HUGE_FLOAT = 1e30


def _numeric_fields():
    plugins = get_plugins()
    for kind in REGISTER_HOOKS:
        for entry in plugins.registry(kind):
            if not entry.provider.startswith("musicbench "):
                continue
            params = getattr(entry.load(), "Params", None)
            if params is None or not dataclasses.fields(params):
                continue
            hints = typing.get_type_hints(params)
            for f in dataclasses.fields(params):
                ann = str(hints[f.name])
                kind_of = "float" if "float" in ann else "int" if "int" in ann else None
                if kind_of is not None:
                    yield f"{kind}/{entry.name}", params, f.name, kind_of, "tuple" in ann


FIELDS = list(_numeric_fields())


def _rejected(where: str, params: type, key: str, value, as_tuple: bool) -> bool:
    values = dict(REQUIRED.get(where, {}))
    values[key] = [value, value] if as_tuple else value
    try:
        build_params(params, values, table=where.replace("/", "s."))
    except ConfigError:
        return True
    return False


def test_the_probe_sees_every_kind_of_built_in():
    kinds = {where.split("/")[0] for where, *_ in FIELDS}
    assert kinds >= {"attack", "model", "defense", "dataset", "inpainter", "encoder"}, kinds
    assert len(FIELDS) > 100


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
def test_no_float_parameter_of_a_built_in_accepts_a_non_finite_value(value):
    accepted = [f"{where}.{key}" for where, params, key, kind, tup in FIELDS
                if kind == "float" and not _rejected(where, params, key, value, tup)]
    assert not accepted, f"{value} accepted by {accepted}"


def test_no_numeric_parameter_of_a_built_in_accepts_a_huge_value():
    accepted = []
    for where, params, key, kind, tup in FIELDS:
        if f"{where}.{key}" in CHECKED_AT_BIND:
            continue
        for value in ((HUGE_INT, -HUGE_INT) if kind == "int" else (HUGE_FLOAT, -HUGE_FLOAT)):
            if not _rejected(where, params, key, value, tup):
                accepted.append(f"{where}.{key}={value:g}")
    assert not accepted, f"accepted: {accepted}"


def test_eps_inf_is_a_config_error_naming_table_and_key():
    with pytest.raises(ConfigError, match=r"^\[attacks\.pgd\] key 'eps': expected a finite "
                                          r"number, got inf$"):
        build_params(get_plugins().get("attack", "pgd").load().Params, {"eps": math.inf},
                     table="attacks.pgd")


def test_a_third_party_params_gets_the_finite_check_for_free():
    @dataclasses.dataclass(frozen=True)
    class Loose:
        scale: float = 1.0
        weights: tuple[float, ...] = (1.0,)
        extra: dict = dataclasses.field(default_factory=dict)

    for key, value in (("scale", math.nan), ("weights", [1.0, math.inf]),
                       ("extra", {"a": -math.inf})):
        with pytest.raises(ConfigError, match=rf"\[models\.loose\] key '{key}': expected a "
                                              "finite number"):
            build_params(Loose, {key: value}, table="models.loose")
    assert build_params(Loose, {"scale": 3}, table="models.loose").scale == 3.0


def test_a_rejection_by_post_init_names_the_key_it_is_about():
    with pytest.raises(ConfigError, match=r"^\[attacks\.pgd\] key 'eps': eps must be > 0"):
        build_params(get_plugins().get("attack", "pgd").load().Params, {"eps": -1.0},
                     table="attacks.pgd")
