"""The Optuna runner, the evaluator, the trial store, results and export, on a tiny trained supernet."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import pytest
import timm
import torch
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from timm.data import create_transform, resolve_data_config
from torchvision.transforms.functional import to_pil_image

from mixnas import ArchConfig, SearchSpace, build_model
from mixnas.cli import main
from mixnas.data import make_loader
from mixnas.results import load_trials
from mixnas.results.pareto import pareto_mask
from mixnas.search import Limits
from mixnas.search.evaluator import CandidateEvaluator, EvalSettings
from mixnas.search.optuna_runner import SearchSettings, open_study, run_optuna_search
from mixnas.search_space import ConfigError
from mixnas.supernet.checkpoint import load_weights
from mixnas.training import evaluate_accuracy
from mixnas.trials import TRIAL_COLUMNS
from tests.tiny import TINY_SPACE

FAST = EvalSettings(latency_runs=3, latency_max_seconds=0.2, calib_batches=2, val_limit=96, flops_images=2)


@pytest.fixture(scope="module")
def trained(tiny_run: Path) -> Path:  # tests/conftest.py: trained once per session
    torch.set_num_threads(1)
    return tiny_run


def copy_run(trained: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


@dataclass
class FakeEvaluator:
    """Deterministic synthetic scores, counting real evaluations; optionally failing or stopping."""

    space: SearchSpace
    settings: EvalSettings = field(default_factory=EvalSettings)
    computed: list[str] = field(default_factory=list)
    fail_on: set[int] = field(default_factory=set)
    stop_after: int | None = None
    cache: dict[str, dict[str, Any]] = field(default_factory=dict)

    def evaluate(self, arch: ArchConfig) -> dict[str, Any]:
        if arch.arch_id in self.cache:
            return dict(self.cache[arch.arch_id], cached=True)
        if self.stop_after is not None and len(self.computed) >= self.stop_after:
            raise KeyboardInterrupt  # the process is stopped in the middle of an evaluation
        self.computed.append(arch.arch_id)
        if len(self.computed) in self.fail_on:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        size = sum(s.depth * s.dim for s in arch.stages)
        result = {"accuracy": 50 + size / 10, "params": size * 100, "gflops": size / 1000, "gflops_min": size / 1000,
                  "gflops_max": size / 1000, "latency_ms": 1 + size / 100, "latency_p90_ms": 2 + size / 100,
                  "latency_source": "fake", "eval_seconds": 0.01}
        self.cache[arch.arch_id] = result
        return dict(result, cached=False)


def test_search_writes_a_complete_trial_table(trained: Path, tmp_path: Path) -> None:
    run = copy_run(trained, tmp_path)
    evaluator = CandidateEvaluator(run, FAST)
    table = run_optuna_search(run, SearchSettings(trials=5, seed=1), evaluator, progress=False)
    assert list(table.columns) == TRIAL_COLUMNS
    searched = table[~table["is_reference"]]
    assert len(searched) == 5 and (searched["state"] == "COMPLETE").all()
    assert searched["accuracy"].between(0, 100).all() and (searched["gflops"] > 0).all()
    assert (searched["params"] > 0).all() and (searched["latency_ms"] > 0).all()
    assert searched["latency_source"].str.startswith("measured: cpu").all()
    assert (searched["backend"] == "optuna").all()
    space = SearchSpace.from_dict(TINY_SPACE)
    for arch_json, arch_id in zip(searched["arch"], searched["arch_id"]):
        arch = ArchConfig.from_dict(json.loads(arch_json))
        assert space.contains(arch) and arch.arch_id == arch_id
    refs = table[table["is_reference"]]
    assert sorted(refs["label"]) == ["all dge", "all dwconv", "all window_attn"]
    assert (refs["number"] < 0).all()
    # The store on disk holds the same table.
    disk = load_trials(run)
    assert len(disk) == len(table) and (disk["arch_id"].values == table["arch_id"].values).all()
    assert (run / "search" / "journal.log").is_file()
    assert len(list((run / "search" / "cache").glob("*.json"))) >= len(set(searched["arch_id"]))


def test_dge_flops_are_a_mean_over_images(trained: Path, tmp_path: Path) -> None:
    run = copy_run(trained, tmp_path)
    evaluator = CandidateEvaluator(run, FAST)
    space = evaluator.space
    result = evaluator.evaluate(space.largest("dge"))
    assert result["gflops_min"] <= result["gflops"] <= result["gflops_max"]
    again = evaluator.evaluate(space.largest("dge"))
    assert again["cached"] and again["accuracy"] == result["accuracy"]


def test_resume_keeps_finished_trials_and_evaluates_none_twice(tmp_path: Path) -> None:
    space = SearchSpace.from_dict(TINY_SPACE)
    (tmp_path / "search").mkdir()
    first = FakeEvaluator(space, stop_after=4)
    with pytest.raises(KeyboardInterrupt):
        run_optuna_search(tmp_path, SearchSettings(trials=10, sampler="random", references=False), first,
                          progress=False)
    table = load_trials(tmp_path)
    assert (table["state"] == "COMPLETE").sum() == 4
    study = open_study(tmp_path, SearchSettings(trials=10, sampler="random"))
    (stale,) = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]  # stopped mid-evaluation
    # The same command again: the interrupted trial is finished under its own number, N reached.
    second = FakeEvaluator(space, cache=dict(first.cache))
    table = run_optuna_search(tmp_path, SearchSettings(trials=10, sampler="random", references=False), second,
                              progress=False)
    complete = table[table["state"] == "COMPLETE"]
    assert len(complete) == 10 and len(table) == 10
    assert table["arch_id"].is_unique and list(table["number"]) == list(range(10))
    assert not set(first.computed) & set(second.computed), "an architecture was evaluated twice"
    study = open_study(tmp_path, SearchSettings(trials=10, sampler="random"))
    finished = study.trials[stale.number]
    assert finished.state == optuna.trial.TrialState.COMPLETE and finished.params == stale.params
    assert second.computed[0] == finished.user_attrs["arch_id"]  # the first thing the resumed run scored
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)
    # Once done, running again evaluates nothing.
    third = FakeEvaluator(space, cache=dict(second.cache))
    run_optuna_search(tmp_path, SearchSettings(trials=10, sampler="random", references=False), third, progress=False)
    assert third.computed == []


def test_failures_are_recorded_and_the_search_goes_on(tmp_path: Path) -> None:
    space = SearchSpace.from_dict(TINY_SPACE)
    evaluator = FakeEvaluator(space, fail_on={2, 4})
    table = run_optuna_search(tmp_path, SearchSettings(trials=6, sampler="random", references=False), evaluator,
                              progress=False)
    failed = table[table["state"] == "FAIL"]
    assert len(failed) == 2 and len(table) == 6
    assert failed["failure_reason"].str.startswith("out of memory").all()
    assert failed["accuracy"].isna().all() and not failed["feasible"].any()


def test_nan_objective_fails_the_trial(tmp_path: Path) -> None:
    space = SearchSpace.from_dict(TINY_SPACE)
    evaluator = FakeEvaluator(space)
    original = evaluator.evaluate

    def nan_accuracy(arch: ArchConfig) -> dict[str, Any]:
        return dict(original(arch), accuracy=math.nan)

    evaluator.evaluate = nan_accuracy  # type: ignore[method-assign]
    table = run_optuna_search(tmp_path, SearchSettings(trials=2, sampler="random", references=False), evaluator,
                              progress=False)
    assert (table["state"] == "FAIL").all()
    assert table["failure_reason"].str.contains("accuracy is nan").all()


def test_limits_are_constraints_and_infeasible_trials_leave_the_front(tmp_path: Path) -> None:
    space = SearchSpace.from_dict(TINY_SPACE)
    limits = Limits(max_gflops=0.05)
    evaluator = FakeEvaluator(space)
    table = run_optuna_search(tmp_path, SearchSettings(trials=16, limits=limits, references=False), evaluator,
                              progress=False)
    assert table["feasible"].any() and not table["feasible"].all()
    assert ((table["gflops"] <= 0.05) == table["feasible"]).all()
    front = pareto_mask(table, ["accuracy", "gflops"])
    assert front.any() and table.loc[front, "feasible"].all()
    study = open_study(tmp_path, SearchSettings(trials=16, limits=limits))
    for t in study.trials:
        assert len(t.user_attrs["constraints"]) == 1  # handed to the sampler's constraints_func


@pytest.mark.parametrize("sampler", ["guided", "nsga2", "tpe", "random", "gp"])
def test_every_sampler_runs(tmp_path: Path, sampler: str) -> None:
    space = SearchSpace.from_dict(TINY_SPACE)
    table = run_optuna_search(tmp_path, SearchSettings(trials=4, sampler=sampler, references=False),
                              FakeEvaluator(space), progress=False)
    assert (table["state"] == "COMPLETE").sum() == 4


def test_other_objectives_on_resume_are_refused(tmp_path: Path) -> None:
    space = SearchSpace.from_dict(TINY_SPACE)
    run_optuna_search(tmp_path, SearchSettings(trials=2, sampler="random", references=False), FakeEvaluator(space),
                      progress=False)
    with pytest.raises(ConfigError, match="this search optimised accuracy,gflops,latency"):
        run_optuna_search(tmp_path, SearchSettings(trials=3, objectives=("accuracy", "params"), references=False),
                          FakeEvaluator(space), progress=False)


@pytest.mark.parametrize("objectives", [("accuracy", "gflops", "latency"), ("accuracy", "params")])
def test_the_journal_opens_with_optuna_and_names_its_metrics(tmp_path: Path, objectives: tuple[str, ...]) -> None:
    """What optuna-dashboard and ``optuna.load_study`` read: the run's study, its values named after the
    trial table's columns in the order of the directions, each searched architecture once (repeats marked)."""
    space = SearchSpace.from_dict(TINY_SPACE)
    table = run_optuna_search(tmp_path, SearchSettings(trials=4, objectives=objectives, references=False),
                              FakeEvaluator(space), progress=False)
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "search" / "journal.log")))
    study = optuna.load_study(study_name="mixnas", storage=storage)
    columns = ["latency_ms" if o == "latency" else o for o in objectives]
    assert study.metric_names == columns
    assert [d.name.lower() for d in study.directions] == ["maximize"] + ["minimize"] * (len(objectives) - 1)
    assert study.user_attrs == {"objectives": list(objectives), "backend": "optuna"}
    searched = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    assert [t.user_attrs["arch_id"] for t in searched] == list(table["arch_id"])
    for t, row in zip(searched, table.itertuples()):
        assert t.values == [getattr(row, c) for c in columns]


def test_a_journal_the_ray_backend_writes_is_refused(tmp_path: Path) -> None:
    from mixnas.search.optuna_runner import create_run_study, journal_storage

    settings = SearchSettings(trials=2, sampler="random", references=False)
    create_run_study(journal_storage(tmp_path / "search" / "journal.log"), settings, "ray")
    with pytest.raises(ConfigError, match="searched with --backend ray; --backend optuna would mix"):
        run_optuna_search(tmp_path, settings, FakeEvaluator(SearchSpace.from_dict(TINY_SPACE)), progress=False)
    assert not (tmp_path / "trials.parquet").exists()


def test_cli_search_results_export(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(trained, tmp_path)
    args = ["search", str(run), "--trials", "4", "--objectives", "accuracy,flops", "--latency", "none",
            "--val-limit", "96", "--quiet", "--seed", "3"]
    assert main(args) == 0
    assert main(["results", str(run), "--objectives", "accuracy,flops"]) == 0
    out = capsys.readouterr().out
    assert "Pareto pages:" in out and (run / "pages" / "index.html").is_file()
    table = load_trials(run)
    front_numbers = set(table.loc[pareto_mask(table, ["accuracy", "gflops"]), "number"])
    assert main(["export", str(run), "--pareto", "--objectives", "accuracy,flops", "--out", str(tmp_path / "ex"),
                 "--weights", "--quiet"]) == 0
    manifest = (tmp_path / "ex" / "exported.csv").read_text().splitlines()
    assert len(manifest) == 1 + len(front_numbers)
    exported = sorted((tmp_path / "ex").glob("*.yaml"))
    assert len(exported) == len(front_numbers)
    settings = EvalSettings(**json.loads((run / "search" / "eval_settings.json").read_text()))
    evaluator = CandidateEvaluator(run, settings)
    for path in exported:
        number = int(path.name[5:9])
        assert number in front_numbers
        arch = ArchConfig.from_yaml(path)
        assert main(["profile", str(path), "--no-latency", "--json"]) == 0
        capsys.readouterr()
        model = load_weights(build_model(arch), path.with_suffix(".safetensors"))
        via_timm = timm.create_model("mixnas", arch=str(path), checkpoint_path=str(path.with_suffix(".safetensors")))
        recorded = float(table.loc[table["number"] == number, "accuracy"].iloc[0])
        accuracy = evaluate_accuracy(model, evaluator.val_loader)
        assert abs(accuracy - recorded) <= 0.5
        assert abs(evaluate_accuracy(via_timm, evaluator.val_loader) - recorded) <= 0.5
        # Fed the way timm feeds any model: PIL images through the transform its pretrained_cfg resolves.
        transform = create_transform(**resolve_data_config(model=via_timm))
        val = evaluator.data.val
        scored = len(evaluator.val_loader.dataset)  # the images the search scored (its val_limit)
        pil = [(transform(to_pil_image(val.images[i])), int(val.labels[i])) for i in range(scored)]
        assert abs(evaluate_accuracy(via_timm, make_loader(pil, 256, shuffle=False)) - recorded) <= 0.5
    # A single trial by number.
    assert main(["export", str(run), "--trial", "0", "--out", str(tmp_path / "one"), "--quiet"]) == 0
    assert len(list((tmp_path / "one").glob("trial0000_*.yaml"))) == 1
    assert yaml.safe_load(next((tmp_path / "one").glob("*.yaml")).read_text())["name"].startswith("trial 0:")


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", str(tmp_path / "nowhere"), "--trials", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixnas: error: ") and "nowhere" in err and len(err.splitlines()) == 1
    assert main(["results", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "--pareto or --trial" in capsys.readouterr().err


def test_optuna_is_quiet(tmp_path: Path) -> None:
    space = SearchSpace.from_dict(TINY_SPACE)
    run_optuna_search(tmp_path, SearchSettings(trials=2, sampler="random", references=False), FakeEvaluator(space),
                      progress=False)
    assert optuna.logging.get_verbosity() <= optuna.logging.WARNING


def test_train_epochs_fine_tunes_before_scoring(trained: Path, tmp_path: Path) -> None:
    """--train-epochs: the scored network is the inherited one trained further (weights move), and the
    result is cached under those settings only."""
    run = copy_run(trained, tmp_path)
    plain = CandidateEvaluator(run, FAST)
    tuned = CandidateEvaluator(run, EvalSettings(**{**FAST.__dict__, "train_epochs": 1, "finetune_steps": 3}))
    arch = plain.space.largest("window_attn")
    before = plain.prepare(arch).state_dict()
    after = tuned.prepare(arch).state_dict()
    moved = [k for k in before if before[k].dtype.is_floating_point and not torch.equal(before[k], after[k])]
    assert any(k.endswith("qkv.weight") for k in moved)
    assert plain.evaluate(arch)["cached"] is False
    assert tuned.evaluate(arch)["cached"] is False  # another setting: not served from the plain cache
    assert tuned.evaluate(arch)["cached"] is True


SMALL_SPACE = {  # 4 architectures in all
    "input_size": 32, "num_classes": 10, "patch_size": 8,
    "stages": [{"depth": [1, 2], "dim": [16], "heads": [2], "mixers": {"dwconv": {"kernel_size": [3]},
                                                                      "window_attn": {"window_size": [4]}}}],
}


def test_a_repeated_architecture_takes_no_trial_and_appears_once(tmp_path: Path) -> None:
    """A sampler that repeats itself (4 architectures, random sampling) is told the recorded values; the
    table lists each architecture once, numbered 0, 1, 2, ...; asking for more trials than the space
    holds stops once the sampler only repeats."""
    space = SearchSpace.from_dict(SMALL_SPACE)
    evaluator = FakeEvaluator(space)
    table = run_optuna_search(tmp_path, SearchSettings(trials=3, sampler="random", references=False), evaluator,
                              progress=False)
    assert len(table) == 3 and table["arch_id"].is_unique and list(table["number"]) == [0, 1, 2]
    assert len(evaluator.computed) == 3
    more = run_optuna_search(tmp_path, SearchSettings(trials=10, sampler="random", references=False), evaluator,
                             progress=False)
    assert len(more) == space.size() == 4 and more["arch_id"].is_unique
    assert len(evaluator.computed) == 4  # each architecture scored once
    study = open_study(tmp_path, SearchSettings(trials=10, sampler="random"))
    repeats = [t for t in study.trials if "duplicate_of" in t.user_attrs]
    assert len(repeats) >= 200  # the sampler kept repeating the exhausted space until the search stopped
    first = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    for t in repeats:  # told exactly what the first trial of its architecture was told
        original = next(f for f in first if f.user_attrs["arch_id"] == t.user_attrs["arch_id"])
        assert t.values == original.values
    front = pareto_mask(more, ["accuracy", "gflops"])
    assert more.loc[front, "arch_id"].is_unique


@pytest.mark.parametrize("sampler", ["guided", "nsga2", "tpe", "random"])
def test_a_killed_and_resumed_search_ends_where_an_uninterrupted_one_does(tmp_path: Path, sampler: str) -> None:
    """The samplers' random states are seeded per trial slot, so the resumed run suggests what the
    uninterrupted one did: the same architectures, in the same order, with the same numbers."""
    space = SearchSpace.from_dict(TINY_SPACE)
    settings = SearchSettings(trials=12, sampler=sampler, references=False, seed=3)
    straight = run_optuna_search(tmp_path / "straight", settings, FakeEvaluator(space), progress=False)
    first = FakeEvaluator(space, stop_after=5)
    with pytest.raises(KeyboardInterrupt):
        run_optuna_search(tmp_path / "killed", settings, first, progress=False)
    second = FakeEvaluator(space, stop_after=3, cache=dict(first.cache))
    with pytest.raises(KeyboardInterrupt):
        run_optuna_search(tmp_path / "killed", settings, second, progress=False)
    resumed = run_optuna_search(tmp_path / "killed", settings, FakeEvaluator(space, cache=dict(second.cache)),
                                progress=False)
    assert list(resumed["arch_id"]) == list(straight["arch_id"])
    assert list(resumed["number"]) == list(straight["number"]) == list(range(12))


def test_scores_are_keyed_to_the_weights_and_a_changed_supernet_is_refused(trained: Path, tmp_path: Path) -> None:
    """Trained further, the supernet's old scores must neither be reused from the cache nor mixed with new
    ones in the same trial table."""
    from mixnas.supernet import Supernet
    from mixnas.supernet.checkpoint import save_weights

    run = copy_run(trained, tmp_path)
    settings = SearchSettings(trials=2, objectives=("accuracy", "gflops"), sampler="random", references=False)
    evaluator = CandidateEvaluator(run, FAST)
    run_optuna_search(run, settings, evaluator, progress=False)
    arch = ArchConfig.from_dict(json.loads(load_trials(run)["arch"].iloc[0]))
    assert CandidateEvaluator(run, FAST).evaluate(arch)["cached"] is True
    space = SearchSpace.from_yaml(run / "space.yaml")
    torch.manual_seed(123)
    save_weights(Supernet(space), run / "supernet.safetensors")  # "trained further": other weights
    assert CandidateEvaluator(run, FAST).evaluate(arch)["cached"] is False
    with pytest.raises(ConfigError, match="supernet changed") as info:
        run_optuna_search(run, replace(settings, trials=3), CandidateEvaluator(run, FAST), progress=False)
    assert "\n" not in str(info.value)
    assert len(load_trials(run)) == 2  # nothing added


@pytest.mark.parametrize("error, failed", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of memory"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:119] DefaultCPUAllocator: can't allocate memory"), "out of memory"),
    (MemoryError(), "out of memory"),
    (FloatingPointError("accuracy is nan"), "FloatingPointError: accuracy is nan"),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 9x8)"), None),
    (ZeroDivisionError("division by zero"), None),
    (KeyError("heads"), None),
])
def test_only_a_candidates_own_failure_is_a_failed_trial(error: BaseException, failed: str | None) -> None:
    """Out of memory and non-finite scores fail the trial and the search goes on; a bug (a shape mismatch is
    a RuntimeError too) stops the search with its own traceback."""
    from mixnas.search._shared import score

    def evaluate(arch: ArchConfig) -> dict[str, Any]:
        raise error

    arch = SearchSpace.from_dict(TINY_SPACE).smallest()
    if failed is None:
        with pytest.raises(type(error)):
            score(evaluate, arch, ["accuracy"])
    else:
        result, values, reason = score(evaluate, arch, ["accuracy"])
        assert result is None and values is None and reason.startswith(failed) and "\n" not in reason
