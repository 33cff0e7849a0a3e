"""The ray executor: a local Ray cluster gives exactly the records the local executor gives
(wall times aside), whole cells or in clip shards, a worker killed mid-task is retried once and
a second death costs only its cell, and a wrong address is a config error (exit 2) before any
work."""

from __future__ import annotations


import pytest

ray = pytest.importorskip("ray")

from conftest import cli
from test_planning import BASE
from test_shards import records as _records

from musicbench.errors import ConfigError
from musicbench.session import RunOptions, execute
from musicbench.store import Store

# test_planning's toy grid (fgsm and pgd on toy-model) plus a second model and a defense;
# {run} adds [run] keys, {attacks} more attacks
CONFIG = BASE.format(run="keep_audio = 1\nray_local_cpus = 2\n{run}", datasets="") + """
[[models]]
name = "toy-model"
label = "toy-b"
seed = 1

[[defenses]]
name = "toy-noise"
{attacks}
"""

@pytest.fixture(scope="module")
def cluster():
    """One local cluster (2 CPUs) for the module: starting Ray costs tens of seconds."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


# whole cells; shards of one batch, with the survivor cascade (pgd runs after fgsm, in waves)
@pytest.mark.parametrize("shard_clips, cascade", [(0, "false"), (3, "true")])
def test_ray_gives_the_records_local_gives(tmp_path, toy_plugins, cluster, shard_clips,
                                           cascade):
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.format(run=f"cascade = {cascade}", attacks=""))
    local = execute(RunOptions(config=config, out=tmp_path / "local"), toy_plugins)
    distributed = execute(RunOptions(config=config, out=tmp_path / "ray", executor="ray",
                                     shard_clips=shard_clips), toy_plugins)
    assert not local.failed and not distributed.failed
    # 2 models x 2 defenses x 2 attacks, and on each model's noise row the sanity gates of
    # its first gradient attack (fgsm at 10x the radius, and through the identity)
    assert len(distributed.records) == 8 + 2 * 2
    if cascade == "true":
        assert any(r.spec.run.after for r in distributed.records)
    a, b = _records(tmp_path / "local"), _records(tmp_path / "ray")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key], key
    runs = Store(tmp_path / "ray" / "results.sqlite", readonly=True)
    try:
        assert runs.runs()[-1]["settings"]["executor"] == "ray"
    finally:
        runs.close()


def test_a_killed_worker_is_retried_once_and_a_second_death_costs_its_cell(
        tmp_path, toy_plugins, cluster):
    marker = tmp_path / "died-once"
    attacks = f"""
[[attacks]]
name = "dying-pgd"
label = "dies once"
eps = 0.01
steps = 3
marker = "{marker}"

[[attacks]]
name = "dying-pgd"
label = "dies always"
eps = 0.01
steps = 3
always = true
"""
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.format(run="ray_workers = 2", attacks=attacks)
                      .replace('label = "toy-b"\nseed = 1\n',
                               'label = "toy-b"\nseed = 1\nattacks = ["pgd"]\n')
                      .replace('[[defenses]]\nname = "toy-noise"\n', ''))
    outcome = execute(RunOptions(config=config, out=tmp_path / "out", executor="ray"),
                      toy_plugins)
    by_attack = {(r.names[1], r.names[3]): r for r in outcome.records}
    assert marker.exists()  # the first try died ...
    assert by_attack[("toy-model", "dies once")].status == "ok"  # ... and the retry finished
    dead = by_attack[("toy-model", "dies always")]
    # ray's default shards: the cell's one shard died twice
    assert dead.status == "failed" and dead.error.startswith("clips 0-5: ray: ")
    # the other cells went on, on the dead worker's replacement too
    assert all(r.status == "ok" for k, r in by_attack.items() if k[1] != "dies always")
    assert len(outcome.records) == 5


def test_a_bad_ray_address_is_a_config_error_before_any_work(tmp_path, toy_plugins):
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.format(run='executor = "ray"\nray_address = "nowhere"',
                                    attacks=""))
    result = cli("run", str(config), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "ray_address" in result.stderr
    assert not (tmp_path / "o").exists()
    # a well-formed address where nothing listens: refused in seconds, nothing written
    config.write_text(CONFIG.format(run="", attacks=""))
    with pytest.raises(ConfigError, match="no Ray cluster answers"):
        execute(RunOptions(config=config, out=tmp_path / "o2", executor="ray",
                           ray_address="127.0.0.1:9"), toy_plugins)
    assert not (tmp_path / "o2").exists()
