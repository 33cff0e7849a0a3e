"""One ``musicbench run``: plan, skip finished cells, execute the rest, write the leaderboard."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape

from musicbench.cache import cache_dir
from musicbench.config import RunConfig, RunSettings, load_config, with_options
from musicbench.environment import describe_environment, resolve_device
from musicbench.errors import ConfigError, OutputInUseError
from musicbench.executors import EXECUTORS
from musicbench.files import (
    LockBusy,
    check_output_file,
    check_writable_folder,
    describe_holder,
    file_lock,
)
from musicbench.interfaces import Progress
from musicbench.interfaces.context import NullProgress
from musicbench.planner import plan_cells, resolve_only
from musicbench.plugins import PluginSystem
from musicbench.runner import now
from musicbench.shards import ShardResult
from musicbench.store import CellRecord, Store
from musicbench.workspace import Workspace


@dataclass
class RunOptions:
    """Command-line choices layered over the config."""

    config: Path | None = None
    quick: bool = False
    device: str | None = None
    out: Path | None = None
    only: list[str] = field(default_factory=list)
    executor: str | None = None
    ray_address: str | None = None
    shard_clips: int | None = None
    rerun_dirty: bool = False  # recompute cells computed from a modified tree (to publish)


@dataclass
class RunOutcome:
    out: Path
    planned: int
    skipped: int
    records: list[CellRecord]
    leaderboard: Path

    @property
    def failed(self) -> list[CellRecord]:
        return [r for r in self.records if r.status != "ok"]


def output_dir(config: RunConfig, options: RunOptions) -> Path:
    """``--out``, or ``runs/<[run] name>[-quick]`` (the name is one safe folder name,
    :func:`musicbench.config.check_run_name`). Raises :class:`~musicbench.files.UnsafePathError`
    (exit 2, before any work) unless it is a folder or can be made one, and the store and
    leaderboard a run writes in it are regular files or absent."""
    out = options.out if options.out is not None else \
        Path("runs") / (config.run.name + ("-quick" if options.quick else ""))
    check_writable_folder(out, "the output folder")  # /proc or read-only: refused, too
    check_output_file(out / "results.sqlite", "the results store")
    check_output_file(out / "leaderboard.md", "the leaderboard")
    return out


def execute(
    options: RunOptions,
    plugins: PluginSystem,
    *,
    progress: Progress | None = None,
    argv: list[str] | None = None,
) -> RunOutcome:
    """Validate everything, then run every unfinished cell. Raises ConfigError before any work.

    ``--only`` narrows what runs now, not the plan: the run records the keys of the cells it
    was asked for, and the leaderboard renders every stored cell of the config
    (:func:`musicbench.leaderboard.build`).
    """
    progress = progress or NullProgress()
    report_failed_plugins(plugins)
    config = with_options(load_config(options.config), device=options.device,
                          executor=options.executor, ray_address=options.ray_address,
                          shard_clips=options.shard_clips)
    resolved = resolve_only(config, plugins, options.only)
    device = resolve_device(config.run.device)
    executor_name = config.run.executor
    if executor_name not in EXECUTORS:
        raise ConfigError(
            f"unknown executor '{executor_name}'; available: {', '.join(EXECUTORS)}",
            table="run", key="executor",
        )
    if executor_name == "ray":  # a missing Ray or a wrong address: exit 2 before any work
        from musicbench.ray_executor import preflight

        preflight(config.run)
    else:
        warn_ignored_ray_settings(config.run)
    out = output_dir(config, options)
    with run_lock(out):
        return _execute_locked(options, plugins, progress, argv, config, resolved, device,
                               executor_name, out)


def _execute_locked(options: RunOptions, plugins: PluginSystem, progress: Progress,
                    argv: list[str] | None, config: RunConfig, resolved: Any, device: Any,
                    executor_name: str, out: Path) -> RunOutcome:
    from musicbench.leaderboard import write_leaderboard

    settings = config.run
    samples = settings.quick_samples if options.quick else settings.samples
    ws = Workspace(plugins, cache_dir=cache_dir(), device=device, progress=progress,
                   seed=settings.seed, allow_training=settings.allow_training)
    plan = plan_cells(resolved, ws, settings, quick=options.quick)
    specs = plan.specs
    store = Store(out / "results.sqlite")
    try:
        done = store.finished_keys(clean_only=options.rerun_dirty)
        todo = [s for s in specs if s.key not in done]
        environment = describe_environment(device)
        run_settings = asdict(settings) | {"samples_used": samples, "quick": options.quick,
                                           "device": str(device), "executor": executor_name,
                                           "datasets": plan.datasets,
                                           "only": list(options.only)}
        run_id = store.start_run(
            started=now(), config_source=config.source, config_text=config.text,
            argv=argv if argv is not None else sys.argv, settings=run_settings,
            environment=environment | {"plugins": plugins.describe()},
            plan=[s.key for s in specs],
        )

        sink = _StoreSink(store, run_id, plugins)
        EXECUTORS[executor_name](settings).run(todo, ws, environment, sink, progress)
        store.finish_run(run_id, now())
        records = store.cells([s.key for s in specs])
        board = write_leaderboard(store, out / "leaderboard.md", fmt="md")
    finally:
        store.close()
    return RunOutcome(out, len(specs), len(specs) - len(todo), records, board)


class _StoreSink:
    """The driver's end of an executor: records and kept shards into the store (one
    transaction each), observers told of every finished cell."""

    def __init__(self, store: Store, run_id: int, plugins: PluginSystem):
        self.store, self.run_id, self.plugins = store, run_id, plugins

    def cell(self, record: CellRecord) -> None:
        self.store.write_cell(record, self.run_id)
        for err in self.plugins.notify_cell_finished(record):
            from musicbench.ui import print_note

            print_note(f"cell_finished observer failed: {err}", "yellow")

    def shard(self, cell_key: str, shard: ShardResult) -> None:
        self.store.write_shard(cell_key, shard)

    def kept_shards(self, cell_key: str) -> list[ShardResult]:
        return self.store.shards(cell_key)

    def fooled(self, keys: tuple[str, ...]) -> frozenset[str]:
        from musicbench.cell_tasks import fooled_in

        return fooled_in(self.store.cells(list(keys)), keys)


RUN_LOCK = ".musicbench-run.lock"
"""The lock file in an output folder that its one running ``musicbench run`` holds."""


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold ``<out>/.musicbench-run.lock`` for one run; another run on ``out`` meanwhile
    raises :class:`OutputInUseError` (exit 2) naming the holder, before doing any work.

    Refuse rather than wait: a second run on the same folder is a duplicate submission, and
    waiting would hold its machine idle for hours only to find every cell done. The lock dies
    with its holder, so after a kill the rerun resumes at once. If the run fails before it
    starts (a config error found while planning), a folder this made for the lock alone is
    removed again, as if nothing had run."""
    created = not out.exists()
    lock = out / RUN_LOCK
    held = False
    try:
        with file_lock(lock, blocking=False, what=f"musicbench run --out {out}"):
            held = True
            try:
                yield
            except BaseException:
                if created and not (out / "results.sqlite").exists():
                    with contextlib.suppress(OSError):
                        lock.unlink()
                        out.rmdir()
                raise
    except LockBusy as busy:
        if held:  # raised by the run itself, not by this lock
            raise
        raise OutputInUseError(
            f"another musicbench run ({describe_holder(busy.holder)}) is using {out}; wait "
            "for it to finish (then rerunning resumes, nothing is computed twice) or pass "
            "another --out") from None


def ignored_ray_settings(settings: RunSettings) -> list[str]:
    """The ``ray_*`` keys set away from their defaults while the executor is not Ray (a
    ``--ray-address`` without ``--executor ray``, say): they change nothing."""
    default = RunSettings()
    return [f.name for f in dataclasses.fields(RunSettings) if f.name.startswith("ray_")
            and getattr(settings, f.name) != getattr(default, f.name)]


def warn_ignored_ray_settings(settings: RunSettings) -> None:
    """A yellow note naming :func:`ignored_ray_settings`, so they are not silently dropped."""
    from musicbench.ui import print_note

    ignored = ignored_ray_settings(settings)
    if ignored:
        print_note(f"warning: {', '.join(ignored)} set but executor is '{settings.executor}': "
                   "ignored (set [run] executor = \"ray\" or pass --executor ray)", "yellow")


def report_failed_plugins(plugins: PluginSystem) -> None:
    """One line on stderr per plugin that failed to load: its components are missing from
    this run (``musicbench list`` shows the traceback)."""
    from musicbench.ui import stderr

    for line in plugins.failure_lines():
        stderr.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True, highlight=False)
