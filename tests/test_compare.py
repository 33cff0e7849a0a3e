"""Paired comparisons (`musicbench compare`): the statistics against published, hand-computed
and scipy values, the pairing rules, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy.stats import binomtest
from typer.testing import CliRunner

from musicbench.cells import CELL_KINDS, CellRun, CellSpec, ComponentRef
from musicbench.cli import app
from musicbench.compare import compare
from musicbench.errors import ConfigError
from musicbench.interfaces.attack import ThreatModel
from musicbench.metrics import bootstrap_ci
from musicbench.stats import holm, mcnemar_exact_p, paired_difference_interval, wilson_interval
from musicbench.store import CellRecord, SampleRecord, Store

Z2 = 1.959963984540054**2

# -- statistics --------------------------------------------------------------------------------


@pytest.mark.parametrize("k,n", [(0, 1), (0, 12), (3, 12), (7, 20), (41, 41), (50, 100)])
def test_wilson_interval_matches_scipy(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_newcombe_interval_reproduces_the_published_example():
    # Fagerland, Lydersen & Laake (2014), Stat Med 33:2850, complete response before and after
    # consolidation therapy (Cavo et al. 2012): table [[59, 6], [16, 80]], Newcombe's
    # square-and-add interval -0.0621 (-0.1186 to -0.0046).
    low, high = paired_difference_interval(59, 6, 16, 80)
    assert (low, high) == pytest.approx((-0.1186, -0.0046), abs=5e-5)


def test_newcombe_interval_does_not_collapse_when_every_clip_agrees():
    # 20 clips fooled by both attacks: every paired difference is 0, so a bootstrap of the
    # differences is [0, 0]; Newcombe's interval is +-(1 - Wilson lower limit of 20/20).
    assert bootstrap_ci([0.0] * 20) == (0.0, 0.0)
    wilson_low = 20 / (20 + Z2)  # Wilson's lower limit at k = n, by hand
    assert wilson_low == pytest.approx(0.838875, abs=1e-6)
    assert paired_difference_interval(20, 0, 0, 0) == pytest.approx(
        (-(1 - wilson_low), 1 - wilson_low))
    # Concordant both ways (phi near 1): Newcombe's continuity correction of phi keeps a width.
    low, high = paired_difference_interval(10, 0, 0, 10)
    assert low < -0.05 and high > 0.05
    # and the width shrinks with more clips
    assert paired_difference_interval(40, 0, 0, 40)[1] < high


@pytest.mark.parametrize("table", [(3, 5, 1, 11), (0, 10, 0, 10), (5, 0, 9, 2), (1, 1, 7, 12)])
def test_newcombe_interval_holds_its_estimate_and_stays_in_range(table):
    a, b, c, d = table
    low, high = paired_difference_interval(a, b, c, d)
    assert -1 <= low < (b - c) / sum(table) < high <= 1


@pytest.mark.parametrize("b,c", [(0, 1), (2, 1), (10, 0), (3, 9), (7, 7), (0, 25)])
def test_mcnemar_exact_p_matches_the_binomial_test(b, c):
    assert mcnemar_exact_p(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-12)


def test_mcnemar_exact_p_by_hand():
    assert mcnemar_exact_p(10, 0) == pytest.approx(2 * 0.5**10)
    assert mcnemar_exact_p(1, 4) == pytest.approx(2 * (1 + 5) / 32)  # 2 P[X <= 1], X ~ B(5, .5)
    assert mcnemar_exact_p(0, 0) == 1.0  # no discordant clip: no evidence either way


def test_holm_adjusts_in_the_given_order():
    # sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1 = 0.04, 0.09, 0.08 -> 0.09 (monotone), 0.5
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.2]) == [0.2]
    assert holm([0.6, 0.7]) == [1.0, 1.0]


# -- a stored run ------------------------------------------------------------------------------


def _sample(sid: str, position: int, *, correct: bool, success: bool = False) -> SampleRecord:
    return SampleRecord(sid, position, 0, 0 if correct else 1, correct, correct, None,
                        correct and success, 1, 1)


def _cell(names: tuple[str, str, str, str], outcomes: dict[str, bool | None],
          status: str = "ok") -> CellRecord:
    """``outcomes``: clip id -> fooled (True/False) or None for a clip the model gets wrong."""
    refs = {kind: ComponentRef(kind, name, name, "1", {}, "test")
            for kind, name in zip(CELL_KINDS, names, strict=True)}
    spec = CellSpec(**refs, run=CellRun(0, len(outcomes), 8, 0, "none", ()),
                    threat="white-box", threat_model=ThreatModel("unbounded"), musicbench="0")
    samples = [_sample(sid, i, correct=o is not None, success=bool(o))
               for i, (sid, o) in enumerate(outcomes.items())]
    return CellRecord(spec, status, "", "", 1.0, samples=samples,
                      error="RuntimeError: out of memory" if status != "ok" else None)


def _store(out: Path, cells: list[CellRecord], unfinished: int = 0) -> Path:
    store = Store(out / "results.sqlite")
    plan = [c.key for c in cells] + [f"pending-{i}" for i in range(unfinished)]
    run_id = store.start_run(started="2026-01-01", config_source="test", config_text="",
                             argv=[], settings={}, environment={}, plan=plan)
    for cell in cells:
        store.write_cell(cell, run_id)
    store.close()
    return out


CLIPS = ["c0", "c1", "c2", "c3", "c4", "c5", "c9"]


@pytest.fixture
def run(tmp_path) -> Path:
    ids20 = [f"k{i}" for i in range(20)]
    cells = [
        # c4 is clean-wrong under pgd's draw only, c5 under nes's only (a randomized
        # defense's clean draws), c9 under both: 4 clips are attacked by both.
        _cell(("m21", "cnn", "none", "pgd"), {"c0": True, "c1": True, "c2": True, "c3": False,
                                              "c4": None, "c5": True, "c9": None}),
        _cell(("m21", "cnn", "none", "nes"), {"c0": True, "c1": False, "c2": False, "c3": True,
                                              "c4": True, "c5": None, "c9": None}),
        _cell(("m21", "cnn", "none", "zoo"), {c: False for c in CLIPS}),
        _cell(("m21", "cnn", "none", "cw"), {c: True for c in CLIPS}, status="failed"),
        # a defense: the undefended model is right on 8 clips and the attack fools 6 of them
        # (ASR 75%, robust 2/10); the lowpass model is right on 4 and fooled on 2 (ASR 50%,
        # robust 2/10): a better ASR, no better robust accuracy.
        _cell(("m21", "cnn", "none", "fgsm"),
              {f"d{i}": (None if i >= 8 else i < 6) for i in range(10)}),
        _cell(("m21", "cnn", "lowpass", "fgsm"),
              {f"d{i}": (None if i in (2, 3, 4, 5, 8, 9) else i < 2) for i in range(10)}),
        _cell(("m21", "wide", "none", "pgd"), {i: True for i in ids20}),
        _cell(("m21", "wide", "none", "nes"), {i: n >= 10 for n, i in enumerate(ids20)}),
        _cell(("gtzan", "wide", "none", "pgd"), {"g0": True}),
        _cell(("m21", "odd", "none", "pgd"), {"c0": True, "c1": True}),
        _cell(("m21", "odd", "none", "nes"), {"c0": True, "c2": True}),
    ]
    return _store(tmp_path / "run", cells, unfinished=1)


def test_attacks_are_paired_on_the_clips_both_attacked(run):
    result = compare(run, ["pgd", "nes"], model="cnn")
    (s,) = result.pairs
    assert (result.dataset, result.varying, result.fixed, result.quantity) == (
        "m21", "attack", "none", "asr")
    assert s.n == 4  # c4 and c5 were attacked by one cell only, c9 by none
    assert (s.only_a, s.only_b) == (2, 1)
    assert (s.rate_a, s.rate_b, s.diff) == pytest.approx((0.75, 0.5, 0.25))
    assert (s.ci_low, s.ci_high) == pytest.approx(paired_difference_interval(1, 2, 1, 0))
    assert s.p == pytest.approx(1.0)  # 2 vs 1 discordant clips: no evidence either way


def test_one_sided_wins_give_a_small_p_and_an_interval_above_zero(run):
    (s,) = compare(run, ["pgd", "nes"], model="wide", dataset="m21").pairs
    assert (s.n, s.only_a, s.only_b) == (20, 10, 0)
    assert s.p == pytest.approx(2 * 0.5**10)
    assert s.ci_low > 0


def test_several_pairs_are_holm_adjusted_over_this_comparison(run):
    result = compare(run, ["pgd", "nes", "zoo"], model="cnn")
    assert [(p.a, p.b) for p in result.pairs] == [("pgd", "nes"), ("pgd", "zoo")]
    assert result.comparisons == 2 and "2 comparisons" in result.header()
    zoo = result.pairs[1]
    assert (zoo.n, zoo.only_a, zoo.only_b) == (5, 4, 0)  # zoo is attacked where pgd is
    assert zoo.p == pytest.approx(2 * 0.5**4)
    assert [p.p_holm for p in result.pairs] == pytest.approx(holm([1.0, 0.125]))
    assert zoo.p_holm == pytest.approx(2 * 0.125)  # the smaller of 2 p-values, times 2


def test_defenses_compare_robust_accuracy_on_all_clips(run):
    result = compare(run, ["lowpass", "none"], model="cnn", attack="fgsm")
    (s,) = result.pairs
    assert (result.varying, result.fixed, result.quantity) == ("defense", "fgsm",
                                                               "robust_accuracy")
    assert s.n == 10  # every clip, clean-wrong ones included (they count as not robust)
    # robust: lowpass on d6, d7; none on d6, d7 -> no difference, although the ASRs differ
    assert (s.rate_a, s.rate_b, s.diff, s.only_a, s.only_b) == pytest.approx(
        (0.2, 0.2, 0.0, 0, 0))
    assert s.ci_low < 0 < s.ci_high and s.p == 1.0


@pytest.mark.parametrize("kwargs,message", [
    (dict(labels=["pgd", "nse"], model="cnn"), "no attack 'nse'.*Did you mean 'nes'"),
    (dict(labels=["pgd", "nes"], model="cnm"), "no model 'cnm'.*Did you mean 'cnn'"),
    (dict(labels=["pgd", "nes"], model="cnn", defense="lowpas"), "Did you mean 'lowpass'"),
    (dict(labels=["pgd", "cw"], model="cnn"), "did not finish \\(status failed: RuntimeError"),
    (dict(labels=["pgd", "nes"], model="wide"), "datasets gtzan, m21; name one with --dataset"),
    (dict(labels=["pgd", "nes"], model="odd"), "different clips \\(2 and 2 clips, 1 in common"),
    (dict(labels=["pgd"], model="cnn"), "at least two attack labels"),
    (dict(labels=["pgd", "pgd"], model="cnn"), "named twice: pgd"),
    (dict(labels=["none", "lowpass"], model="cnn", attack="fgsm", defense="none"), "not both"),
])
def test_impossible_requests_say_what_to_do(run, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        compare(run, **kwargs)


def test_unknown_labels_mention_unfinished_planned_cells(run):
    with pytest.raises(ConfigError, match="1 planned cell of the run has no result yet"):
        compare(run, ["pgd", "apgd"], model="cnn")


# -- command line ------------------------------------------------------------------------------


def _invoke(*args: str):
    return CliRunner().invoke(app, ["compare", *args], env={"COLUMNS": "200"})


def test_cli_prints_a_table_on_stderr_with_the_number_of_comparisons(run):
    result = _invoke(str(run), "--model", "cnn", "pgd", "nes", "zoo")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "Holm-Bonferroni adjusted over 2 comparisons" in " ".join(result.stderr.split())
    assert "+25.0" in result.stderr and "p Holm (m=2)" in result.stderr


def test_cli_json_csv_and_md_go_to_stdout(run):
    doc = json.loads(_invoke(str(run), "--model", "cnn", "pgd", "nes", "zoo",
                             "--format", "json").stdout)
    assert doc["comparisons"] == 2 and doc["quantity"] == "asr"
    assert [(p["b"], p["n"], p["only_a"], p["only_b"]) for p in doc["pairs"]] == [
        ("nes", 4, 2, 1), ("zoo", 5, 4, 0)]
    assert doc["pairs"][1]["p_holm"] == pytest.approx(0.25)
    lines = _invoke(str(run), "--model", "cnn", "--attack", "fgsm", "none", "lowpass",
                    "--format", "csv").stdout.splitlines()
    assert lines[0].startswith("dataset,model,varying,fixed,quantity,a,b,n,")
    assert lines[1].startswith("m21,cnn,defense,fgsm,robust_accuracy,none,lowpass,10,0.2,0.2,")
    md = _invoke(str(run), "--model", "cnn", "pgd", "nes", "--format", "md").stdout
    assert "1 comparison." in md and "| pgd | nes | 4 | 75.0 | 50.0 | +25.0 [" in md


@pytest.mark.parametrize("args,message", [
    (["--model", "cnn", "pgd", "nse"], "Did you mean 'nes'?"),
    (["--model", "cnn", "pgd", "nes", "--format", "xml"], "--format must be one of"),
])
def test_cli_errors_exit_2_with_one_line(run, args, message):
    result = _invoke(str(run), *args)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr


def test_cli_without_a_store_exits_2(tmp_path):
    result = _invoke(str(tmp_path / "nowhere"), "--model", "cnn", "pgd", "nes")
    assert result.exit_code == 2 and "no results at" in result.stderr
    assert not (tmp_path / "nowhere").exists()  # reading never creates a store


# -- clustering by work ------------------------------------------------------------------------


def _with_works(cell: CellRecord, works: dict[str, str]) -> CellRecord:
    for s in cell.samples:
        s.work_id = works[s.sample_id]
    return cell


def test_clips_of_shared_works_are_compared_clustered_by_work(tmp_path):
    # 16 clips in 4 works of 4; pgd fools every clip of works 0-2, nes only works 0's
    ids = [f"k{i}" for i in range(16)]
    works = {sid: f"w{i // 4}" for i, sid in enumerate(ids)}
    out = _store(tmp_path / "run", [
        _with_works(_cell(("m21", "cnn", "none", "pgd"), {i: n < 12 for n, i in enumerate(ids)}),
                    works),
        _with_works(_cell(("m21", "cnn", "none", "nes"), {i: n < 4 for n, i in enumerate(ids)}),
                    works)])
    result = compare(out, ["pgd", "nes"], model="cnn")
    (s,) = result.pairs
    assert (s.n, s.only_a, s.only_b, s.works, s.clustered) == (16, 8, 0, 4, True)
    assert s.p == pytest.approx(0.5)  # 2 works of +4 each: 2 of the 2^2 sign vectors as extreme
    assert s.p > mcnemar_exact_p(8, 0)  # which treats the 8 clips as 8 independent wins
    assert s.ci_low < paired_difference_interval(4, 8, 0, 4)[0]
    assert "clustered by work: 4 works" in result.header()
    assert "sign-flip" in result.header()
    doc = json.loads(_invoke(str(out), "--model", "cnn", "pgd", "nes", "--format",
                             "json").stdout)
    assert doc["clustering"] == "clustered by work: 4 works" and "sign-flip" in doc["test"]
    assert doc["pairs"][0]["works"] == 4
    md = _invoke(str(out), "--model", "cnn", "pgd", "nes", "--format", "md").stdout
    assert "| pgd | nes | 16 (4 works) |" in md


def test_clips_without_work_ids_are_compared_unclustered_and_it_says_so(run):
    result = compare(run, ["pgd", "nes"], model="cnn")
    assert result.pairs[0].works is None and not result.clustered
    assert "the clips carry no work ids" in result.header()
    assert "exact McNemar" in result.header()
