"""The evaluation protocol the harness imposes (musicbench.protocol): a survivor cascade in
which each attack runs only on what the earlier ones left, and sanity gates planned for every
row with a defense (10x the radius, BPDA through the identity, a stronger run on the
survivors), with unbounded attacks reported as ASR and failures, never as robustness."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_leaderboard_flags import LINF, UNBOUNDED, _ref, record

from musicbench.cells import CellRun, CellSpec
from musicbench.config import parse_config
from musicbench.defense_checks import measure
from musicbench.leaderboard import (
    MASKED,
    WEAK,
    _add_flags,
    _summaries,
    cell_row,
    render_markdown,
    severity,
)
from musicbench.planner import evaluation, plan_cells, resolve
from musicbench.ray_executor import cascade_waves
from musicbench.store import SampleRecord
from musicbench.workspace import Workspace

CONFIG = """
[run]
samples = 8
batch_size = 4
device = "cpu"
fad_encoder = ""
metrics = ["lsd", "snr", "l2"]
eot_samples = 2
eval_draws = 3
{run}
[[datasets]]
name = "toy-tones"
[[models]]
name = "toy-model"
[[defenses]]
name = "none"
[[defenses]]
name = "toy-noise"
[[attacks]]
name = "pgd"
eps = 0.002
steps = 3
[[attacks]]
name = "fgsm"
eps = 0.002
[[attacks]]
name = "cw"
label = "cw-weak"
steps = 2
binary_search_steps = 1
learning_rate = 1e-9
"""


def _plan(toy_plugins, run: str = "") -> list[CellSpec]:
    from musicbench.cache import cache_dir

    config = parse_config(CONFIG.format(run=run))
    ws = Workspace(toy_plugins, cache_dir=cache_dir(), device=torch.device("cpu"))
    return plan_cells(resolve(config, toy_plugins), ws, config.run, quick=False).specs


def _by_label(specs: list[CellSpec], defense: str) -> dict[str, CellSpec]:
    return {s.attack.label: s for s in specs if s.defense.name == defense}


def test_sanity_gates_are_planned_for_every_row_with_a_defense(toy_plugins):
    specs = _plan(toy_plugins)
    noisy = _by_label(specs, "toy-noise")
    assert set(noisy) == {"pgd", "fgsm", "cw-weak", "pgd, 10×ε", "pgd, BPDA identity",
                          "pgd, converged"}
    large = noisy["pgd, 10×ε"]
    assert large.run.role == "large-radius" and large.attack.params["eps"] == pytest.approx(0.02)
    assert large.threat_model == dataclasses.replace(LINF, eps=pytest.approx(0.02))
    identity = noisy["pgd, BPDA identity"]
    assert identity.run.role == "identity-bpda" and identity.run.bpda
    assert identity.threat_model == noisy["pgd"].threat_model
    stronger = noisy["pgd, converged"]
    # twice the steps and the EOT draws, on what every cell of the threat model left
    assert stronger.attack.params["steps"] == 6 and stronger.run.eot_samples == 4
    assert set(stronger.run.after) == {noisy[k].key for k in ("pgd", "fgsm",
                                                              "pgd, BPDA identity")}
    # the undefended row (an identity, measured) gets none; unbounded attacks none anywhere
    assert set(_by_label(specs, "none")) == {"pgd", "fgsm", "cw-weak"}
    assert set(_by_label(_plan(toy_plugins, "sanity = false"), "toy-noise")) == {
        "pgd", "fgsm", "cw-weak"}
    # every gate has a key of its own: a config entry with the same attack never collides
    assert len({s.key for s in specs}) == len(specs)


def test_the_cascade_chains_the_attacks_of_one_row_and_threat_model(toy_plugins):
    plain = _by_label(_plan(toy_plugins), "none")
    assert all(not s.run.after for s in plain.values())
    chained = _by_label(_plan(toy_plugins, "cascade = true"), "none")
    assert chained["pgd"].run.after == ()
    assert chained["fgsm"].run.after == (chained["pgd"].key,)
    assert chained["cw-weak"].run.after == ()  # alone in its threat model
    assert chained["fgsm"].key != plain["fgsm"].key  # what it attacks is part of the key
    noisy = _by_label(_plan(toy_plugins, "cascade = true"), "toy-noise")
    assert noisy["pgd, BPDA identity"].run.after == (noisy["pgd"].key, noisy["fgsm"].key)
    assert noisy["pgd, 10×ε"].run.after == ()


def test_specs_with_a_cascade_round_trip_and_run_in_waves(toy_plugins):
    specs = _plan(toy_plugins, "cascade = true")
    assert [CellSpec.from_dict(s.to_dict()).key for s in specs] == [s.key for s in specs]
    waves = cascade_waves(specs)
    position = {s.key: i for i, wave in enumerate(waves) for s in wave}
    assert sum(len(w) for w in waves) == len(specs) and len(waves) > 1
    assert all(position[k] < position[s.key] for s in specs for k in s.run.after)


def test_a_cascade_attacks_only_the_survivors_and_the_weak_unbounded_attack_is_flagged(
        tmp_path):
    from conftest import run_toy_config

    outcome, _ = run_toy_config(tmp_path, CONFIG.format(run="cascade = true"))
    assert not outcome.failed
    cells = {(r.spec.defense.name, r.spec.attack.label): r for r in outcome.records}
    for defense in ("none", "toy-noise"):
        first, second = cells[(defense, "pgd")], cells[(defense, "fgsm")]
        left = {s.sample_id for s in first.samples if s.clean_correct and not s.success}
        assert second.info.n_attacked == len(left)
        assert {s.sample_id for s in second.samples if s.attacked} == left
    board_rows = [cell_row(r) for r in outcome.records]
    _add_flags(outcome.records, board_rows)
    rows = {(r["defense"], r["attack"]): r for r in board_rows}
    weak = rows[("toy-noise", "cw-weak")]
    assert weak["robust_accuracy"] is None and weak["robust_accuracy_ci"] is None
    assert any(f.startswith(f"{WEAK} attack failed on ") for f in weak["flags"])
    summary, tms, _ = _summaries(outcome.records, board_rows)
    assert UNBOUNDED not in tms and all(tm.eps == 0.002 for tm in tms)
    for s in summary:  # the worst case is the last link of the chain, exact by construction
        (worst,) = s.worst_case
        last = rows[(s.defense, "pgd, converged" if s.defense == "toy-noise" else "fgsm")]
        survivors = round(last["robust_accuracy"] * last["n"])
        assert worst.survivors == survivors


def _flags(records):
    rows = [cell_row(r) for r in records]
    _add_flags(records, rows)
    return rows


def _as(rec, role: str, after: tuple[str, ...] = (), **run):
    spec = rec.spec
    spec = dataclasses.replace(spec, run=dataclasses.replace(spec.run, role=role, after=after,
                                                             **run))
    return dataclasses.replace(rec, spec=spec)


def test_gates_flag_weak_and_masked_figures_and_mark_the_headline():
    pgd = record("pgd", "white-box", [True] * 4 + [False] * 4, defense="d")
    big = _as(record("pgd, 10×ε", "white-box", [True] + [False] * 7, defense="d",
                     name="pgd", tm=dataclasses.replace(LINF, eps=0.02)), "large-radius")
    # BPDA through the identity fools clip 0, which exact gradients left correct
    identity = _as(record("pgd, BPDA identity", "white-box", [False] + [True] * 3 + [False] * 4,
                          defense="d", name="pgd"), "identity-bpda", bpda=True)
    # the stronger run attacks what both left (clips 1-3) and fools clip 1
    converged = _only(record("pgd, converged", "white-box", [False, False, True, True]
                             + [False] * 4, defense="d", name="pgd"), {1, 2, 3})
    converged = _as(converged, "convergence", after=(pgd.key, identity.key))
    rows = _flags([pgd, big, identity, converged])
    assert rows[1]["flags"][0].startswith(f"{WEAK} attack too weak at 10× the radius (7/8")
    assert rows[2]["flags"][0].startswith(f"{MASKED} gradient masking: BPDA through the "
                                          "identity beats exact gradients (1 clip(s)")
    assert rows[3]["flags"][0].startswith(f"{WEAK} 1 of 3 survivors fell")
    summary, tms, attacks = _summaries([pgd, big, identity, converged], rows)
    assert tms == [LINF] and [a for a, _ in attacks] == ["pgd", "pgd, BPDA identity",
                                                         "pgd, converged"]
    (worst,) = summary[0].worst_case
    assert worst.survivors == 2 and worst.attacks == ["pgd"]  # clips 2 and 3 survive all
    assert worst.marks == MASKED + WEAK and len(worst.flags) == 3


def _only(rec, attacked: set[int]):
    """``rec`` as a cascade cell that attacked only the clips at ``attacked`` (the others:
    clean-correct, not attacked, no success), its counts and rates recomputed."""
    from musicbench.runner import _cell_metrics

    rec.samples[:] = [s if s.position in attacked else
                      dataclasses.replace(s, attacked=False, success=False, metrics={})
                      for s in rec.samples]
    rec.metrics = _cell_metrics(rec.samples, [], 1.0, False, rec.info)
    return rec


def test_a_skipped_clip_is_decided_by_the_cell_that_fooled_it():
    first = record("pgd", "white-box", [False] * 4 + [True] * 4)
    # the cascade did not attack clips 0-3 again
    second = _as(_only(record("fgsm", "white-box", [True] * 8), {4, 5, 6, 7}), "",
                 after=(first.key,))
    assert second.info.n_attacked == 4
    summary, _, _ = _summaries([first, second], _flags([first, second]))
    assert summary[0].worst_case[0].survivors == 4


def test_flag_severity_and_the_unbounded_section():
    assert severity("vanishing gradients: median ...") == MASKED
    assert severity("black-box beats ... (…: beyond chance): gradient masking?") == MASKED
    assert severity("black-box beats ... (…: within chance): gradient masking?") == ""
    assert severity(f"{WEAK} attack failed on 2 of 8 clips") == WEAK
    assert severity("defense costs 12.0 points of clean accuracy") == ""
    cw = record("cw", "white-box", [True] * 2 + [False] * 6, tm=UNBOUNDED)
    for s in cw.samples:
        if s.success:
            s.metrics.update(snr=40.0, l2=0.1)
    from musicbench.leaderboard import Leaderboard

    rows = _flags([cw])
    summary, tms, attacks = _summaries([cw], rows)
    assert tms == [] and summary[0].worst_case == []
    assert rows[0]["median_snr_db"] == 40.0 and rows[0]["median_l2"] == 0.1
    header = {"date": "", "musicbench": "0", "git_revision": "x", "revisions": {"x": 1},
              "torch": "", "device": "cpu", "seed": 0, "config": "c", "stored": 1,
              "planned": 1, "dataset_fingerprints": {}, "samples": {}, "sanity": False}
    text = render_markdown(Leaderboard(header, rows, summary, attacks, tms, {}, []))
    assert "## Unbounded attacks" in text and "2 ⚠" in text
    assert "sanity gates off" in text


def test_a_defense_entry_can_force_bpda_and_eot(toy_plugins):
    from toyplugins import ToyNoise

    config = parse_config(CONFIG.format(run="").replace(
        'name = "toy-noise"', 'name = "toy-noise"\nbpda = true\neot_samples = 5'))
    defense = config.components["defense"][1]
    pgd = config.components["attack"][0]
    noise = ToyNoise()
    noise.name = "toy-noise"
    noise.bind(16_000)
    behaviour = measure(noise, 16_000)
    forced = evaluation(config.run, defense, pgd, "white-box", behaviour)
    assert forced["bpda"] and forced["eot_samples"] == 5
    # a black-box attack now gets the defense's EOT too (each draw a query of its budget)
    assert evaluation(config.run, defense, pgd, "black-box", behaviour)["eot_samples"] == 5
    with pytest.raises(Exception, match="expected true or false"):
        parse_config(CONFIG.format(run="").replace('name = "toy-noise"',
                                                   'name = "toy-noise"\nbpda = "yes"'))


def test_cell_runs_keep_their_old_keys_without_protocol_settings():
    base = CellRun(0, 8, 8, 0, "", ("lsd",))
    assert "after" not in base.key_data() and "role" not in base.key_data()
    assert "role" in CellRun(0, 8, 8, 0, "", ("lsd",), role="convergence").key_data()
    assert SampleRecord("a", 0, 0, 0, True, False, 0, False, 0, 0).attacked is False
    assert _ref("attack", "pgd").label == "pgd"


def test_only_one_attack_of_a_cascade_keeps_the_attacks_before_it(toy_plugins):
    from musicbench.planner import resolve_only

    config = parse_config(CONFIG.format(run="cascade = true"))
    kept = resolve_only(config, toy_plugins, ["attack=fgsm"])
    assert [r.spec.label for r in kept["attack"]] == ["pgd", "fgsm"]  # fgsm's key needs pgd's
    plain = parse_config(CONFIG.format(run=""))
    assert [r.spec.label for r in resolve_only(plain, toy_plugins, ["attack=fgsm"])["attack"]
            ] == ["fgsm"]


def test_compare_carries_the_boards_severity_marks(tmp_path):
    from conftest import run_toy_config

    from musicbench.compare import compare, render_json, render_markdown

    _, out = run_toy_config(tmp_path, CONFIG.format(run=""))
    comparison = compare(out, ["pgd", "cw-weak"], model="toy-model", defense="toy-noise")
    (failed,) = comparison.flags["cw-weak"]  # the deliberately weak C&W fooled nothing
    assert failed.startswith(f"{WEAK} attack failed on ")
    text = render_markdown(comparison)
    assert f"| cw-weak {WEAK} |" in text and f"- cw-weak: {failed}" in text
    assert '"cw-weak": [' in render_json(comparison)


def test_a_model_that_draws_is_attacked_with_eot_and_judged_over_draws(toy_plugins, tmp_path):
    """AutoAttack checks a model for randomness before it runs; so does the harness: a model
    with dropout left on gets EOT and judgement over draws, with no defense to cause them."""
    from conftest import run_toy_config

    text = CONFIG.format(run="").replace('[[models]]\nname = "toy-model"',
                                         '[[models]]\nname = "dropout-model"')
    config = parse_config(text)
    from musicbench.cache import cache_dir

    ws = Workspace(toy_plugins, cache_dir=cache_dir(), device=torch.device("cpu"))
    specs = plan_cells(resolve(config, toy_plugins), ws, config.run, quick=False).specs
    pgd = next(s for s in specs if s.defense.name == "none" and s.attack.label == "pgd")
    assert (pgd.run.eot_samples, pgd.run.eval_draws) == (2, 3)
    outcome, _ = run_toy_config(tmp_path, text)
    cell = next(r for r in outcome.records
                if r.spec.defense.name == "none" and r.spec.attack.label == "pgd")
    assert cell.status == "ok" and cell.info.adaptive == "eot"
    assert any("'dropout-model' is randomized" in f for f in cell.info.flags)
    assert all(s.clean_wrong is not None for s in cell.samples)  # judged over draws


def test_the_bpda_surrogates_fidelity_reaches_header_and_json():
    from musicbench.leaderboard import _header, _header_lines

    cell = record("pgd", "white-box", [True] * 8, defense="mp3",
                  defense_behaviour={"surrogate_fidelity": 0.37})
    cell = _as(cell, "", bpda=True)
    plain = record("fgsm", "white-box", [True] * 8, defense="mp3",
                   defense_behaviour={"surrogate_fidelity": 0.37})  # exact gradients
    rows = _flags([cell, plain])
    assert rows[0]["surrogate_fidelity"] == 0.37 and rows[1]["surrogate_fidelity"] is None
    run = {"environment": {}, "settings": {"device": "cpu"}, "finished": "", "started": "",
           "argv": [], "config_source": "c"}
    lines = _header_lines(_header([run], [cell, plain], 2))
    assert any("BPDA surrogates' fidelity" in line and "`mp3` 0.37" in line for line in lines)
    assert severity("BPDA surrogate of defense 'mp3' accounts for little of what the defense "
                    "does (...)") == WEAK
