"""The ``musicbench`` command line (typer + rich). Commands are thin: each calls one library
function. Tables and progress go to stderr; machine-readable output to stdout."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from musicbench.errors import ConfigError, MusicbenchError, StoreDamagedError
from musicbench.ui import print_error, print_note, stderr

app = typer.Typer(
    name="musicbench",
    help="Adversarial robustness benchmark for music models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



def _path(value: str | Path) -> Path:
    """A path argument: an empty one names nothing (``Path("")`` would be the working
    directory, so ``--out ""`` would write there), and is refused as a usage error (exit 2)."""
    if isinstance(value, Path):
        return value
    if not value:
        raise typer.BadParameter("an empty path names nothing; give a file or folder name")
    return Path(value)


def _text(value: str) -> str:
    """A text option that has no meaning empty (a device, an address): refused, exit 2, rather
    than read as "not given" (``--device ""`` would run on the config's device)."""
    if not value:
        raise typer.BadParameter("an empty value means nothing here; leave the option out "
                                 "for its default")
    return value


DeviceOpt = Annotated[
    Optional[str], typer.Option("--device", parser=_text,
                                help="auto | cpu | cuda | cuda:N (default: config)")
]


def _fail_config(exc: ConfigError) -> None:
    """One line on stderr, however long its paths (not folded to the terminal's width: a
    user's grep, or a test, finds the whole message on it), and exit 2."""
    stderr.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def run(
    config: Annotated[Optional[Path], typer.Argument(
        parser=_path, help="TOML config; default: embedded")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="run the small version (CI)")] = False,
    device: DeviceOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", parser=_path, help="output folder")]
    = None,
    only: Annotated[
        Optional[list[str]], typer.Option("--only", help="KIND=NAME, repeatable")
    ] = None,
    executor: Annotated[Optional[str], typer.Option("--executor", parser=_text,
                                                    help="local | ray")] = None,
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", parser=_text,
        help="with --executor ray: auto, HOST:PORT or ray://HOST:PORT of a running cluster "
             "(default: start a local one)")] = None,
    shard_clips: Annotated[Optional[int], typer.Option(
        "--shard-clips", help="split each cell into shards of this many clips (whole "
                              "batches), run and kept separately; 0: whole cells")] = None,
    rerun_dirty: Annotated[bool, typer.Option(
        "--rerun-dirty", help="recompute finished cells computed from a modified source tree "
                              "(needed before publishing them)")] = False,
) -> None:
    """Run every (dataset, model, defense, attack) cell of CONFIG; resumes if rerun."""
    from musicbench.config import load_config, with_options

    try:  # the config and the options that override it, checked before torch is even imported
        with_options(load_config(config), device=device, executor=executor,
                     ray_address=ray_address, shard_clips=shard_clips)
    except ConfigError as exc:
        _fail_config(exc)
        return

    from musicbench.plugins import get_plugins
    from musicbench.session import RunOptions, execute
    from musicbench.ui import RichProgress

    options = RunOptions(config=config, quick=quick, device=device, out=out,
                         only=list(only or []), executor=executor, ray_address=ray_address,
                         shard_clips=shard_clips, rerun_dirty=rerun_dirty)
    plugins = get_plugins()
    try:
        with RichProgress() as progress:
            outcome = execute(options, plugins, progress=progress, argv=sys.argv)
    except ConfigError as exc:
        _fail_config(exc)
        return
    _print_summary(outcome)
    if outcome.failed:
        raise typer.Exit(code=1)


def _print_summary(outcome) -> None:  # noqa: ANN001 (RunOutcome, imported lazily)
    """The end-of-run table: a rich table on a terminal; markdown at full width when stderr is
    a pipe or a file (a CI log), where a rich table would be squeezed to 80 columns."""
    from musicbench.leaderboard import cell_row

    def pct(x: float | None) -> str:
        return "—" if x is None else f"{100 * x:.1f}%"

    header = ("dataset", "model", "defense", "attack", "status", "clean acc", "ASR",
              "robust acc", "LSD", "SNR dB", "s")
    rows = []
    for rec in outcome.records:
        r = cell_row(rec)
        status = "ok" if r["status"] == "ok" else f"failed: {r['error']}"
        rows.append((r["dataset"], r["model"], r["defense"], r["attack"], status,
                     pct(r["clean_accuracy"]), pct(r["asr"]), pct(r["robust_accuracy"]),
                     "—" if r["lsd"] is None else f"{r['lsd']:.3f}",
                     "—" if r["snr_db"] is None else f"{r['snr_db']:.1f}",
                     f"{rec.seconds:.1f}"))
    footer = (f"{outcome.planned} cells planned, {outcome.skipped} already done, "
              f"{len(outcome.failed)} failed. Leaderboard: {outcome.leaderboard}")
    if not stderr.is_terminal:
        lines = [f"musicbench run → {outcome.out}", "", "| " + " | ".join(header) + " |",
                 "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row)
                  + " |" for row in rows]
        print("\n".join(lines + ["", footer]), file=sys.stderr)
        return
    table = Table(title=f"musicbench run → {outcome.out}", show_lines=False)
    for col in header:
        table.add_column(col)
    for row in rows:
        status = "[green]ok" if row[4] == "ok" else f"[red]failed[/]: {escape(row[4][8:])}"
        table.add_row(*row[:4], status, *row[5:])
    stderr.print(table)
    stderr.print(footer)


@app.command("list")
def list_(
    kind: Annotated[Optional[str], typer.Argument(help="attack, model, defense, dataset, ...")]
    = None,
) -> None:
    """List registered plugins: name, provider, status, summary."""
    from musicbench.hookspecs import REGISTER_HOOKS
    from musicbench.plugins import get_plugins

    plugins = get_plugins()
    kinds = list(REGISTER_HOOKS)
    if kind is not None:
        kind = kind.rstrip("s")
        if kind not in kinds:
            print_error(f"unknown kind '{kind}'; kinds: {', '.join(kinds)}")
            raise typer.Exit(code=2)
        kinds = [kind]
    header = ("kind", "name", "provider", "status", "summary")
    rows: list[tuple[str, ...]] = []
    for k in kinds:
        for entry in plugins.registry(k):
            aliases = f" ({', '.join(entry.aliases)})" if entry.aliases else ""
            rows.append((k, entry.name + aliases, entry.provider,
                         plugins.plugins[entry.plugin].status, entry.doc_summary))
    for info in plugins.plugins.values():
        if info.status != "loaded":
            rows.append(("plugin", info.name, info.provider,
                         "failed" if info.status == "failed" else "disabled", info.error or ""))
    if not sys.stdout.isatty():
        # A pipe or a file: one line per plugin, columns as wide as their longest cell (a rich
        # table would be squeezed to 80 columns and fold names and summaries over lines).
        lines = [tuple(" ".join(cell.split()) for cell in row) for row in (header, *rows)]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
        for line in lines:
            cells = [c.ljust(w) for c, w in zip(line, widths)] + [line[-1]]
            sys.stdout.write("  ".join(cells).rstrip() + "\n")
        return
    table = Table(title="musicbench plugins")
    for col in header:
        table.add_column(col, overflow="fold")
    for row in rows:
        status = "[red]failed" if row[3] == "failed" else row[3]
        table.add_row(*(escape(c) for c in row[:3]), status, escape(row[4]))
    from rich.console import Console

    Console().print(table)


@app.command()
def leaderboard(
    out: Annotated[Path, typer.Argument(parser=_path,
                                        help="a run's output folder (or its results.sqlite)")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", parser=_path,
                                                   help="write to FILE")] = None,
    fmt: Annotated[str, typer.Option("--format", help="md | csv | json")] = "md",
    allow_dirty: Annotated[bool, typer.Option(
        "--allow-dirty", help="write -o FILE even from a modified tree or modified-tree cells")]
    = False,
    store_copy: Annotated[Optional[Path], typer.Option(
        "--store-copy", parser=_path,
        help="also write a consistent snapshot of the run's store here (what "
             "leaderboards/runs/*.sqlite are), for readers to check figures")]
    = None,
) -> None:
    """Render the leaderboard of a stored run (stdout, or -o FILE to publish it).

    Publishing (-o) refuses when this source tree has uncommitted changes or when a cell was
    computed from one (its revision ends in +dirty): a published figure must be reproducible
    from the revisions its header names."""
    from musicbench.environment import git_revision
    from musicbench.leaderboard import RENDERERS, build, dirty_revisions
    from musicbench.store import Store

    if fmt not in RENDERERS:
        print_error(f"--format must be one of {', '.join(RENDERERS)}")
        raise typer.Exit(code=2)
    db = out if out.suffix == ".sqlite" else out / "results.sqlite"
    if not db.exists():
        print_error(f"no results at {db}; run `musicbench run --out {out}`")
        raise typer.Exit(code=2)
    from musicbench.files import UnsafePathError, check_writable_file

    try:  # what would be replaced is checked before any work (a device node, a folder, /proc)
        for path, what in ((output, "the leaderboard"), (store_copy, "the store copy")):
            if path is not None:
                check_writable_file(path, what)
        store = Store(db, readonly=True)
    except (StoreDamagedError, UnsafePathError) as exc:
        _fail_config(exc)
        return
    try:
        board = build(store)
    except StoreDamagedError as exc:
        _fail_config(exc)
        return
    except FileNotFoundError as exc:
        print_error(exc)
        raise typer.Exit(code=2) from None
    finally:
        store.close()
    if output is not None and not allow_dirty:
        problems = dirty_revisions(board)
        here = git_revision()
        if here.endswith("+dirty"):
            problems.insert(0, f"this tree ({here})")
        if problems:
            print_error(f"refusing to publish {output}: not reproducible from a clean revision "
                        f"({'; '.join(problems)}). Commit, then recompute those cells with "
                        "`musicbench run CONFIG --rerun-dirty`, or pass --allow-dirty for a "
                        "draft.")
            raise typer.Exit(code=2)
    text = RENDERERS[fmt](board)
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        from musicbench.files import atomic_write_text

        atomic_write_text(output, text)  # a kill mid-write leaves the old file whole
        stderr.print(f"wrote {output}")
    if store_copy is not None:
        from musicbench.store import snapshot

        snapshot(db, store_copy)
        stderr.print(f"wrote {store_copy}")


@app.command()
def report(
    out: Annotated[Path, typer.Argument(parser=_path,
                                        help="a run's output folder (or its results.sqlite)")],
    directory: Annotated[Optional[Path], typer.Option(
        "-o", "--output", parser=_path, help="report folder (default: OUT/report)")] = None,
) -> None:
    """Write a static HTML report of a stored run: sortable leaderboard tables, and per model
    the kept clips with players (clean, adversarial, amplified difference) and spectrograms.
    Opens from file:// or any static host; needs `pip install "musicbench\\[report]"`."""
    from musicbench.files import check_writable_folder
    from musicbench.report import write_report

    try:
        if directory is not None:  # before reading the store: /proc or a read-only folder
            check_writable_folder(directory, "the report folder")
        index = write_report(out, directory)
    except ConfigError as exc:
        _fail_config(exc)
        return
    except FileNotFoundError as exc:
        print_error(exc)
        raise typer.Exit(code=2) from None
    stderr.print(f"wrote {index}")


@app.command()
def merge(
    into: Annotated[Path, typer.Argument(parser=_path,
                                         help="the run folder to merge into (created if "
                                              "needed)")],
    sources: Annotated[list[Path], typer.Argument(
        parser=_path,
        help="run folders (or their results.sqlite) of the same config, e.g. --only runs")],
) -> None:
    """Copy the finished cells (clips, metrics, kept audio) and runs of SOURCES into INTO and
    rewrite its leaderboard: one config run as several --only runs, in several folders or on
    several machines, becomes one run. Finished cells already in INTO are kept as they are."""
    from musicbench.files import check_writable_folder
    from musicbench.merge import merge as merge_stores

    try:
        check_writable_folder(into, "the merge destination")  # /proc, a read-only folder
        report = merge_stores(into, list(sources))
    except ConfigError as exc:
        _fail_config(exc)
        return
    for name, copied in report.copied.items():
        stderr.print(f"{escape(name)}: {copied} cell(s) copied "
                     f"({report.replaced_failed[name]} replacing failed ones), "
                     f"{report.already_there[name]} already finished in {escape(str(into))}, "
                     f"{report.failed_skipped[name]} failed ones left out, "
                     f"{report.runs[name]} run record(s)")
    stderr.print(f"{report.audio_files} audio file(s) copied; leaderboard: "
                 f"{escape(str(into / 'leaderboard.md'))}")


@app.command("export-adv")
def export_adv(
    out: Annotated[Path, typer.Argument(parser=_path,
                                        help="a run's output folder (or its results.sqlite)")],
    target: Annotated[Path, typer.Argument(parser=_path,
                                           help="the folder to write (created if needed)")],
    attack: Annotated[Optional[str], typer.Option(
        "--attack", parser=_text, help="only cells of this attack label")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", parser=_text, help="only cells of this model label")] = None,
    defense: Annotated[Optional[str], typer.Option(
        "--defense", parser=_text, help="only cells of this defense label")] = None,
) -> None:
    """Write the run's kept adversarial clips as `external` attack submissions, one folder per
    cell (manifest.csv, export.json), and print the [[attacks]] entries that replay them on
    another revision, model or defense (docs/attacks.md, 'external')."""
    from musicbench.export_adv import export_adversarial, replay_entry
    from musicbench.files import check_writable_folder

    try:
        check_writable_folder(target, "the export folder")
        cells = export_adversarial(out, target, attack=attack, model=model, defense=defense)
    except (ConfigError, StoreDamagedError) as exc:
        _fail_config(exc)
        return
    for cell in cells:
        stderr.print(f"{escape(str(cell.folder))}: {cell.clips} clip(s)"
                     + ("" if cell.replayable else " (region threat model: for listening, "
                        "not replayable)"))
    print("\n\n".join(replay_entry(c) for c in cells if c.replayable))


@app.command()
def verify(
    out: Annotated[Path, typer.Argument(parser=_path,
                                        help="a run's output folder (or its results.sqlite), "
                                             "e.g. leaderboards/runs/default.sqlite")],
    cells: Annotated[int, typer.Option(
        "--cells", min=0, help="recompute this many of the reproducible cells, cheapest "
                               "first (by their stored attack time)")] = 1,
    everything: Annotated[bool, typer.Option(
        "--all", help="recompute every cell this revision reproduces")] = False,
    only: Annotated[
        Optional[list[str]], typer.Option("--only", help="KIND=NAME, repeatable: check only "
                                                         "these components' cells")
    ] = None,
    rtol: Annotated[float, typer.Option(
        "--rtol", min=0.0, help="relative tolerance for real-valued figures (0: bit for bit; "
                                "another kind of CPU may need ~1e-5)")] = 0.0,
    device: Annotated[Optional[str], typer.Option(
        "--device", parser=_text,
        help="cpu | cuda | cuda:N (default: the device the run used)")] = None,
) -> None:
    """Check a stored run: every cell's figures derived again from its stored clips, its spec
    against its key, then cells recomputed at this revision and compared clip by clip with
    the store. Exit 0 when every cell is consistent and every recomputed one identical, 1 when
    a cell is inconsistent, edited or differs, or none could be recomputed (the cells' keys
    differ here: the verdict says which parts), 2 on a bad argument."""
    import math

    from musicbench.plugins import get_plugins
    from musicbench.ui import RichProgress
    from musicbench.verify import FAILURES, remedies
    from musicbench.verify import verify as verify_run

    if not math.isfinite(rtol):
        print_error(f"--rtol must be a finite number >= 0, got {rtol}; 0 compares bit for "
                    "bit, ~1e-5 allows another kind of CPU")
        raise typer.Exit(code=2)
    try:
        with RichProgress() as progress:
            checks = verify_run(out, get_plugins(), cells=cells, everything=everything,
                                only=list(only or []), rtol=rtol, device=device,
                                progress=progress)
    except ConfigError as exc:
        _fail_config(exc)
        return
    except FileNotFoundError as exc:
        print_error(str(exc))
        raise typer.Exit(code=2) from None
    table = Table(title="cells of the store against this revision", title_justify="left")
    for col in ("cell", "verdict", "details"):
        table.add_column(col)
    for check in checks:
        table.add_row(escape(" / ".join(check.labels)), check.verdict,
                      escape("; ".join(check.details)))
    stderr.print(table)
    counts = {v: sum(c.verdict == v for c in checks) for v in
              ("identical", *FAILURES, "key differs", "not recomputed", "not planned")}
    stderr.print(", ".join(f"{n} {v}" for v, n in counts.items() if n))
    failed = sum(counts[v] for v in FAILURES)
    if failed or not counts["identical"]:
        if not failed and counts["key differs"]:
            print_note("no cell of this store is reproducible here: "
                       + "; ".join(remedies(checks)))
        raise typer.Exit(code=1)


@app.command()
def compare(
    out: Annotated[Path, typer.Argument(parser=_path,
                                        help="a run's output folder (or its results.sqlite)")],
    labels: Annotated[list[str], typer.Argument(
        help="attack labels, the first compared with each other; with --attack, defense labels")],
    model: Annotated[str, typer.Option("--model", parser=_text, help="model label")],
    dataset: Annotated[Optional[str], typer.Option(
        "--dataset", parser=_text,
        help="dataset label (needed when the model ran on several)")] = None,
    defense: Annotated[Optional[str], typer.Option(
        "--defense", parser=_text,
        help="the defense the attacks are compared under (default: none)")] = None,
    attack: Annotated[Optional[str], typer.Option(
        "--attack", parser=_text, help="compare the defenses LABELS under this attack")] = None,
    fmt: Annotated[Optional[str], typer.Option(
        "--format", parser=_text,
        help="md | csv | json on stdout (default: a table on stderr)")] = None,
) -> None:
    """Paired comparison of cells on the same clips: difference [95% CI], McNemar p, Holm."""
    from musicbench.compare import RENDERERS, cells_of, columns
    from musicbench.compare import compare as compare_run

    if fmt is not None and fmt not in RENDERERS:
        print_error(f"--format must be one of {', '.join(RENDERERS)}, got '{fmt}'")
        raise typer.Exit(code=2)
    try:
        result = compare_run(out, labels, model=model, dataset=dataset, defense=defense,
                             attack=attack)
    except ConfigError as exc:
        _fail_config(exc)
        return
    if fmt is not None:
        sys.stdout.write(RENDERERS[fmt](result))
        return
    table = Table(title=escape(result.header()), title_justify="left")
    for col in columns(result):
        table.add_column(escape(col), justify="left" if col in ("A", "B") else "right")
    for pair in result.pairs:
        table.add_row(*(escape(c) for c in cells_of(pair)))
    stderr.print(table)


@app.command()
def validate(
    name: Annotated[str, typer.Argument(help="a registered plugin name")],
    kind: Annotated[Optional[str], typer.Option("--kind", help="when NAME is ambiguous")] = None,
    param: Annotated[
        Optional[list[str]],
        typer.Option("--param", "-p", help="KEY=VALUE plugin parameter (TOML value), repeatable"),
    ] = None,
    device: DeviceOpt = None,
    sample_rate: Annotated[
        int, typer.Option("--sample-rate", min=1000, max=384_000,
                          help="defenses: the model rate to bind to")] = 16_000,
) -> None:
    """Run the conformance checks for one plugin (shapes, dtypes, determinism, budgets; a
    defense's declared randomized/differentiable flags against measurement)."""
    from musicbench.validate import parse_params, validate_plugin

    try:
        report = validate_plugin(name, kind=kind, device=device,
                                 params=parse_params(param or []), sample_rate=sample_rate)
    except ConfigError as exc:
        _fail_config(exc)
        return
    for check in report.checks:
        mark = "[green]✓" if check.ok else "[red]✗"
        stderr.print(f"{mark}[/] " + escape(check.name + ("" if check.ok else f": {check.detail}")))
    if not report.ok:
        stderr.print(f"[red]{report.kind} '{report.name}' failed validation")
        raise typer.Exit(code=1)
    stderr.print(f"[green]{report.kind} '{report.name}' passed {len(report.checks)} checks")


@app.command("attack")
def attack_one(
    source: Annotated[Path, typer.Argument(parser=_path,
                                           help="an audio file (any rate and format the "
                                                "loaders read)")],
    model: Annotated[str, typer.Option("--model", help="a classification model")],
    attack: Annotated[str, typer.Option("--attack", help="an attack")],
    output: Annotated[Path, typer.Option("--output", "-o", parser=_path,
                                         help="where to write the adversarial file (format "
                                              "from its suffix)")],
    defense: Annotated[str, typer.Option("--defense", help="a preprocessing defense")] = "none",
    param: Annotated[Optional[list[str]], typer.Option(
        "--param", "-p", help="KEY=VALUE attack parameter (TOML value); repeatable")] = None,
    model_param: Annotated[Optional[list[str]], typer.Option(
        "--model-param", help="KEY=VALUE parameter of --model; repeatable")] = None,
    defense_param: Annotated[Optional[list[str]], typer.Option(
        "--defense-param", help="KEY=VALUE parameter of --defense; repeatable")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1)] = 0,
    device: DeviceOpt = None,
) -> None:
    """Attack one file as a cell would (the harness's EOT/BPDA against the defense, success
    judged over draws); print the clean and adversarial predictions, LSD and SNR; write the
    adversarial audio back at the input's rate and check it still fools the model."""
    from musicbench.cache import cache_dir
    from musicbench.environment import resolve_device
    from musicbench.plugins import get_plugins
    from musicbench.single import attack_file, describe
    from musicbench.ui import RichProgress
    from musicbench.validate import parse_params
    from musicbench.workspace import Workspace

    try:
        dev = resolve_device(device or "auto")
        with RichProgress() as progress:
            ws = Workspace(get_plugins(), cache_dir=cache_dir(), device=dev, progress=progress)
            result = attack_file(ws, source, output, model=model, attack=attack,
                                 defense=defense, seed=seed,
                                 model_params=parse_params(model_param or []),
                                 attack_params=parse_params(param or []),
                                 defense_params=parse_params(defense_param or []))
    except ConfigError as exc:
        _fail_config(exc)
        return
    print(describe(result))


@app.command()
def train(
    name: Annotated[str, typer.Argument(help="a trainable model, inpainter, defense or metric "
                                             "(e.g. style-cnn, gacela, denoise-unet, advtrain, "
                                             "pamt-distance)")],
    param: Annotated[
        Optional[list[str]],
        typer.Option("--param", "-p", help="KEY=VALUE parameter (TOML value), as in a run "
                                          "config; repeatable"),
    ] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", help="training defenses: the base model to fit the defense to")] = None,
    model_param: Annotated[Optional[list[str]], typer.Option(
        "--model-param", help="KEY=VALUE parameter of --model; repeatable")] = None,
    dataset: Annotated[Optional[str], typer.Option(
        "--dataset", help="training defenses: the dataset (its train and valid splits; "
                          "default: the model's own train_dataset)")] = None,
    dataset_param: Annotated[Optional[list[str]], typer.Option(
        "--dataset-param", help="KEY=VALUE parameter of --dataset; repeatable")] = None,
    device: DeviceOpt = None,
) -> None:
    """Train a model, inpainter or preprocessing defense (anything with fit(ctx)), or fit a
    training defense to a model (DEFENSE --model M [--dataset D]), and save the weights in the
    cache, where a run with the same parameters loads them."""
    from musicbench.cache import cache_dir
    from musicbench.environment import resolve_device
    from musicbench.plugins import get_plugins
    from musicbench.ui import RichProgress
    from musicbench.validate import parse_params
    from musicbench.workspace import Workspace

    plugins = get_plugins()
    try:
        dev = resolve_device(device or "auto")
        with RichProgress() as progress:
            ws = Workspace(plugins, cache_dir=cache_dir(), device=dev, progress=progress)
            kind = next((k for k in ("model", "inpainter", "defense", "metric")
                         if name in plugins.registry(k)), "model")
            component = ws.make(kind, name, parse_params(param or []))
            fit = getattr(component, "fit", None)
            if kind == "defense" and getattr(component, "kind", None) == "training":
                summary = _fit_training_defense(ws, name, parse_params(param or []), model,
                                                parse_params(model_param or []), dataset,
                                                parse_params(dataset_param or []))
            elif model is not None or dataset is not None or model_param or dataset_param:
                raise ConfigError(f"--model, --dataset and their params are for training "
                                  f"defenses; {kind} '{name}' is not one")
            elif not callable(fit):
                raise ConfigError(
                    f"{kind} '{name}' has nothing to train: it has no fit(ctx) method (it ships "
                    "its weights or needs none). A model that musicbench trains subclasses "
                    "musicbench.api.TrainedModel (docs/plugins.md section 9)")
            else:
                summary = fit(ws.ctx)
    except ConfigError as exc:
        _fail_config(exc)
        return
    print_note(f"trained {name}: {summary}", "green")
    if isinstance(summary, dict) and summary.get("checkpoint"):
        print_note(f"weights: {summary['checkpoint']}", "green")


def _fit_training_defense(ws, name: str, params: dict, model: Optional[str],
                          model_params: dict, dataset: Optional[str],
                          dataset_params: dict) -> dict:
    """``musicbench train DEFENSE --model M``: the defended model, fitted (or found in the
    cache) exactly as a run's cell would get it."""
    if model is None:
        raise ConfigError(f"defense '{name}' is a training defense: name the model to fit it "
                          f"to, e.g. `musicbench train {name} --model style-cnn`")
    base = ws.model(model, model_params)
    if dataset is None:
        dataset = getattr(base.params, "train_dataset", None)
        if dataset is None:
            raise ConfigError(f"model '{model}' names no training dataset; pass --dataset")
        dataset_params = dict(getattr(base.params, "train_dataset_params", {})) | dataset_params
    data = ws.dataset(dataset, dataset_params)
    if data.task != base.task or data.sample_rate != base.sample_rate:
        raise ConfigError(f"dataset '{data.name}' ({data.task}, {data.sample_rate} Hz) cannot "
                          f"train model '{base.name}' ({base.task}, {base.sample_rate} Hz)")
    defense = ws.defense(name, params, base.sample_rate)
    defended = ws.defended_model(defense, base, data)
    summary = dict(getattr(defended, "training_summary", {}) or {})
    checkpoint = getattr(defended, "checkpoint", None)
    keep = ("key", "best_epoch", "valid_clean_accuracy", "valid_robust_accuracy",
            "train_seconds", "history")
    return {k: summary[k] for k in keep if k in summary} | {"checkpoint": str(checkpoint)}


def _add_plugin_commands() -> None:
    from musicbench.plugins import get_plugins

    # One call per plugin: a broken plugin command must not take the CLI, or the commands of
    # the plugins after it, down.
    for failure in get_plugins().call_each("register_commands", app=app):
        print_note(f"plugin '{failure.plugin}' failed to add commands: {failure.error}", "yellow")


NUMPY_BLAS_THREADS_ENV = "OPENBLAS_NUM_THREADS"


def limit_numpy_blas_threads(environ: dict[str, str] | None = None) -> None:
    """numpy's OpenBLAS gets one thread unless the user set ``OPENBLAS_NUM_THREADS``: read once,
    when numpy loads OpenBLAS, so it must be set before numpy is first imported (the CLI
    imports neither numpy nor torch before this). Its threads spin for a while after each
    matrix product and take the cores torch's own threads compute on: in the default run,
    FAD's Gaussians (numpy) between musicnn embeddings (torch) made every embedding 3× slower
    (35 → 100 ms; docs/benchmarks.md). musicbench's numpy algebra is small (753×753 at most)."""
    env = os.environ if environ is None else environ
    env.setdefault(NUMPY_BLAS_THREADS_ENV, "1")


def main() -> None:
    limit_numpy_blas_threads()
    _add_plugin_commands()
    try:
        app()
    except MusicbenchError as exc:  # raised outside a command's own handling
        if isinstance(exc, StoreDamagedError):
            stderr.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        else:
            print_error(exc)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
