"""The example third-party package in docs/examples/ installs, is discovered, and its attack works.

The pip install goes into a temporary ``--target`` folder put on ``PYTHONPATH`` of subprocesses
only, so the test environment is never changed. The in-process tests import the package from
its source folder and register it on a private :class:`PluginSystem`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from musicbench.errors import ConfigError, GradientRefusedError
from musicbench.interfaces import Attack, Context, TargetModel
from musicbench.params import build_params
from musicbench.plugins import PluginSystem
from musicbench.victim import Victim, begin_batch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DIR = ROOT / "docs" / "examples" / "musicbench-example-plugin"
DIST_NAME = "musicbench-example-plugin"
PACKAGE = "musicbench_example_plugin"


# -- installed into a temporary folder, used from subprocesses --------------------------------


@pytest.fixture(scope="module")
def example_plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install --target`` the example package once; returns the folder for PYTHONPATH.

    pip builds in the source tree (``build/``, ``*.egg-info``), so it builds from a copy.
    """
    root = tmp_path_factory.mktemp("example-plugin")
    src = root / "src"
    shutil.copytree(EXAMPLE_DIR, src, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__"))
    site = root / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--no-input", "--quiet", "--target", str(site), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    assert (site / PACKAGE / "__init__.py").is_file()
    return site


def _env(site: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MUSICBENCH_DISABLE_PLUGINS", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    env["COLUMNS"] = "250"  # rich folds table cells at 80 columns when not on a terminal
    env.update(extra)
    return env


def _musicbench(site: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from musicbench.cli import main; main()", *args],
        capture_output=True, text=True, env=_env(site, **env), cwd=cwd, timeout=120,
    )


def _row(stdout: str, name: str) -> str:
    rows = [line for line in stdout.splitlines() if f" {name} " in line]
    assert len(rows) == 1, f"expected one row for '{name}' in:\n{stdout}"
    return rows[0]


def test_installed_plugin_is_listed_with_its_distribution_and_loaded(
    example_plugin_site: Path, tmp_path: Path
) -> None:
    proc = _musicbench(example_plugin_site, "list", "attack", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = _row(proc.stdout, "noise")
    assert DIST_NAME in row
    assert "loaded" in row
    assert "black-box baseline" in row
    # built-ins still come from the core distribution, through the same entry-point group
    assert "musicbench 0.1.0" in _row(proc.stdout, "pgd")


def test_installed_plugin_is_blocked_by_musicbench_disable_plugins(
    example_plugin_site: Path, tmp_path: Path
) -> None:
    proc = _musicbench(example_plugin_site, "list", "attack", cwd=tmp_path,
                       MUSICBENCH_DISABLE_PLUGINS="example")
    assert proc.returncode == 0, proc.stderr
    assert " noise " not in proc.stdout
    row = _row(proc.stdout, "example")
    assert DIST_NAME in row and "disabled" in row


def test_installed_entry_point_builds_the_attack_from_config_in_a_subprocess(
    example_plugin_site: Path, tmp_path: Path
) -> None:
    """What ``musicbench run`` does with an ``[[attacks]]`` entry, from the installed copy."""
    script = textwrap.dedent("""
        import json, sys
        import torch
        from musicbench.config import parse_config
        from musicbench.errors import ConfigError
        from musicbench.plugins import get_plugins
        from musicbench.workspace import Workspace

        plugins = get_plugins()
        info = plugins.plugins["example"]
        entry = plugins.get("attack", "noise")
        config = parse_config('''
        [[datasets]]
        name = "d"
        [[models]]
        name = "m"
        [[defenses]]
        name = "none"
        [[attacks]]
        name = "noise"
        eps = 0.004
        tries = 3
        ''')
        spec = config.components["attack"][0]
        ws = Workspace(plugins, cache_dir=sys.argv[1], device=torch.device("cpu"))
        attack = ws.make("attack", spec.name, spec.params)
        try:
            ws.make("attack", "noise", {"tries": "ten"})
            wrong_type = None
        except ConfigError as exc:
            wrong_type = str(exc)
        print(json.dumps({
            "status": info.status, "provider": info.provider, "registered": info.registered,
            "entry_provider": entry.provider, "file": sys.modules[type(attack).__module__].__file__,
            "name": attack.name, "threat": attack.threat,
            "params": attack.describe()["params"],
            "bound": [attack.bound().norm, attack.bound().eps], "wrong_type": wrong_type,
        }))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "cache")], capture_output=True, text=True,
        env=_env(example_plugin_site), cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "loaded"
    assert out["provider"].startswith(DIST_NAME + " ")
    assert out["entry_provider"] == out["provider"]
    assert out["registered"] == [["attack", "noise"]]
    assert Path(out["file"]).resolve().is_relative_to(example_plugin_site.resolve())
    assert out["name"] == "noise"
    assert out["threat"] == "black-box"
    assert out["params"] == {"eps": 0.004, "tries": 3}
    assert out["bound"] == ["linf", 0.004]
    assert out["wrong_type"] is not None
    assert "attacks.noise" in out["wrong_type"] and "tries" in out["wrong_type"]


def test_installed_attack_passes_musicbench_validate(
    example_plugin_site: Path, tmp_path: Path
) -> None:
    proc = _musicbench(example_plugin_site, "validate", "noise", "--kind", "attack", "--device",
                       "cpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "attack 'noise' passed" in proc.stderr
    assert "black-box: victim refuses gradients" in proc.stderr


def test_wrong_parameter_type_for_the_installed_attack_stops_musicbench_run_with_exit_2(
    example_plugin_site: Path, tmp_path: Path
) -> None:
    config = tmp_path / "noise.toml"
    config.write_text(textwrap.dedent("""
        [[datasets]]
        name = "m21-styles"
        [[models]]
        name = "style-cnn"
        [[defenses]]
        name = "none"
        [[attacks]]
        name = "noise"
        tries = "ten"
    """))
    out = tmp_path / "out"
    proc = _musicbench(example_plugin_site, "run", str(config), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    message = " ".join(proc.stderr.split())  # rich may wrap long lines
    assert "[attacks.noise] key 'tries': expected int, got str 'ten'" in message
    assert not out.exists()  # rejected before any work


def test_installed_attack_runs_in_a_musicbench_run(
    example_plugin_site: Path, tmp_path: Path, toy_site: Path
) -> None:
    """Installed next to the built-ins: named in a config, run, and on the leaderboard."""
    config = tmp_path / "noise.toml"
    config.write_text(textwrap.dedent("""
        [run]
        fad_encoder = ""
        samples = 8
        device = "cpu"
        [[datasets]]
        name = "toy-tones"
        [[models]]
        name = "toy-model"
        [[defenses]]
        name = "none"
        [[attacks]]
        name = "noise"
        eps = 0.05
        tries = 5
        [[attacks]]
        name = "pgd"
        eps = 0.05
        steps = 5
    """))
    out = tmp_path / "out"
    tests_dir = str(Path(__file__).parent)
    proc = _musicbench(example_plugin_site, "run", str(config), "--out", str(out), cwd=tmp_path,
                       PYTHONPATH=os.pathsep.join([str(example_plugin_site), str(toy_site),
                                                   tests_dir]))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(_musicbench(example_plugin_site, "leaderboard", str(out), "--format",
                                  "json", cwd=tmp_path).stdout)
    noise = next(r for r in rows if r["attack"] == "noise")
    assert noise["status"] == "ok" and noise["n"] == 8
    assert noise["mean_queries"] <= 5  # black-box: one query per draw, at most `tries`


# -- imported in-process from the source folder ----------------------------------------------


@pytest.fixture(scope="module")
def example_module() -> Iterator[ModuleType]:
    """The example package imported from its source folder (removed again afterwards)."""
    import importlib

    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(EXAMPLE_DIR))
        try:
            yield importlib.import_module(PACKAGE)
        finally:
            for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
                del sys.modules[name]


@pytest.fixture()
def noise_cls(example_module: ModuleType) -> type[Attack]:
    plugins = PluginSystem(discover=False)
    info = plugins.add_plugin(example_module, "example", provider=DIST_NAME)
    assert info.status == "loaded", info.error
    assert info.registered == [("attack", "noise")]
    entry = plugins.get("attack", "noise")
    assert entry.provider == DIST_NAME
    cls = entry.load()
    assert issubclass(cls, Attack)
    return cls


def _make(cls: type[Attack], **params: Any) -> Attack:
    attack = cls(build_params(cls.Params, params, table="attacks.noise"))
    attack.name = "noise"
    return attack


class TinyClassifier(TargetModel):
    """Strided conv, tanh, mean pool, linear; no biases, so logits scale with the input and
    quiet clips sit near the decision boundary while loud ones are far from it."""

    sample_rate = 16_000
    input_seconds = 0.05  # 800 samples
    labels = ("a", "b", "c")

    def load(self, ctx: Context) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self._net = torch.nn.Sequential(
                torch.nn.Unflatten(1, (1, -1)),
                torch.nn.Conv1d(1, 8, kernel_size=32, stride=16, bias=False),
                torch.nn.Tanh(),
                torch.nn.AdaptiveAvgPool1d(1),
                torch.nn.Flatten(),
                torch.nn.Linear(8, len(self.labels), bias=False),
            ).to(ctx.device)
        self._net.eval()

    def module(self) -> torch.nn.Module:
        return self._net

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self._net(audio)


@pytest.fixture()
def model(tmp_path: Path) -> TinyClassifier:
    m = TinyClassifier()
    m.name = "tiny"
    m.load(Context(cache_dir=tmp_path, device=torch.device("cpu")))
    return m


@pytest.fixture()
def batch(model: TinyClassifier) -> tuple[torch.Tensor, torch.Tensor]:
    """``audio[8, 800]`` from whisper-quiet to full scale (two clips touch +-1), labelled with
    the model's own clean predictions so every clip starts correctly classified."""
    g = torch.Generator().manual_seed(1)
    shape = torch.rand(8, model.input_samples, generator=g) * 2 - 1
    scale = torch.tensor([1e-4, 2e-4, 5e-4, 1e-3, 0.05, 0.2, 1.0, 1.0]).unsqueeze(1)
    audio = (shape * scale).contiguous()
    audio[6, :10] = 1.0
    audio[7, :10] = -1.0
    with torch.no_grad():
        target = model.forward(audio).argmax(-1)
    return audio, target


def test_noise_attack_output_is_within_bound_finite_in_range_and_detached(
    noise_cls: type[Attack], model: TinyClassifier, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    audio, target = batch
    attack = _make(noise_cls, eps=0.002, tries=10)
    victim = Victim(model, allow_gradients=False)
    result = attack(victim, audio, target, generator=torch.Generator().manual_seed(0))
    adv = result.adv
    assert adv.shape == audio.shape and adv.dtype == torch.float32
    assert not adv.requires_grad and adv.grad_fn is None
    assert torch.isfinite(adv).all()
    assert adv.abs().max() <= 1.0
    assert (adv - audio).abs().amax(1).max() <= 0.002 * (1 + 1e-5)
    assert not torch.equal(adv, audio)  # it did perturb
    assert result.success.dtype == torch.bool and result.success.shape == (8,)


def test_noise_attack_is_deterministic_for_the_same_generator_seed(
    noise_cls: type[Attack], model: TinyClassifier, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    audio, target = batch
    attack = _make(noise_cls, eps=0.002, tries=5)

    def once(seed: int):
        victim = Victim(model, allow_gradients=False)
        return attack(victim, audio, target, generator=torch.Generator().manual_seed(seed))

    a, b, c = once(3), once(3), once(4)
    assert torch.equal(a.adv, b.adv)
    assert torch.equal(a.success, b.success)
    assert torch.equal(a.steps, b.steps)
    assert torch.equal(a.queries, b.queries)
    assert not torch.equal(a.adv, c.adv)


def test_noise_attack_needs_no_gradients_from_a_black_box_victim(
    noise_cls: type[Attack], model: TinyClassifier, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    audio, target = batch
    attack = _make(noise_cls)
    assert attack.threat == "black-box"
    victim = Victim(model, allow_gradients=False)
    attack(victim, audio, target, generator=torch.Generator().manual_seed(0))
    assert int(victim.gradient_calls.sum()) == 0
    # the victim really is the refusing kind: a gradient request raises
    with pytest.raises(GradientRefusedError):
        victim.loss(audio.clone().requires_grad_(True), target)


def test_noise_attack_stops_per_sample_and_counts_one_query_per_draw(
    noise_cls: type[Attack], model: TinyClassifier, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    audio, target = batch
    tries = 10
    attack = _make(noise_cls, eps=0.002, tries=tries)
    victim = Victim(model, allow_gradients=False)
    result = attack(victim, audio, target, generator=torch.Generator().manual_seed(0))
    fooled = result.success
    # quiet clips flip, loud ones cannot be moved by 0.002 of noise: both paths are exercised
    assert fooled[:2].all() and not fooled[-2:].any()
    assert torch.equal(result.queries, result.steps)
    assert (result.steps[~fooled] == tries).all()
    assert (result.steps[fooled] >= 1).all() and (result.steps[fooled] <= tries).all()
    assert (result.steps[fooled] < tries).any()  # early stop saved queries
    # the harness re-scored the returned audio; it agrees with the attack's own bookkeeping
    begin_batch(victim, audio.shape[0])
    own = attack.run(victim, audio, target, generator=torch.Generator().manual_seed(0))
    assert torch.equal(own.success, fooled)
    assert torch.equal(own.adv, result.adv)


def test_noise_params_are_validated_like_a_config_entry(noise_cls: type[Attack]) -> None:
    params = build_params(noise_cls.Params, {"eps": 1, "tries": 3}, table="attacks.noise")
    assert params.eps == 1.0 and isinstance(params.eps, float) and params.tries == 3
    assert noise_cls().bound().eps == 0.002 and noise_cls().params.tries == 10
    with pytest.raises(ConfigError, match="tries"):
        build_params(noise_cls.Params, {"tries": "ten"}, table="attacks.noise")
    with pytest.raises(ConfigError, match="tries must be >= 1"):
        build_params(noise_cls.Params, {"tries": 0}, table="attacks.noise")
    with pytest.raises(ConfigError, match="Did you mean 'eps'"):
        build_params(noise_cls.Params, {"epsilon": 0.1}, table="attacks.noise")
