"""Plugin discovery: provider tracking, duplicates, did-you-mean, broken plugins skipped."""

from __future__ import annotations

import pytest
from conftest import cli, make_site

from musicbench import hookimpl
from musicbench.errors import UnknownNameError
from musicbench.plugins import PluginSystem
from musicbench.registry import Entry, Registry


def test_builtins_are_discovered_through_entry_points():
    system = PluginSystem()
    assert {"builtin-attacks", "builtin-models", "builtin-datasets"} <= set(system.plugins)
    entry = system.get("attack", "pgd")
    assert entry.provider.startswith("musicbench ")
    assert entry.plugin == "builtin-attacks"


def test_duplicate_name_fails_the_later_plugin_and_names_both_providers():
    class Dup:
        @hookimpl
        def register_attacks(self, register):
            register("fresh-name", object)
            register("pgd", object)

    system = PluginSystem()
    info = system.add_plugin(Dup(), "dup", provider="dup-dist 1.0")
    assert info.status == "failed"
    assert "dup-dist 1.0" in info.error and "musicbench" in info.error
    assert "fresh-name" not in system.registry("attack")  # nothing of a failed plugin is kept
    assert system.get("attack", "pgd").provider.startswith("musicbench")


def test_unknown_name_suggests_closest():
    system = PluginSystem()
    with pytest.raises(UnknownNameError, match="Did you mean 'pgd'"):
        system.get("attack", "pgdd")


def test_aliases_resolve_to_the_entry():
    class Aliased:
        @hookimpl
        def register_attacks(self, register):
            register("long-attack-name", object, aliases=("lan",), summary="s")

    system = PluginSystem(discover=False)
    system.add_plugin(Aliased(), "aliased")
    assert system.get("attack", "lan").name == "long-attack-name"
    system.remove_plugin("aliased")
    assert "lan" not in system.registry("attack")


def test_registry_remove_drops_the_entry_and_its_aliases_by_name_only():
    reg = Registry("attack")
    reg.add(Entry("attack", "long-name", object, "dist 1", "p", aliases=("ln", "l")))
    with pytest.raises(KeyError, match="alias of 'long-name'"):
        reg.remove("ln")
    with pytest.raises(KeyError, match="unknown"):
        reg.remove("nope")
    assert reg.remove("long-name").name == "long-name"
    assert len(reg) == 0 and "ln" not in reg and "l" not in reg
    reg.add(Entry("attack", "ln", object, "dist 2", "q"))  # the freed alias is a free name


def test_register_hooks_go_through_pluggy_one_plugin_at_a_time():
    """Each plugin's register hooks are called through the plugin manager (so pluggy's
    monitoring, argument checks and wrappers apply) with only that plugin's implementations."""

    class One:
        @hookimpl
        def register_attacks(self, register):
            register("one-attack", object)

    class Two:
        @hookimpl
        def register_attacks(self, register):
            register("two-attack", object)

        @hookimpl
        def register_models(self, register):
            register("two-model", object)

    system = PluginSystem(discover=False)
    calls = []
    system.pm.add_hookcall_monitoring(
        lambda hook, impls, kwargs: calls.append((hook, [i.plugin_name for i in impls])),
        lambda outcome, hook, impls, kwargs: None,
    )
    system.add_plugin(One(), "one")
    system.add_plugin(Two(), "two")
    assert ("register_attacks", ["one"]) in calls
    assert ("register_attacks", ["two"]) in calls and ("register_models", ["two"]) in calls
    assert all(len(impls) <= 1 for _, impls in calls)  # never another plugin's hook
    assert system.plugins["two"].registered == [("attack", "two-attack"), ("model", "two-model")]
    assert system.get("attack", "one-attack").plugin == "one"


def test_plugin_raising_in_register_is_failed_and_others_work():
    class Broken:
        @hookimpl
        def register_models(self, register):
            raise RuntimeError("boom")

    system = PluginSystem()
    info = system.add_plugin(Broken(), "broken")
    assert info.status == "failed" and "boom" in info.error
    assert "style-cnn" in system.registry("model")


def test_misspelled_hook_is_an_error():
    class Typo:
        @hookimpl
        def register_atacks(self, register):
            pass

    info = PluginSystem(discover=False).add_plugin(Typo(), "typo")
    assert info.status == "failed" and "register_atacks" in info.error


def test_plugin_failing_at_import_is_listed_and_run_still_works(tmp_path, toy_site):
    site = make_site(tmp_path / "broken", "broken-plugin", {"broken": "broken_mod"},
                     {"broken_mod.py": "raise ImportError('this plugin cannot import')\n"})
    listed = cli("list", sites=(site, toy_site))
    assert listed.returncode == 0, listed.stderr
    assert "broken" in listed.stdout and "failed" in listed.stdout
    assert "this plugin cannot import" in listed.stdout
    assert "pgd" in listed.stdout  # the others still load
    config = tmp_path / "run.toml"
    config.write_text(TOY_CONFIG)
    result = cli("run", str(config), "--out", str(tmp_path / "out"), sites=(site, toy_site))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "leaderboard.md").exists()


def test_disabled_plugins_are_not_loaded(monkeypatch):
    monkeypatch.setenv("MUSICBENCH_DISABLE_PLUGINS", "builtin-attacks")
    system = PluginSystem()
    assert system.plugins["builtin-attacks"].status == "disabled"
    assert "pgd" not in system.registry("attack")


TOY_CONFIG = """
[run]
fad_encoder = ""
name = "toy"
samples = 8
batch_size = 4
device = "cpu"

[[datasets]]
name = "toy-tones"

[[models]]
name = "toy-model"

[[defenses]]
name = "none"

[[attacks]]
name = "fgsm"
eps = 0.01
"""


def test_third_party_reusing_a_builtin_name_fails_alone(tmp_path):
    site = make_site(tmp_path / "early", "aaa-plugin", {"aaa": "aaa_mod"}, {"aaa_mod.py": """
        from musicbench import hookimpl

        @hookimpl
        def register_attacks(register):
            register("pgd", "aaa_mod:X")
        """})
    listed = cli("list", "attack", sites=(site,))
    assert "fgsm" in listed.stdout  # the built-in family survived
    assert "aaa" in listed.stdout and "failed" in listed.stdout


def test_two_distributions_with_one_entry_point_name_are_reported(tmp_path):
    one = make_site(tmp_path / "one", "one-plugin", {"example": "one_mod"},
                    {"one_mod.py": "X = 1\n"})
    two = make_site(tmp_path / "two", "two-plugin", {"example": "two_mod"},
                    {"two_mod.py": "X = 2\n"})
    listed = cli("list", sites=(one, two))
    assert "already used by" in listed.stdout
