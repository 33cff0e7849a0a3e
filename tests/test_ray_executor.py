"""The ray executor: a local Ray cluster gives exactly the records the local executor gives
(wall times aside), whole cells or in clip shards, a worker killed mid-task is retried once and
a second death costs only its cell, a wrong address is a config error (exit 2) before any
work, and the local cluster musicbench starts listens on the loopback interface only."""

from __future__ import annotations

import ipaddress
import os

import pytest

ray = pytest.importorskip("ray")

from conftest import cli
from test_planning import BASE
from test_shards import records as _records

from musicbench.errors import ConfigError
from musicbench.ray_executor import start_local_cluster

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
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
    """One local cluster (2 CPUs) for the module, started as the executor starts its own:
    starting Ray costs tens of seconds."""
    start_local_cluster(2)
    yield
    ray.shutdown()


def _listening_sockets(pids: set[int]) -> list[tuple[IPAddress, int, int]]:
    """``(address, port, pid)`` of every TCP socket the processes ``pids`` listen on, read
    from /proc (no psutil): /proc/net/tcp{,6} rows in state 0A (LISTEN), matched by inode."""
    owner: dict[str, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[target[8:-1]] = pid
    found = []
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state != "0A" or inode not in owner:
                    continue
                hex_ip, hex_port = local.split(":")
                raw = bytes.fromhex(hex_ip)
                # the kernel prints each 32-bit word in host (little-endian) order
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))
                found.append((ipaddress.ip_address(words), int(hex_port, 16), owner[inode]))
    return found


def _loopback(address: IPAddress) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, an IPv6 socket's form
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def _process_tree(root: int) -> set[int]:
    """``root`` and all its descendants (Ray's GCS, raylet and workers descend from the
    driver that started the cluster)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, []))
    return tree


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's /proc")
def test_the_local_cluster_listens_on_the_loopback_only(cluster):
    """Ray's servers run any task they receive: a cluster musicbench starts for itself must
    not be reachable from the network (Ray binds all interfaces by default)."""

    @ray.remote
    def pid() -> int:
        return os.getpid()

    worker = ray.get(pid.remote())  # a worker exists and has started its own server
    tree = _process_tree(os.getpid())
    assert worker in tree and len(tree) >= 3  # the driver, GCS, raylet, the worker
    sockets = _listening_sockets(tree)
    assert {p for _, _, p in sockets} >= {os.getpid(), worker}  # the check sees them
    exposed = [s for s in sockets if not _loopback(s[0])]
    assert not exposed, exposed
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ  # restored after the start


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
