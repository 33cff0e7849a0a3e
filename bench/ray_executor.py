"""The ``ray`` executor (DESIGN.md section 7): the cells of a run as tasks on a Ray cluster.

The driver (``musicbench run``) plans exactly as with ``local``; this executor then hands the
unfinished cells to a pool of Ray actors, each holding one :class:`Workspace` (the per-process
cache of datasets and loaded models the local executor keeps too), never more cells in flight
than actors, and gives each finished record to the driver's callback, which alone writes the
store. A worker runs :func:`musicbench.runner.run_cell` on the same typed :class:`CellSpec`, so
its records are the local executor's (wall times aside).

- **Cluster**: ``[run] ray_address`` / ``--ray-address``: ``""`` starts a local cluster (and
  shuts it down after the run), ``auto`` joins the one this machine belongs to, ``HOST:PORT``
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
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from musicbench.cells import CellSpec
from musicbench.config import RunSettings, ray_host_port
from musicbench.errors import ConfigError
from musicbench.hookspecs import PROJECT_NAME
from musicbench.interfaces import Progress
from musicbench.plugins import PluginSystem
from musicbench.runner import now
from musicbench.store import CellRecord
from musicbench.workspace import Workspace

CONNECT_TIMEOUT_S = 5.0


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

    def run(self, spec: dict[str, Any], environment: dict[str, Any]) -> CellRecord:
        from musicbench.runner import run_cell

        return run_cell(CellSpec.from_dict(spec), self.ws, environment)

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
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        else:
            if self.settings.ray_local_cpus:
                kwargs["num_cpus"] = self.settings.ray_local_cpus
        try:
            ray.init(**kwargs)
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
        on_record: Callable[[CellRecord], None],
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
            count = self._actors_wanted(cpus, gpus, len(specs))
            self._drive(specs, remote, setup, count, environment, on_record, progress)
        finally:
            if started_here:
                ray.shutdown()

    def _drive(self, specs: list[CellSpec], remote: Any, setup: WorkerSetup, count: int,
               environment: dict[str, Any], on_record: Callable[[CellRecord], None],
               progress: Progress) -> None:
        import ray
        from ray.exceptions import RayActorError, RayError

        queue = list(reversed(specs))  # pop() takes them in plan order
        pending: dict[Any, tuple[Any, CellSpec, str, float]] = {}

        def submit(actor: Any) -> None:
            spec = queue.pop()
            ref = actor.run.remote(spec.to_dict(), environment)
            pending[ref] = (actor, spec, now(), time.perf_counter())

        with progress("cells (ray)", total=len(specs)) as overall:
            for _ in range(count):
                if queue:
                    submit(remote.remote(setup))
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                actor, spec, started, t0 = pending.pop(ready[0])
                try:
                    record = ray.get(ready[0])
                except RayError as exc:  # the worker died twice, or Ray could not run it
                    record = _failed(spec, environment, started, t0, exc)
                    if isinstance(exc, RayActorError):
                        actor = remote.remote(setup)  # the dead one takes no more cells
                on_record(record)
                overall.update(description=f"cell {' / '.join(spec.labels)}")
                overall.advance()
                if queue:
                    submit(actor)


def _failed(spec: CellSpec, environment: dict[str, Any], started: str, t0: float,
            exc: BaseException) -> CellRecord:
    """The record of a cell whose task Ray could not finish (the worker's own exceptions
    come back as failed records from ``run_cell``, never as this)."""
    return CellRecord(spec=spec, status="failed", started=started, finished=now(),
                      seconds=round(time.perf_counter() - t0, 3), environment=environment,
                      error=f"ray: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                      traceback=str(exc))
