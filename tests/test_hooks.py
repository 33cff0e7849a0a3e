"""Every hook is documented, typed, and exercised: observers see finished cells, plugins add
commands."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from musicbench import hookimpl, hookspecs
from musicbench.plugins import PluginSystem
from musicbench.session import RunOptions, execute

DOCS = Path(__file__).parent.parent / "docs" / "plugins.md"
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
         if getattr(fn, "musicbench_spec", None) is not None]


def test_every_hookspec_is_documented_typed_and_in_the_plugin_guide():
    guide = DOCS.read_text()
    assert set(HOOKS) >= {"register_attacks", "register_models", "register_defenses",
                          "register_datasets", "register_inpainters", "register_encoders",
                          "register_metrics", "register_commands", "cell_finished"}
    for name in HOOKS:
        fn = getattr(hookspecs, name)
        assert fn.__doc__ and ":param" in fn.__doc__, f"{name} lacks parameter docs"
        assert all(p.annotation is not inspect.Parameter.empty
                   for p in inspect.signature(fn).parameters.values()), f"{name} is untyped"
        assert name in guide, f"{name} is missing from docs/plugins.md"


def test_cell_finished_observers_see_every_record_and_cannot_break_the_run(
        tmp_path, toy_plugins):
    seen = []

    class Observer:
        @hookimpl
        def cell_finished(self, record):
            seen.append((record.names, record.status, len(record.samples)))

    class Broken:
        @hookimpl
        def cell_finished(self, record):
            raise RuntimeError("observer bug")

    toy_plugins.add_plugin(Observer(), "observer")
    toy_plugins.add_plugin(Broken(), "broken-observer")
    config = tmp_path / "run.toml"
    from test_plugins import TOY_CONFIG

    config.write_text(TOY_CONFIG)
    outcome = execute(RunOptions(config=config, out=tmp_path / "out"), toy_plugins)
    assert not outcome.failed
    assert seen == [(("toy-tones", "toy-model", "none", "fgsm"), "ok", 8)]


class _Seen:
    def __init__(self, log):
        self.log = log

    @hookimpl
    def cell_finished(self, record):
        self.log.append(record)


class _BrokenObserver:
    @hookimpl
    def cell_finished(self, record):
        raise RuntimeError("observer bug")


@pytest.mark.parametrize("broken_at", [0, 1, 2])
def test_a_failing_cell_finished_observer_neither_stops_the_others_nor_goes_unreported(
        broken_at):
    seen = []
    plugins = [_Seen(seen), _Seen(seen)]
    plugins.insert(broken_at, _BrokenObserver())
    system = PluginSystem(discover=False)
    for i, plugin in enumerate(plugins):
        assert system.add_plugin(plugin, f"observer-{i}").status == "loaded"
    record = object()
    errors = system.notify_cell_finished(record)
    assert seen == [record, record]
    assert errors == [f"observer-{broken_at}: RuntimeError: observer bug"]


def test_a_failing_register_commands_plugin_does_not_stop_the_others():
    import typer

    class Adds:
        @hookimpl
        def register_commands(self, app):
            app.command("added")(lambda: None)

    class Breaks:
        @hookimpl(tryfirst=True)  # called first: the other plugin must still add its command
        def register_commands(self, app):
            raise ValueError("cannot add")

    system = PluginSystem(discover=False)
    system.add_plugin(Adds(), "adds")
    system.add_plugin(Breaks(), "breaks")
    app = typer.Typer()
    failures = system.call_each("register_commands", app=app)
    assert [c.name for c in app.registered_commands] == ["added"]
    assert [(f.plugin, str(f.error)) for f in failures] == [("breaks", "cannot add")]


def test_register_commands_adds_a_cli_command(tmp_path):
    from conftest import cli, make_site

    site = make_site(tmp_path / "cmd", "cmd-plugin", {"cmd": "cmd_mod"}, {"cmd_mod.py": """
        from musicbench import hookimpl

        @hookimpl
        def register_commands(app):
            @app.command("hello")
            def hello(name: str = "world"):
                print(f"hello {name}")
        """})
    result = cli("hello", "--name", "bench", sites=(site,))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello bench"


def test_a_failing_cell_is_recorded_with_traceback_and_others_go_on(tmp_path, toy_plugins):
    config = tmp_path / "run.toml"
    from test_plugins import TOY_CONFIG

    config.write_text(TOY_CONFIG + '\n[[attacks]]\nname = "out-of-range"\n')
    outcome = execute(RunOptions(config=config, out=tmp_path / "out"), toy_plugins)
    statuses = {r.names[3]: r for r in outcome.records}
    assert statuses["fgsm"].status == "ok"
    bad = statuses["out-of-range"]
    assert bad.status == "failed" and "outside [-1, 1]" in bad.error
    assert "Traceback" in bad.traceback
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    # out-of-range is unbounded: no worst case to bound (test_leaderboard_flags has the
    # bounded case's "(a cell failed: upper bound)")
    assert "**failed**" in board

