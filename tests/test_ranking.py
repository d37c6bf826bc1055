"""``mixnas rank-check``: the statistics on constructed tables, which architectures it picks, and the whole
check on a tiny searched run (local and Ray, resumed after an interruption, drawn on the results page)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mixnas.search.ranking as ranking_module
from mixnas.cli import main
from mixnas.search import CandidateEvaluator, EvalSettings, SearchSettings
from mixnas.search.optuna_runner import run_optuna_search
from mixnas.search.ranking import (
    RankSettings,
    load_ranking,
    noise_ceiling,
    pick_architectures,
    rank_check,
    ranking_statistics,
    seed_agreement,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ------------------------------------------------------------------------------------------ statistics
def test_statistics_on_constructed_tables() -> None:
    same = ranking_statistics([10, 20, 30, 40, 50], [60, 70, 80, 90, 95])
    assert same["kendall_tau"] == pytest.approx(1.0) and same["spearman_rho"] == pytest.approx(1.0)
    assert same["top3_overlap"] == 3 and same["regret"] == 0.0 and same["standalone_span"] == 35
    reverse = ranking_statistics([10, 20, 30, 40], [80, 70, 60, 50])
    assert reverse["kendall_tau"] == pytest.approx(-1.0) and reverse["regret"] == pytest.approx(30.0)
    # One swapped pair out of C(5, 2) = 10: tau = (9 - 1) / 10 = 0.8; rho = 1 - 6 * 2 / (5 * 24) = 0.9.
    one_swap = ranking_statistics([1, 2, 3, 4, 5], [10, 20, 30, 50, 40])
    assert one_swap["kendall_tau"] == pytest.approx(0.8) and one_swap["spearman_rho"] == pytest.approx(0.9)
    # The supernet's favourite (the last) reaches 40 where the best reaches 50: regret 10; top-3 {2, 3, 4} vs
    # {2, 3, 4}: all three shared.
    assert one_swap["regret"] == pytest.approx(10.0) and one_swap["top3_overlap"] == 3
    lo, hi = one_swap["kendall_tau_90"]
    assert -1.0 <= lo <= 0.8 <= hi <= 1.0
    families = ["a", "a", "a", "a", "b"]
    by_family = ranking_statistics([1, 2, 3, 4, 5], [4, 3, 2, 1, 9], families)["kendall_tau_by_family"]
    assert by_family == {"a": pytest.approx(-1.0)}  # "b" has one member: no tau of its own


def test_the_cost_baseline_ranks_by_gflops_alone() -> None:
    """cost_tau is Kendall tau between GFLOPs and the standalone accuracies, whatever the supernet says."""
    standalone = [60, 70, 80, 90, 95]
    stats = ranking_statistics([5, 4, 3, 2, 1], standalone, cost=[0.1, 0.2, 0.3, 0.5, 0.4])
    assert stats["kendall_tau"] == pytest.approx(-1.0)
    assert stats["cost_tau"] == pytest.approx(0.8)  # one swapped pair out of ten
    assert "cost_tau" not in ranking_statistics([1, 2, 3], [1, 2, 3])  # no cost given: no baseline
    with pytest.raises(ValueError, match="one value per architecture"):
        ranking_statistics([1, 2, 3], [1, 2, 3], cost=[1, 2])
    text = ranking_module.format_summary(stats)
    assert "ranking by GFLOPs alone reaches tau 0.800 (the supernet does not beat it)" in text


def test_seed_agreement_is_the_mean_tau_over_pairs_of_seeds() -> None:
    assert seed_agreement([[1, 2, 3, 4, 5]]) is None  # one seed: nothing to agree with
    assert seed_agreement([[1, 2, 3, 4, 5], [10, 20, 30, 50, 40]]) == pytest.approx(0.8)  # one swapped pair
    # Three seeds: pairs (0, 1) tau 1, (0, 2) tau -1, (1, 2) tau -1: mean -1/3.
    assert seed_agreement([[1, 2, 3], [4, 5, 6], [9, 8, 7]]) == pytest.approx(-1 / 3)


def test_noise_ceiling_is_what_a_perfect_proxy_reaches_against_the_seed_mean() -> None:
    """On simulated standalone tables whose truth is known, the estimate lies a little below the exact
    expected tau of the truth against the noisy seed mean (it is conservative), and above seed agreement."""
    from scipy.stats import kendalltau

    truth = np.linspace(60, 84, 12)
    assert noise_ceiling([truth]) is None  # one seed: no noise estimate
    assert noise_ceiling([truth, truth]) == 1.0  # seeds that agree exactly: no noise
    assert noise_ceiling([np.full(12, 70.0) + d for d in ([1, -1] * 6, [-1, 1] * 6)]) == 0.0  # spread all noise
    rng = np.random.default_rng(0)
    for sigma in (3.0, 5.0):  # per-training noise (points); the seed mean carries sigma / sqrt(2)
        exact = np.mean([kendalltau(truth, truth + rng.normal(0, sigma / np.sqrt(2), 12)).statistic
                         for _ in range(2000)])
        estimates = [noise_ceiling([truth + rng.normal(0, sigma, 12) for _ in range(2)], seed=i, draws=200)
                     for i in range(40)]
        agreements = [seed_agreement([truth + rng.normal(0, sigma, 12) for _ in range(2)]) for _ in range(200)]
        # Stated tolerance: the mean estimate within 0.1 below the exact ceiling (measured 0.03-0.04 below).
        assert exact - 0.1 < np.mean(estimates) <= exact + 0.02, (sigma, exact, np.mean(estimates))
        assert np.mean(estimates) > np.mean(agreements) + 0.1
    # More seeds average the noise away: a higher ceiling from the same per-training noise.
    four = [truth + rng.normal(0, 5.0, 12) for _ in range(4)]
    assert noise_ceiling(four) > noise_ceiling(four[:2])


def fake_table(rows: list[tuple[str, float, bool]]) -> pd.DataFrame:
    """Trials with the given stage-1 mixer, accuracy and feasibility (stage 2 always dwconv)."""
    from mixnas.search_space import ArchConfig

    mixers = {"window_attn": {"type": "window_attn", "window_size": 4}, "dwconv": {"type": "dwconv", "kernel_size": 3},
              "dge": {"type": "dge", "granularities": [1, 2]}}
    out = []
    for i, (mixer, accuracy, feasible) in enumerate(rows):
        a = ArchConfig.from_dict({"input_size": 32, "num_classes": 10, "patch_size": 8, "stages": [
            {"depth": 1 + i, "dim": 16, "heads": 2, "mlp_ratio": 2.0, "mixer": mixers[mixer]},
            {"depth": 1, "dim": 32, "heads": 2, "mlp_ratio": 2.0, "mixer": mixers["dwconv"]},
        ]})
        out.append({"number": i, "state": "COMPLETE", "arch_id": a.arch_id, "arch": a.canonical_json(),
                    "summary": a.summary(), "accuracy": accuracy, "gflops": 0.001 * (i + 1), "feasible": feasible,
                    "is_reference": False})
    return pd.DataFrame(out)


def test_picks_cover_every_mixer_include_the_best_and_spread() -> None:
    rows = [("window_attn", 90.0 - i, True) for i in range(12)] + [("dge", 20.0, True), ("window_attn", 95.0, False)]
    table = fake_table(rows)
    picks = pick_architectures(table, 5)
    assert len(picks) == 5 and picks["arch_id"].is_unique
    assert 90.0 in set(picks["accuracy"])  # the most accurate feasible one (95 is infeasible)
    mixers = {m for a in picks["arch"] for m in ranking_module.mixers_of(a)}
    assert {"window_attn", "dwconv", "dge"} <= mixers
    assert picks["accuracy"].max() - picks["accuracy"].min() >= 60  # spread from the top to the bottom
    assert list(picks["accuracy"]) == sorted(picks["accuracy"], reverse=True)


def test_picks_reach_the_bottom_of_the_range_after_the_mandatory_ones() -> None:
    """The picks that cover mixers and the best one take their own places in the range; the rest spread down
    to the least accurate architecture instead of crowding the top (where the first targets lie)."""
    rows = [("window_attn", 90.0 - i, True) for i in range(20)] + [("dge", 88.5, True)]
    picks = pick_architectures(fake_table(rows), 6)
    accuracy = sorted(picks["accuracy"], reverse=True)
    assert accuracy[0] == 90.0 and accuracy[-1] == 71.0  # the best and the worst
    assert 88.5 in accuracy  # dge's only user, picked for coverage
    gaps = np.diff(accuracy)
    assert max(-gaps) <= 2 * (90.0 - 71.0) / 5  # no stretch of the range left without picks


def test_every_seed_trains_on_the_supernets_dataset() -> None:
    """Seeds change the training only: each job trains on the supernet's data split (its data seed), so
    seed-to-seed differences and the comparison with the supernet are measured on the same images."""
    from mixnas.run_dir import RunDir

    picks = pick_architectures(fake_table([("window_attn", 90.0 - i, True) for i in range(3)]), 3)
    jobs = ranking_module._jobs(RunDir("run"), picks, RankSettings(seeds=2, epochs=4), "digits", 7)
    assert len(jobs) == 6 and len({str(out) for *_, out in jobs}) == 6
    assert sorted(seed for _, seed, *_ in jobs) == [0, 0, 0, 1, 1, 1]
    assert all(config["seed"] == seed and config["data_seed"] == 7 and config["epochs"] == 4
               for _, seed, _, config, _ in jobs)


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def searched(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("ranked") / "run"
    shutil.copytree(tiny_run, run)
    evaluator = CandidateEvaluator(run, EvalSettings(latency="none", calib_batches=1, val_limit=64, flops_images=2))
    run_optuna_search(run, SearchSettings(trials=6, objectives=("accuracy", "gflops"), sampler="random",
                                          references=False), evaluator, progress=False)
    return run


QUICK = RankSettings(archs=3, epochs=1, steps_per_epoch=2, device="cpu")


def test_rank_check_end_to_end_resumes_and_draws_its_page(searched: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    shutil.copytree(searched, run)
    calls: list[str] = []
    original = ranking_module._train

    def interrupted(arch: dict, out_dir: str, config: dict, device: str) -> float:
        if len(calls) == 2:
            raise KeyboardInterrupt  # the check stopped during its third training
        calls.append(out_dir)
        return original(arch, out_dir, config, device)

    monkeypatch.setattr(ranking_module, "_train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rank_check(run, QUICK, progress=False)
    assert load_ranking(run) is None  # nothing written before every training is done
    monkeypatch.setattr(ranking_module, "_train", original)
    trained_before = {p.name: (p / "checkpoint.pt").stat().st_mtime_ns for p in (run / "ranking").iterdir()
                      if (p / "checkpoint.pt").exists()}
    assert len(trained_before) == 2
    stats = rank_check(run, QUICK, progress=False)  # continues: only the third is trained now
    for name, mtime in trained_before.items():
        assert (run / "ranking" / name / "checkpoint.pt").stat().st_mtime_ns == mtime, name
    table, summary = load_ranking(run)
    assert len(table) == 3 and table["arch_id"].is_unique
    assert {"arch_id", "summary", "supernet_accuracy", "standalone_accuracy_seed0", "standalone_accuracy",
            "epochs", "stage1_mixer"} <= set(table.columns)
    assert table["standalone_accuracy"].between(0, 100).all() and (table["epochs"] == 1).all()
    assert summary["kendall_tau"] == pytest.approx(stats["kendall_tau"], nan_ok=True)
    assert summary["seed_agreement_tau"] is None and summary["noise_ceiling_tau"] is None  # QUICK: one seed
    assert summary["cost_tau"] == pytest.approx(ranking_statistics(
        table["supernet_accuracy"], table["standalone_accuracy"], cost=table["gflops"])["cost_tau"], nan_ok=True)
    assert json.loads((run / "ranking" / "summary.json").read_text())["n"] == 3
    # The results page.
    assert main(["results", str(run), "--objectives", "accuracy,flops"]) == 0
    page = (run / "pages" / "ranking.html").read_text()
    assert "Kendall tau" in page and 'href="ranking.html"' in (run / "pages" / "index.html").read_text()
    assert "seeds agree" not in page
    # With two seeds the page also says how well they agree and what a perfect proxy would reach.
    from mixnas.results import write_pages
    from mixnas.trials import load_trials

    write_pages(load_trials(run), tmp_path / "pages2", ["accuracy", "gflops"],
                ranking=(table, {**summary, "seed_agreement_tau": 0.61, "noise_ceiling_tau": 0.83, "cost_tau": 0.79}))
    page = (tmp_path / "pages2" / "ranking.html").read_text()
    assert "agree with each other at Kendall tau 0.61" in page and "about tau 0.83" in page
    assert "GFLOPs alone reaches Kendall tau 0.79" in page


def test_rank_check_refuses_an_unsearched_run(tiny_run: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["rank-check", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not searched yet" in err and str(run) in err


@pytest.mark.parametrize("forged", ["../../escaped", "/tmp/escaped-mixnas", "abcdef012345"])
def test_a_forged_arch_id_never_becomes_a_path(searched: Path, tmp_path: Path, forged: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """arch_ids name the trainings' folders: one that is not its architecture's own 12 hex digits is refused
    with one line before anything is trained or written."""
    from mixnas.trials import load_trials, save_trials

    run = tmp_path / "deep" / "run"
    shutil.copytree(searched, run)
    table = load_trials(run)
    table.loc[table.index[0], "arch_id"] = forged
    save_trials(table, run)
    assert main(["rank-check", str(run), "--archs", "6", "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "arch_id" in err and "trial 0" in err
    assert not (run / "ranking").exists() or not any((run / "ranking").iterdir())
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/escaped-mixnas").exists()


@pytest.mark.slow
def test_rank_check_on_ray(searched: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(searched, run)
    stats = rank_check(run, RankSettings(archs=2, epochs=1, steps_per_epoch=2, device="cpu", backend="ray"),
                       progress=False)
    table, _ = load_ranking(run)
    assert stats["n"] == 2 and len(table) == 2
    local = tmp_path / "local"
    shutil.copytree(searched, local)
    rank_check(local, RankSettings(archs=2, epochs=1, steps_per_epoch=2, device="cpu"), progress=False)
    # The same trainings, the same code: the same accuracies in a Ray worker as in process.
    assert list(load_ranking(local)[0]["standalone_accuracy"]) == list(table["standalone_accuracy"])


@pytest.mark.parametrize("summary", ["{broken", "[]", '{"kendall_tau": "high"}', "{" * 50000])
def test_a_damaged_ranking_summary_is_one_line(tmp_path: Path, summary: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from mixnas.errors import ResultsError

    folder = tmp_path / "ranking"
    folder.mkdir()
    pd.DataFrame({"arch_id": ["a"], "epochs": [1]}).to_parquet(folder / "ranking.parquet")
    (folder / "summary.json").write_text(summary)
    with pytest.raises(ResultsError, match="summary.json"):
        load_ranking(tmp_path)


def test_a_trial_number_beyond_int64_is_refused_not_wrapped() -> None:
    from mixnas.errors import ResultsError
    from mixnas.trials import TRIAL_COLUMNS, check_trials

    row = {c: "" for c in TRIAL_COLUMNS} | {"number": 2**70, "state": "COMPLETE", "accuracy": 1.0, "gflops": 1.0,
                                            "gflops_min": 1.0, "gflops_max": 1.0, "params": 10, "latency_ms": 1.0,
                                            "latency_p90_ms": 1.0, "eval_seconds": 1.0, "feasible": True,
                                            "is_reference": False, "latency_unstable": False}
    with pytest.raises(ResultsError, match="number"):
        check_trials(pd.DataFrame([row]))
