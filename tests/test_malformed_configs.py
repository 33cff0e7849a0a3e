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
            {"manifest": "m.csv"}, "dataset/gtzan": {"root": "gtzan"}}
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


# -- the corpus: malformed configs and options through `musicbench run` and `validate` ---------

# A valid config of built-ins; every case breaks one thing in it. Nothing in it is built before
# validation ends, so the cases that fail early cost a fraction of a second each.
TOY_CONFIG = """
[run]
fad_encoder = ""
name = "toy"
samples = 8
batch_size = 4
device = "cpu"

[[datasets]]
name = "m21-styles"

[[models]]
name = "style-cnn"

[[defenses]]
name = "none"

[[attacks]]
name = "fgsm"
eps = 0.01
"""


def _edit(old: str, new: str) -> str:
    assert old in TOY_CONFIG
    return TOY_CONFIG.replace(old, new, 1)


_PGD = TOY_CONFIG + '\n[[attacks]]\nname = "pgd"\n'
# id -> (config text or bytes, extra CLI args, what stderr must name)
RUN_CORPUS: dict[str, tuple[str | bytes, tuple[str, ...], str]] = {
    "not-utf8": (TOY_CONFIG.encode() + b'\n# caf\xe9\n', (), "is not UTF-8 text"),
    "latin1-value": (_edit('name = "toy"', 'name = "caf\xe9"').encode("latin-1"), (),
                     "is not UTF-8 text"),
    "invalid-toml": (TOY_CONFIG + "\n[run\n", (), "is not valid TOML"),
    "duplicate-key": (_edit("samples = 8", "samples = 8\nsamples = 9"), (), "not valid TOML"),
    "unknown-table": (TOY_CONFIG + '\n[[atacks]]\nname = "fgsm"\n', (), "[atacks]"),
    "unknown-run-key": (_edit("samples = 8", "sample = 8"), (), "[run] key 'sample'"),
    "run-not-a-table": ("run = 5\n" + TOY_CONFIG.split("device = \"cpu\"\n", 1)[1], (),
                        "[run]"),
    "samples-string": (_edit("samples = 8", 'samples = "8"'), (), "[run] key 'samples'"),
    "samples-negative": (_edit("samples = 8", "samples = -1"), (), "[run] key 'samples'"),
    "samples-huge": (_edit("samples = 8", "samples = 9223372036854775807"), (),
                     "[run] key 'samples'"),
    "samples-float": (_edit("samples = 8", "samples = 8.5"), (), "[run] key 'samples'"),
    "batch-size-negative": (_edit("batch_size = 4", "batch_size = -1"), (), "[run] key 'batch_size'"),
    "seed-negative": (_edit("samples = 8", "samples = 8\nseed = -3"), (), "[run] key 'seed'"),
    "seed-inf": (_edit("samples = 8", "samples = 8\nseed = inf"), (), "[run] key 'seed'"),
    "keep-audio-nan": (_edit("samples = 8", "samples = 8\nkeep_audio = nan"), (),
                       "[run] key 'keep_audio'"),
    "eot-samples-zero": (_edit("samples = 8", "samples = 8\neot_samples = 0"), (),
                         "[run] key 'eot_samples'"),
    "metrics-twice": (_edit("samples = 8", 'samples = 8\nmetrics = ["lsd", "lsd"]'), (),
                      "[run] key 'metrics'"),
    "metrics-empty-string": (_edit("samples = 8", 'samples = 8\nmetrics = [1]'), (),
                             "[run] key 'metrics'"),
    "device-tpu": (_edit('device = "cpu"', 'device = "tpu"'), (), "[run] key 'device'"),
    "device-meta": (_edit('device = "cpu"', 'device = "meta"'), (), "[run] key 'device'"),
    "executor-slurm": (_edit("samples = 8", 'samples = 8\nexecutor = "slurm"'), (),
                       "[run] key 'executor'"),
    "no-attacks": (TOY_CONFIG.split("[[attacks]]")[0], (), "[attacks]"),
    "attacks-empty-array": (TOY_CONFIG.split("[[attacks]]")[0] + "attacks = []\n", (),
                            "[attacks]"),
    "attacks-not-tables": (TOY_CONFIG.split("[[attacks]]")[0] + 'attacks = ["fgsm"]\n', (),
                           "[attacks]"),
    "entry-without-name": (_edit('name = "fgsm"', 'label = "x"'), (), "[attacks] key 'name'"),
    "empty-label": (_edit('name = "fgsm"', 'name = "fgsm"\nlabel = ""'), (),
                    "[attacks.fgsm] key 'label'"),
    "duplicate-labels": (TOY_CONFIG + '\n[[attacks]]\nname = "fgsm"\n', (), "[attacks]"),
    "unknown-attack": (_edit('name = "fgsm"', 'name = "fgsmm"'), (), "unknown attack 'fgsmm'"),
    "unknown-param": (_edit("eps = 0.01", "epsilon = 0.01"), (), "[attacks.fgsm] key 'epsilon'"),
    "eps-inf": (_edit("eps = 0.01", "eps = inf"), (), "[attacks.fgsm] key 'eps'"),
    "eps-huge": (_edit("eps = 0.01", "eps = 1e300"), (), "[attacks.fgsm] key 'eps'"),
    "pgd-steps-huge": (_PGD + "steps = 9223372036854775807\n", (), "[attacks.pgd] key 'steps'"),
    "pgd-snr-inf": (_PGD + "snr_db = -inf\n", (), "[attacks.pgd] key 'snr_db'"),
    "model-samples-negative": (_edit('name = "style-cnn"', 'name = "style-cnn"\nsamples = -2'),
                               (), "[models.style-cnn] key 'samples'"),
    "model-attacks-unknown": (_edit('name = "style-cnn"', 'name = "style-cnn"\n'
                                    'attacks = ["nope"]'), (), "[models.style-cnn] key 'attacks'"),
    "model-defenses-unknown": (_edit('name = "style-cnn"', 'name = "style-cnn"\n'
                                     'defenses = ["nope"]'), (),
                               "[models.style-cnn] key 'defenses'"),
    "model-datasets-empty": (_edit('name = "style-cnn"', 'name = "style-cnn"\ndatasets = []'),
                             (), "[models.style-cnn] key 'datasets'"),
    "cli-device-tpu": (TOY_CONFIG, ("--device", "tpu"), "[run] key 'device'"),
    "cli-device-meta": (TOY_CONFIG, ("--device", "meta"), "[run] key 'device'"),
    "cli-device-mps": (TOY_CONFIG, ("--device", "mps"), "[run] key 'device'"),
    "cli-device-cuda-index": (TOY_CONFIG, ("--device", "cuda:x"), "[run] key 'device'"),
    "cli-executor": (TOY_CONFIG, ("--executor", "slurm"), "[run] key 'executor'"),
}
try:
    import torch

    if not torch.cuda.is_available():  # on a machine without a GPU, asking for one is an error
        RUN_CORPUS["cli-device-cuda"] = (TOY_CONFIG, ("--device", "cuda"), "[run] key 'device'")
        RUN_CORPUS["device-cuda-1"] = (_edit('device = "cpu"', 'device = "cuda:1"'), (),
                                       "[run] key 'device'")
except ImportError:  # pragma: no cover
    pass

# id -> (plugin, extra args, what stderr must name); exit code 2 each
VALIDATE_CORPUS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "eps-inf": ("pgd", ("-p", "eps=inf"), "[attacks.pgd] key 'eps'"),
    "eps-nan": ("pgd", ("-p", "eps=nan"), "[attacks.pgd] key 'eps'"),
    "steps-negative": ("pgd", ("-p", "steps=-1"), "[attacks.pgd] key 'steps'"),
    "seed-negative": ("style-cnn", ("-p", "seed=-1"), "[models.style-cnn] key 'seed'"),
    "unknown-param": ("pgd", ("-p", "epss=1"), "[attacks.pgd] key 'epss'"),
    "bad-param-syntax": ("pgd", ("-p", "eps"), "--param takes KEY=VALUE"),
    "unknown-plugin": ("pgdd", (), "'pgdd'"),
    "device-tpu": ("fgsm", ("--device", "tpu"), "[run] key 'device'"),
    "device-meta": ("fgsm", ("--device", "meta"), "[run] key 'device'"),
    "device-mps": ("fgsm", ("--device", "mps"), "[run] key 'device'"),
}


@pytest.fixture(scope="module")
def corpus_results(tmp_path_factory):
    """Every corpus case run once, a few at a time (each is a separate `musicbench` process)."""
    root = tmp_path_factory.mktemp("corpus")
    jobs = {}
    for case, (text, args, _) in RUN_CORPUS.items():
        config = root / f"{case}.toml"
        config.write_bytes(text if isinstance(text, bytes) else text.encode())
        jobs[("run", case)] = (root / f"out-{case}",
                               ("run", str(config), "--out", str(root / f"out-{case}"), *args))
    for case, (name, args, _) in VALIDATE_CORPUS.items():
        jobs[("validate", case)] = (None, ("validate", name, *args))
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(cli, *argv, cwd=root, timeout=120)
                   for key, (_, argv) in jobs.items()}
        return {key: (futures[key].result(), jobs[key][0]) for key in jobs}


def _check(result, out: Path | None, names: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    assert names in result.stderr, result.stderr
    assert result.stderr.strip().startswith("error:"), result.stderr
    if out is not None:
        assert not out.exists(), f"{out} was created before validation failed"


@pytest.mark.parametrize("case", list(RUN_CORPUS))
def test_run_rejects_the_malformed_config(corpus_results, case):
    result, out = corpus_results[("run", case)]
    _check(result, out, RUN_CORPUS[case][2])


@pytest.mark.parametrize("case", list(VALIDATE_CORPUS))
def test_validate_rejects_the_bad_value(corpus_results, case):
    result, _ = corpus_results[("validate", case)]
    _check(result, None, VALIDATE_CORPUS[case][2])


def test_samples_beyond_the_test_split_warn_and_the_header_says_so(tmp_path, toy_site):
    """Legitimately valid: the cells evaluate the whole split (12 toy clips), the run warns
    with the real number and the leaderboard header says fewer clips than asked."""
    from test_plugins import TOY_CONFIG as TOY

    config = tmp_path / "big.toml"
    config.write_text(TOY.replace("samples = 8", "samples = 20"))
    out = tmp_path / "out"
    result = cli("run", str(config), "--out", str(out), sites=(toy_site,))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    said = " ".join(result.stderr.split())
    assert ("warning: [run] samples = 20, but dataset 'toy-tones' has only 12 test clips: its "
            "cells evaluate 12 clips") in said, said
    board = (out / "leaderboard.md").read_text()
    assert "- dataset `toy-tones`: 12 clips (**fewer than the 20 asked**" in board, board


@pytest.mark.parametrize("case", ["device", "fifo", "folder", "huge", "bom", "deep"])
def test_a_config_that_is_no_toml_file_is_a_config_error_naming_why(tmp_path, case):
    """/dev/zero filled the memory, a FIFO hung, a BOM read as 'Invalid statement', deep
    nesting raised RecursionError: each is now a ConfigError saying why (exit 2)."""
    import os

    from musicbench.config import load_config

    path = tmp_path / "run.toml"
    expected = {"device": "is a character device", "fifo": "is a named pipe", "folder": "is a folder",
                "huge": "bytes; a run config is a few kB", "bom": "byte-order mark",
                "deep": "nests arrays or tables too deeply"}[case]
    if case == "device":
        path = Path("/dev/zero")
    elif case == "fifo":
        os.mkfifo(path)
    elif case == "folder":
        path = tmp_path
    elif case == "huge":
        path.write_text("# " + "x" * (1 << 20) + "\n")
    elif case == "bom":
        path.write_text("\ufeff[run]\nseed = 0\n", encoding="utf-8")
    else:
        path.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_run_on_a_fifo_config_exits_2_at_once(tmp_path):
    import os

    os.mkfifo(tmp_path / "run.toml")
    result = cli("run", str(tmp_path / "run.toml"), "--out", str(tmp_path / "out"), timeout=60)
    assert result.returncode == 2 and "named pipe" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
