"""The ``ray`` executor (docs/ray.md): the cells of a run as tasks on a Ray cluster.

The driver (``musicbench run``) plans exactly as with ``local``; this executor then hands the
unfinished cells to a pool of Ray actors, each holding one :class:`Workspace` (the per-process
cache of datasets and loaded models the local executor keeps too), never more cells in flight
than actors, and gives each finished record to the driver's callback, which alone writes the
store. A worker runs :func:`musicbench.runner.run_cell` on the same typed :class:`CellSpec`, so
its records are the local executor's (wall times aside).

- **Cluster**: ``[run] ray_address`` / ``--ray-address``: ``""`` starts a local cluster (and
  shuts it down after the run) whose processes listen on the loopback interface only
  (:func:`start_local_cluster`), ``auto`` joins the one this machine belongs to, ``HOST:PORT``
  or ``ray://HOST:PORT`` one at that address (checked for a listener first, so a wrong
  address is a config error in seconds, not a two-minute hang inside Ray).
- **Resources**: each actor reserves ``ray_cpus_per_cell`` CPUs and ``ray_gpus_per_cell`` GPUs
  (-1: one when the run's device is a GPU); ``ray_workers`` actors (0: as many as the
  cluster's resources hold).
- **Code and caches on workers**: workers import musicbench and discover plugins through the
  entry points installed on their node (the same environment on every node: docs/ray.md).
  Plugins the driver added in-process rather than through entry points (tests, notebooks) are
  re-added on the workers by module name, with their module's folder on the workers'
  ``PYTHONPATH``. Datasets and weights come from the driver's cache folder when the workers
  share it (one machine, or a shared ``MUSICBENCH_HOME``), or are built on first use on the
  node: they are deterministic, and the runner checks every dataset fingerprint and weights
  digest against the planned ones before a cell runs.
- **Failure**: an actor whose process dies (kill -9, node loss) is restarted and its cell
  retried once by Ray (``max_restarts = max_task_retries = 1``); a second death records the
  cell as failed with the error and a fresh actor takes the next cell; the other cells go on.
  A killed driver resumes from the store like ``local``.
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from musicbench.cell_tasks import ResultSink, failed_record, fooled_before, plan_shards
from musicbench.cells import CellSpec
from musicbench.config import RunSettings, ray_host_port
from musicbench.errors import ConfigError, MusicbenchError
from musicbench.hookspecs import PROJECT_NAME
from musicbench.interfaces import Progress
from musicbench.plugins import PluginSystem
from musicbench.runner import failed_shards_record, now
from musicbench.shards import ShardResult, effective_shard_clips
from musicbench.store import CellRecord
from musicbench.workspace import Workspace

CONNECT_TIMEOUT_S = 5.0
RAY_INIT_DEFAULTS: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
# Ray resolves a local node's address to the machine's outward IP and binds its gRPC servers
# (GCS, raylet, every worker and the driver) to all interfaces, unless clusters are disabled,
# the mode it uses on laptops: then the node is 127.0.0.1 and every server listens there only.
_LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = ("127.0.0.1", "::1")


class RayExposedWarning(UserWarning):
    """The local cluster could not be kept on the loopback interface (a Ray release that
    resolves node addresses differently): its servers may be reachable from the network."""


def start_local_cluster(num_cpus: int | None = None) -> str:
    """Start a Ray cluster on this machine, reachable from this machine only; return its
    node address (``127.0.0.1``, or whatever Ray chose, with a :class:`RayExposedWarning`).

    Nothing else on the network may reach a cluster musicbench starts for itself: Ray's
    servers execute whatever task they receive (Ray 2.60 adds token authentication, older
    releases have none). Ray decides its listening address while the node starts, from its
    constant ``ENABLE_RAY_CLUSTER`` (read from the environment at import) and the node
    address; both are set for the start only and restored after, so a later ``ray.init``
    in this process (joining a real cluster) is unaffected. The processes Ray starts inherit
    the environment of that moment, so workers started later bind the loopback too.
    """
    import warnings

    import ray
    from ray._private import ray_constants

    saved_env = os.environ.get(_LOOPBACK_ONLY_ENV)
    saved_flag = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[_LOOPBACK_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(num_cpus=num_cpus, **RAY_INIT_DEFAULTS)
    finally:
        if saved_env is None:
            os.environ.pop(_LOOPBACK_ONLY_ENV, None)
        else:
            os.environ[_LOOPBACK_ONLY_ENV] = saved_env
        if saved_flag is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved_flag
    node = ray.util.get_node_ip_address()
    if node not in LOOPBACK:
        warnings.warn(f"the local Ray cluster runs on {node}, not on the loopback interface: "
                      f"this Ray release ({ray.__version__}) may expose its servers to the "
                      "network; start a cluster yourself with the address you want "
                      "(ray start --head --node-ip-address ...) and pass --ray-address",
                      RayExposedWarning, stacklevel=2)
    return node


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to build the driver's Workspace: plain data, sent once per actor."""

    cache_dir: str
    device: str
    seed: int
    allow_training: bool
    extra_plugins: tuple[tuple[str, str, str], ...]  # (module, plugin name, provider)


class CellWorker:
    """A Ray actor: one Workspace, many cells (``ray.remote`` wraps it at run time)."""

    def __init__(self, setup: WorkerSetup):
        plugins = PluginSystem()
        for module, name, provider in setup.extra_plugins:
            if name not in plugins.plugins:
                plugins.add_plugin(importlib.import_module(module), name, provider=provider)
        self.ws = Workspace(plugins, cache_dir=Path(setup.cache_dir),
                            device=torch.device(setup.device), seed=setup.seed,
                            allow_training=setup.allow_training)

    def run(self, spec: dict[str, Any], environment: dict[str, Any],
            fooled: frozenset[str] = frozenset()) -> CellRecord:
        from musicbench.runner import run_cell

        return run_cell(CellSpec.from_dict(spec), self.ws, environment, fooled)

    def run_shard(self, spec: dict[str, Any], lo: int, hi: int,
                  fooled: frozenset[str] = frozenset()) -> ShardResult:
        from musicbench.runner import run_shard

        return run_shard(CellSpec.from_dict(spec), self.ws, lo, hi, fooled)

    def finish(self, spec: dict[str, Any], environment: dict[str, Any],
               shards: list[ShardResult]) -> CellRecord:
        from musicbench.runner import finish_cell

        return finish_cell(CellSpec.from_dict(spec), self.ws, environment, shards)

    def pid(self) -> int:
        return os.getpid()


def extra_plugins(plugins: PluginSystem) -> tuple[tuple[str, str, str], ...]:
    """Loaded plugins that did not come from this environment's entry points, as (module,
    name, provider): a worker imports and adds them like the driver did."""
    discovered = {ep.name for ep in metadata.entry_points(group=PROJECT_NAME)}
    out = []
    for name, info in plugins.plugins.items():
        if name in discovered or info.status != "loaded":
            continue
        obj = plugins.pm.get_plugin(name)
        module = getattr(obj, "__name__", None) if obj is not None else None
        if not isinstance(module, str) or module not in sys.modules:
            raise ConfigError(f"plugin '{name}' was added in-process from an object that is "
                              "not an importable module; the ray executor cannot ship it to "
                              "workers (register it through an entry point)")
        out.append((module, name, info.provider))
    return tuple(out)


def _module_dirs(extra: tuple[tuple[str, str, str], ...]) -> list[str]:
    """The folders to put on workers' PYTHONPATH so that ``extra``'s modules import."""
    dirs = []
    for module, _, _ in extra:
        path = getattr(sys.modules[module], "__file__", None)
        if path:
            depth = module.count(".") + (1 if Path(path).name == "__init__.py" else 0)
            root = Path(path).resolve().parents[depth]
            if str(root) not in dirs:
                dirs.append(str(root))
    return dirs


def _worker_env(ws: Workspace, extra: tuple[tuple[str, str, str], ...]) -> dict[str, str]:
    """Environment of the worker actors: the driver's cache folder, and the folders of
    in-process plugins on PYTHONPATH (set per actor, so it holds on a cluster someone else
    started too)."""
    env = {"MUSICBENCH_HOME": str(ws.ctx.cache_dir)}
    dirs = _module_dirs(extra)
    if dirs:
        env["PYTHONPATH"] = os.pathsep.join(dirs + [os.environ.get("PYTHONPATH", "")]
                                            ).rstrip(os.pathsep)
    return env


def check_reachable(address: str) -> None:
    """A config error unless something listens at ``address``'s HOST:PORT (``""`` and
    ``auto`` are Ray's to resolve)."""
    where = ray_host_port(address)
    if where is None:
        return
    host, port = where
    try:
        with socket.create_connection((host.strip("[]"), port), CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({type(exc).__name__}: {exc}); start one "
            f"with `ray start --head --port={port}` or fix the address",
            table="run", key="ray_address") from None


def preflight(settings: RunSettings) -> None:
    """Everything about the ray executor a config can get wrong, checked before a run plans
    or creates anything: Ray installed, and a cluster answering at ``ray_address``."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError("the ray executor needs Ray: pip install \"musicbench[ray]\"",
                          table="run", key="executor") from None
    check_reachable(settings.ray_address)


class RayExecutor:
    """Cells as tasks on Ray actors; records back to the driver as they finish."""

    name = "ray"

    def __init__(self, settings: RunSettings):
        self.settings = settings

    def _init(self, ws: Workspace, extra: tuple[tuple[str, str, str], ...]) -> bool:
        """Connect (or start a local cluster); True when this call started it."""
        preflight(self.settings)
        import ray

        if ray.is_initialized():
            return False
        address = self.settings.ray_address
        try:
            if address:
                ray.init(address=address, **RAY_INIT_DEFAULTS)
            else:
                start_local_cluster(self.settings.ray_local_cpus or None)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"cannot join the Ray cluster at '{address or 'local'}': "
                              f"{type(exc).__name__}: {exc}", table="run",
                              key="ray_address") from None
        return True

    def _actors_wanted(self, cpus: float, gpus: float, cells: int) -> int:
        import ray

        if self.settings.ray_workers:
            return min(self.settings.ray_workers, cells)
        resources = ray.cluster_resources()
        fit = int(resources.get("CPU", 1) // cpus)
        if gpus > 0:
            fit = min(fit, int(resources.get("GPU", 0) // gpus))
        return max(1, min(fit, cells))

    def run(
        self,
        specs: list[CellSpec],
        ws: Workspace,
        environment: dict[str, Any],
        sink: ResultSink,
        progress: Progress,
    ) -> None:
        if not specs:
            return
        extra = extra_plugins(ws.plugins)
        started_here = self._init(ws, extra)
        import ray

        try:
            gpus = self.settings.ray_gpus_per_cell
            if gpus == -1:
                gpus = 1.0 if ws.device.type == "cuda" else 0.0
            cpus = self.settings.ray_cpus_per_cell
            setup = WorkerSetup(str(ws.ctx.cache_dir), str(ws.device), ws.ctx.seed,
                                ws.ctx.allow_training, extra)
            remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=1,
                                max_task_retries=1,
                                runtime_env={"env_vars": _worker_env(ws, extra)})(CellWorker)
            # A cell of a survivor cascade needs its predecessors' records: the plan runs in
            # waves, each of cells whose predecessors are stored (one wave without cascades)
            for wave in cascade_waves(specs):
                tasks, cells = self._tasks(wave, ws, environment, sink)
                count = self._actors_wanted(cpus, gpus, max(1, len(tasks)))
                _Driver(remote, setup, environment, sink, cells).drive(tasks, count, progress)
        finally:
            if started_here:
                ray.shutdown()

    def _tasks(self, specs: list[CellSpec], ws: Workspace, environment: dict[str, Any],
               sink: ResultSink) -> tuple[list[_Task], dict[str, _CellState]]:
        """Whole cells, or the shards of each cell not yet kept in the store."""
        shard_clips = effective_shard_clips(self.settings.shard_clips, self.name)
        tasks: list[_Task] = []
        cells: dict[str, _CellState] = {}
        for spec in specs:
            started, t0 = now(), time.perf_counter()
            try:
                fooled = fooled_before(spec, sink)
            except MusicbenchError as exc:  # an earlier cell of its cascade failed
                sink.cell(failed_record(spec, environment, started, t0, str(exc), None))
                continue
            if not shard_clips:
                tasks.append(_Task(spec, fooled=fooled))
                continue
            try:
                ranges, kept = plan_shards(spec, ws, shard_clips, sink)
            except Exception as exc:  # the cell fails, the run goes on
                sink.cell(failed_record(spec, environment, started, t0,
                                        f"{type(exc).__name__}: {exc}", traceback.format_exc()))
                continue
            cells[spec.key] = _CellState(spec, len(ranges), list(kept.values()))
            tasks += [_Task(spec, r, fooled=fooled) for r in ranges if r not in kept]
            if len(kept) == len(ranges):
                tasks.append(_Task(spec, finish=True))
        return tasks, cells


@dataclass
class _Task:
    """A whole cell (``shard`` None), one shard of it, or its finishing step."""

    spec: CellSpec
    shard: tuple[int, int] | None = None
    finish: bool = False
    fooled: frozenset[str] = frozenset()  # clips earlier cells of its cascade fooled

    @property
    def kind(self) -> str:
        return "finished" if self.finish else "shard" if self.shard is not None else "cell"

    def submit(self, actor: Any, environment: dict[str, Any], state: _CellState | None) -> Any:
        spec = self.spec.to_dict()
        if self.finish:
            assert state is not None
            return actor.finish.remote(spec, environment, state.shards)
        if self.shard is not None:
            return actor.run_shard.remote(spec, *self.shard, self.fooled)
        return actor.run.remote(spec, environment, self.fooled)


@dataclass
class _CellState:
    """A sharded cell while its shards come in."""

    spec: CellSpec
    expected: int
    shards: list[ShardResult]
    failed: bool = False


class _Driver:
    """Keeps one task per actor in flight; shards go to the store as they arrive, a cell's
    finishing step is queued once all its shards are in, records go to the sink."""

    def __init__(self, remote: Any, setup: WorkerSetup, environment: dict[str, Any],
                 sink: ResultSink, cells: dict[str, _CellState]):
        self.remote, self.setup, self.environment = remote, setup, environment
        self.sink, self.cells = sink, cells

    def drive(self, tasks: list[_Task], count: int, progress: Progress) -> None:
        import ray
        from ray.exceptions import RayActorError, RayError

        queue = list(reversed(tasks))  # pop() takes them in plan order
        pending: dict[Any, tuple[Any, _Task, str, float]] = {}

        def submit(actor: Any) -> None:
            task = queue.pop()
            ref = task.submit(actor, self.environment, self.cells.get(task.spec.key))
            pending[ref] = (actor, task, now(), time.perf_counter())

        total = len(tasks) + sum(1 for c in self.cells.values() if len(c.shards) < c.expected)
        with progress("tasks (ray)", total=total) as overall:
            for _ in range(count):
                if queue:
                    submit(self.remote.remote(self.setup))
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                actor, task, started, t0 = pending.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except RayError as exc:  # the worker died twice, or Ray could not run it
                    result = _ray_failure(task, self.environment, started, t0, exc)
                    if isinstance(exc, RayActorError):
                        actor = self.remote.remote(self.setup)  # the dead one takes no more
                queue += self._arrived(task, result)[::-1]
                overall.update(description=f"{task.kind} {' / '.join(task.spec.labels)}")
                overall.advance()
                if queue:
                    submit(actor)

    def _arrived(self, task: _Task, result: CellRecord | ShardResult) -> list[_Task]:
        """Hand ``result`` on; the tasks it makes ready (a cell's finishing step)."""
        if isinstance(result, CellRecord):
            self.sink.cell(result)
            return []
        state = self.cells[task.spec.key]
        state.shards.append(result)
        if result.error is None:
            self.sink.shard(task.spec.key, result)
        if len(state.shards) < state.expected:
            return []
        if any(s.error is not None for s in state.shards):
            # nothing to compute: the record says which shard failed; good shards stay kept
            self.sink.cell(failed_shards_record(task.spec, self.environment, state.shards))
            return []
        return [_Task(task.spec, finish=True)]


def cascade_waves(specs: list[CellSpec]) -> list[list[CellSpec]]:
    """``specs`` in waves, plan order within each: a cell joins the wave after the latest of
    its cascade predecessors among ``specs`` (those already stored do not hold it back)."""
    depth: dict[str, int] = {}
    for spec in specs:  # the plan puts predecessors first
        depth[spec.key] = 1 + max((depth[k] for k in spec.run.after if k in depth), default=-1)
    waves: list[list[CellSpec]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
    for spec in specs:
        waves[depth[spec.key]].append(spec)
    return waves


def _ray_failure(task: _Task, environment: dict[str, Any], started: str, t0: float,
                 exc: BaseException) -> CellRecord | ShardResult:
    if task.shard is not None and not task.finish:
        return ShardResult(*task.shard, error=_ray_error(exc), traceback=str(exc),
                           started=started, finished=now(),
                           seconds=round(time.perf_counter() - t0, 3))
    # a worker's own exceptions come back as failed records from run_cell, never as this
    return failed_record(task.spec, environment, started, t0, _ray_error(exc), str(exc))


def _ray_error(exc: BaseException) -> str:
    return f"ray: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
