"""The Ray Tune runner.

Without Ray: the searcher that hands Optuna each trial's constraints and failures, the trial budget a
restored experiment takes from the current run, a worker's report of a failing candidate, and a restored
searcher that takes the run's Optuna journal as the truth.
With a local Ray instance on the 2-core machine (slow, about three minutes): 8 trials whose table has the
Optuna runner's columns, dtypes and meaning, every worker process loading the supernet once, every Ray
server listening on 127.0.0.1 only, and running again restoring the experiment (nothing new for the same
number of trials, two more for 10); the journal that ``optuna.load_study`` opens holds each trial once,
also after a restore from an experiment older than the journal (a driver killed between Tune's saves).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import pickle
import shutil
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pandas as pd
import pytest
import ray
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray import cloudpickle, tune
from ray.tune.search.concurrency_limiter import ConcurrencyLimiter

import mixnas.search.ray_runner as ray_runner
import mixnas.search.ray_worker as ray_worker
from mixnas import ArchConfig, SearchSpace
from mixnas.errors import CheckpointError
from mixnas.results import load_trials
from mixnas.run_dir import RunDir
from mixnas.search import Limits, seal
from mixnas.search.evaluator import CandidateEvaluator, EvalSettings
from mixnas.search.optuna_runner import (
    STUDY_NAME,
    SearchSettings,
    create_run_study,
    journal_storage,
    make_sampler,
    run_optuna_search,
    warm_start_archs,
)
from mixnas.search.ray_cluster import RaySettings, start_ray, stop_ray
from mixnas.search.ray_runner import (
    RUN_KEY,
    ConstrainedOptunaSearch,
    TrialBudget,
    make_search,
    results_table,
    run_ray_search,
)
from mixnas.search.ray_worker import evaluate_candidate
from mixnas.search_space import ConfigError
from mixnas.trials import TRIAL_COLUMNS
from tests.tiny import STATIC_SPACE as TINY_SPACE

SPACE_FILE, WEIGHTS_FILE = RunDir.SPACE, RunDir.SUPERNET_WEIGHTS

FAST = EvalSettings(latency="measure", latency_runs=3, latency_max_seconds=0.2, calib_batches=1, val_limit=64,
                    flops_images=2)
# Between the smallest and the largest candidate of TINY_SPACE, so both feasible and infeasible trials occur.
LIMITS = Limits(max_gflops=0.00028)
OBJECTIVES = ("accuracy", "gflops", "latency")
METRICS = ["accuracy", "gflops", "latency_ms"]
# Deterministic results of an evaluation: two Ray workers may score the same architecture at the same
# time (each misses the cache), and then their measured latencies and timings differ; these do not.
VALUE_COLUMNS = ["accuracy", "gflops", "gflops_min", "gflops_max", "params", "latency_source", "feasible"]


def searcher(space: SearchSpace, trials: int = 8) -> ConstrainedOptunaSearch:
    return ConstrainedOptunaSearch(space=ray_runner.ArchSpace(space), metric=METRICS, mode=["max", "min", "min"],
                                   sampler=make_sampler("nsga2", trials, 0))


def result(accuracy: float, gflops: float, **extra: Any) -> dict[str, Any]:
    """A worker's report as Tune passes it to the searcher (flat keys)."""
    return {"accuracy": accuracy, "gflops": gflops, "latency_ms": 1.0, "failed": False, "failure_reason": "",
            **extra}


def load_journal(path: Path) -> optuna.Study:
    """The study as a reader opens it: ``optuna.load_study`` on the journal file, nothing of mixnas."""
    return optuna.load_study(study_name="mixnas", storage=JournalStorage(JournalFileBackend(str(path))))


def searched_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's trials that stand for a searched architecture: not a sampler's repeat, not still queued."""
    return [t for t in study.trials if "duplicate_of" not in t.user_attrs and t.state != TrialState.WAITING]


def check_journal(run: Path, table: pd.DataFrame) -> None:
    """The run's journal holds the table's searched trials once each, in order, with their values."""
    study = load_journal(run / "search" / "journal.log")
    assert study.metric_names == METRICS
    assert study.user_attrs == {"objectives": list(OBJECTIVES), "backend": "ray"}
    searched = searched_trials(study)
    rows = table[~table["is_reference"]].sort_values("number")
    assert [t.user_attrs["arch_id"] for t in searched] == list(rows["arch_id"])
    assert len({json.dumps(t.params, sort_keys=True) for t in searched}) == len(searched)
    for t, row in zip(searched, rows.itertuples()):
        assert t.state.name == row.state, (t.number, row.number)
        if row.state == "COMPLETE":
            assert t.values == pytest.approx([row.accuracy, row.gflops, row.latency_ms])


# ------------------------------------------------------------------------------------------ without Ray
def test_searcher_tells_optuna_constraints_and_failures(tmp_path: Path) -> None:
    space = SearchSpace.from_dict(TINY_SPACE)
    search = searcher(space)
    configs = [search.suggest(f"t{i}") for i in range(3)]
    assert [c["number"] for c in configs] == [0, 1, 2]
    for c in configs:
        arch = ArchConfig.from_dict(json.loads(c["arch"]))
        assert space.contains(arch)

    search.on_trial_complete("t0", result=result(60.0, 0.0002, **{"constraint.max_gflops": -0.00008}))
    search.on_trial_complete("t1", result=result(70.0, 0.0003, **{"constraint.max_gflops": 0.00002}))
    search.on_trial_complete("t2", result={"accuracy": math.nan, "gflops": math.nan, "latency_ms": math.nan,
                                           "failed": True, "failure_reason": "out of memory: CUDA out of memory"})
    trials = search._ot_study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.COMPLETE,
                                         optuna.trial.TrialState.FAIL]
    assert trials[0].values == [60.0, 0.0002, 1.0]
    # What the samplers read (Trial.set_constraint) and what the Optuna runner records besides.
    assert trials[0].constraints == {"max_gflops": pytest.approx(-0.00008)}
    assert trials[1].constraints == {"max_gflops": pytest.approx(0.00002)}
    assert trials[1].user_attrs["constraints"] == [pytest.approx(0.00002)]
    assert trials[2].user_attrs["failure_reason"] == "out of memory: CUDA out of memory"
    # The feasible trial is the front, though the infeasible one is more accurate.
    assert [t.number for t in search._ot_study.best_trials] == [0]

    # Tune saves the searcher with plain pickle: the define-by-run space must survive it.
    search.save(str(tmp_path / "searcher.pkl"))
    restored = searcher(space)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("t3")["number"] == 3
    # The whole search algorithm goes into the experiment's tuner.pkl (cloudpickle).
    cloudpickle.dumps(make_search(space, SearchSettings(trials=8), RaySettings(), progress=False))


def test_trial_budget_comes_from_the_current_run() -> None:
    space = SearchSpace.from_dict(TINY_SPACE)
    budget = TrialBudget(ConcurrencyLimiter(searcher(space), max_concurrent=2), trials=8, progress=False)
    saved = {"counter": 8, "total_samples": 8, "finished": False, "experiment": None, "done": ["a", "b"]}
    # A restore: Tune hands over the re-specified param_space, then the saved state.
    assert not budget.set_search_properties(None, None, {RUN_KEY: {"trials": 10, "progress": False,
                                                                    "max_concurrent": 1}})
    budget.set_state(dict(saved))
    assert budget.total_samples == 10 and not budget.is_finished()
    assert budget.searcher.max_concurrent == 1
    assert budget.get_state()["done"] == ["a", "b"]
    budget.set_search_properties(None, None, {RUN_KEY: {"trials": 8, "progress": False, "max_concurrent": 2}})
    budget.set_state(dict(saved))
    assert budget.is_finished()


def test_a_failing_candidate_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    space = SearchSpace.from_dict(TINY_SPACE)
    good, bad = space.largest(), space.smallest()
    ok = {"accuracy": 40.0, "params": 1000, "gflops": 0.0003, "gflops_min": 0.0003, "gflops_max": 0.0003,
          "latency_ms": 2.0, "latency_p90_ms": 3.0, "latency_source": "fake", "eval_seconds": 0.1}

    class Evaluator:
        def evaluate(self, arch: ArchConfig) -> dict[str, Any]:
            if arch.arch_id == bad.arch_id:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return dict(ok, cached=False)

    reports: list[dict[str, Any]] = []
    monkeypatch.setitem(ray_worker._EVALUATORS, ("run", FAST), Evaluator())
    monkeypatch.setattr(ray_worker.tune, "report", reports.append)
    for arch in (good, bad):
        evaluate_candidate({"arch": arch.canonical_json(), "number": 0}, "run", FAST, OBJECTIVES, LIMITS)
    assert not reports[0]["failed"] and reports[0]["constraint.max_gflops"] == pytest.approx(0.00002)
    assert reports[1]["failed"] and reports[1]["failure_reason"].startswith("out of memory")
    assert math.isnan(reports[1]["accuracy"])

    grid = [SimpleNamespace(config={"arch": a.canonical_json(), "number": n}, metrics=r, error=None)
            for n, (a, r) in enumerate(zip((good, bad), reports))]
    grid.append(SimpleNamespace(config={"arch": good.canonical_json(), "number": 2}, metrics={},
                                error=RuntimeError("The actor died unexpectedly")))
    grid.append(SimpleNamespace(config={"arch": good.canonical_json(), "number": 3}, metrics={}, error=None))
    table = results_table(grid[::-1], LIMITS)
    assert list(table.columns) == TRIAL_COLUMNS and list(table["number"]) == [0, 1, 2, 3]
    assert list(table["state"]) == ["COMPLETE", "FAIL", "FAIL", "RUNNING"]
    assert not table["feasible"].any()  # 0.0003 GFLOPs > 0.00028
    assert table["failure_reason"][1].startswith("out of memory")
    assert table["failure_reason"][2] == "RuntimeError: The actor died unexpectedly"
    assert table["accuracy"][0] == 40.0 and table["accuracy"][1:].isna().all()


def test_ray_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="--max-concurrent"):
        RaySettings(max_concurrent=0)
    with pytest.raises(ConfigError, match="--cpus-per-trial"):
        RaySettings(cpus_per_trial=0)
    RaySettings(cpus_per_trial=0, gpus_per_trial=0.5)


def test_restoring_a_search_for_other_objectives_is_refused(tmp_path: Path) -> None:
    SearchSpace.from_dict(TINY_SPACE).to_yaml(tmp_path / SPACE_FILE)
    (tmp_path / WEIGHTS_FILE).touch()
    experiment = tmp_path / "search" / ray_runner.EXPERIMENT_NAME
    experiment.mkdir(parents=True)
    (experiment / ray_runner.SETTINGS_FILE).write_text(json.dumps({"objectives": ["accuracy", "params"]}))
    with pytest.raises(ConfigError, match="optimised accuracy,params"):
        run_ray_search(tmp_path, SearchSettings(trials=2, objectives=OBJECTIVES), FAST, RaySettings())
    assert not ray.is_initialized()


def journal_searcher(space: SearchSpace, journal: Path) -> ConstrainedOptunaSearch:
    return ConstrainedOptunaSearch(space=ray_runner.ArchSpace(space), metric=METRICS, mode=["max", "min", "min"],
                                   sampler=make_sampler("random", 8, 0), storage=journal_storage(journal),
                                   study_name=STUDY_NAME)


def test_a_restored_searcher_takes_the_journal_as_the_truth(tmp_path: Path) -> None:
    """Tune saved the searcher after trial 0 finished; the driver then asked two more trials, told trial 1
    and one of the new ones, and was killed. The restored searcher hands the two trials it missed out again
    (under their own Optuna trials), does not tell trial 1 twice, and the journal ends with each trial once."""
    space = SearchSpace.from_dict(TINY_SPACE)
    journal = tmp_path / "search" / "journal.log"
    create_run_study(journal_storage(journal), SearchSettings(trials=8), "ray")
    search = journal_searcher(space, journal)
    created = cloudpickle.dumps(search)  # what Tuner.restore brings back first (tuner.pkl)
    first = [search.suggest("t0"), search.suggest("t1")]
    search.on_trial_complete("t0", result=result(60.0, 0.0002))
    search.save(str(tmp_path / "searcher.pkl"))  # Tune's last save before the kill
    missed = [search.suggest("t2"), search.suggest("t3")]
    search.on_trial_complete("t1", result=result(61.0, 0.0002))
    search.on_trial_complete("t3", result=result(63.0, 0.0002))
    before = load_journal(journal).trials

    restored = cloudpickle.loads(created)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.reopen(journal)
    restored.on_trial_complete("t1", result=result(61.5, 0.0002))  # Tune ran it again: told already
    again = [restored.suggest("u2"), restored.suggest("u3")]
    assert [(c["number"], c["arch"]) for c in again] == [(c["number"], c["arch"]) for c in missed]
    restored.on_trial_complete("u2", result=result(62.0, 0.0002))
    restored.on_trial_complete("u3", result=result(63.5, 0.0002))  # told before the kill: kept
    assert len(load_journal(journal).trials) == len(before)  # no Optuna trial was added for them

    fresh = restored.suggest("u4")
    restored.on_trial_complete("u4", result=result(64.0, 0.0002))
    study = load_journal(journal)
    searched = searched_trials(study)
    configs = first + missed + [fresh]
    assert [t.user_attrs["arch"] for t in searched] == [c["arch"] for c in configs]
    assert [t.values[0] for t in searched] == [60.0, 61.0, 62.0, 63.0, 64.0]
    assert all(t.state == TrialState.COMPLETE for t in searched)
    assert not any(t.state == TrialState.RUNNING for t in study.trials)


def test_a_searcher_saved_before_the_journal_moves_its_study_there(tmp_path: Path) -> None:
    """An experiment whose searcher kept its study in memory (saved before searchers wrote the journal)
    continues in the journal: the restored searcher's trials go into the journal's empty study."""
    space = SearchSpace.from_dict(TINY_SPACE)
    search = searcher(space)
    created = cloudpickle.dumps(search)
    configs = [search.suggest(f"t{i}") for i in range(3)]
    search.on_trial_complete("t0", result=result(60.0, 0.0002))
    search.save(str(tmp_path / "searcher.pkl"))
    journal = tmp_path / "search" / "journal.log"
    create_run_study(journal_storage(journal), SearchSettings(trials=8), "ray")  # prepare_journal's part

    restored = cloudpickle.loads(created)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.reopen(journal)
    restored.on_trial_complete("t1", result=result(61.0, 0.0002))
    study = load_journal(journal)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
    assert [t.values for t in study.trials[:2]] == [[60.0, 0.0002, 1.0], [61.0, 0.0002, 1.0]]
    assert [t.params for t in study.trials] == [search._ot_study.trials[i].params for i in range(3)]
    assert study.metric_names == METRICS
    assert restored.suggest("t3")["number"] == len(configs)


def test_a_trial_given_up_for_its_worker_is_told_when_it_runs_again(tmp_path: Path) -> None:
    """Tune gives a trial up (``error``) when its worker dies; the restore runs it again under the same
    Tune trial, which the concurrency limiter no longer holds. Its Optuna trial waits for that result."""
    space = SearchSpace.from_dict(TINY_SPACE)
    journal = tmp_path / "search" / "journal.log"
    create_run_study(journal_storage(journal), SearchSettings(trials=8), "ray")
    budget = TrialBudget(ConcurrencyLimiter(journal_searcher(space, journal), max_concurrent=2), trials=8,
                         progress=False)
    limiter = budget.searcher
    limiter.suggest("t0")
    budget.on_trial_complete("t0", error=True)
    (trial,) = searched_trials(load_journal(journal))
    assert trial.state == TrialState.RUNNING
    budget.on_trial_complete("t0", result=result(60.0, 0.0002))
    (trial,) = searched_trials(load_journal(journal))
    assert trial.state == TrialState.COMPLETE and trial.values == [60.0, 0.0002, 1.0]


def test_a_journal_the_optuna_backend_writes_is_refused(tmp_path: Path) -> None:
    SearchSpace.from_dict(TINY_SPACE).to_yaml(tmp_path / SPACE_FILE)
    (tmp_path / WEIGHTS_FILE).touch()
    settings = SearchSettings(trials=2, objectives=OBJECTIVES)
    create_run_study(journal_storage(tmp_path / "search" / "journal.log"), settings, "optuna")
    with pytest.raises(ConfigError, match="searched with --backend optuna; --backend ray would mix"):
        run_ray_search(tmp_path, settings, FAST, RaySettings(), progress=False)
    assert not ray.is_initialized() and not (tmp_path / "search" / "eval_settings.json").exists()


def test_the_journal_and_the_experiment_must_belong_together(tmp_path: Path) -> None:
    """What ``prepare_journal`` finds before Ray starts, and what it does."""
    run = RunDir(tmp_path)
    settings = SearchSettings(trials=2, objectives=OBJECTIVES)
    storage = journal_storage(run.journal)
    # A start stopped before Tune saved anything (no experiment, nothing finished): its study is replaced.
    create_run_study(storage, settings, "ray").ask()
    ray_runner.prepare_journal(run, settings)
    assert load_journal(run.journal).trials == []
    # Finished trials whose experiment is gone would not reach the trial table: refused.
    study = load_journal(run.journal)
    study.tell(study.ask(), [50.0, 0.1, 1.0])
    with pytest.raises(ConfigError, match="whose experiment .* is gone"):
        ray_runner.prepare_journal(run, settings)
    # An experiment that wrote its trials to a journal that is gone: refused.
    optuna.delete_study(study_name=STUDY_NAME, storage=storage)
    run.ray_dir.mkdir(parents=True)
    (run.ray_dir / "tuner.pkl").write_bytes(b"never unpickled here")
    ray_runner.write_experiment_settings(run.ray_dir, settings)
    with pytest.raises(ConfigError, match="missing, but the Ray search"):
        ray_runner.prepare_journal(run, settings)
    # An experiment from before searchers wrote the journal: an empty study, which its searcher fills.
    run.ray_settings_file.write_text(json.dumps({"objectives": list(OBJECTIVES)}))
    ray_runner.prepare_journal(run, settings)
    study = load_journal(run.journal)
    assert study.trials == [] and study.user_attrs["backend"] == "ray" and study.metric_names == METRICS
    assert json.loads(run.ray_settings_file.read_text())["journal"] is True


# ------------------------------------------------------------------------------------------ with Ray
@pytest.fixture(scope="module")
def trained(static_run: Path) -> Path:  # tests/conftest.py: trained once per session
    torch.set_num_threads(1)
    return static_run


@pytest.fixture(scope="module")
def module_ray() -> Iterator[None]:
    """Stops, at the module's end, the local Ray instance its tests leave running for each other."""
    yield
    stop_ray()


@pytest.fixture
def shared_ray(module_ray: None) -> RaySettings:
    """The module's one local Ray instance, for the searches that do not test an instance's start or end:
    started by the first test that needs it (a search leaves an instance it did not start running)."""
    settings = RaySettings(max_concurrent=2)
    start_ray(settings)
    return settings


def trial_reports(run: Path) -> list[dict[str, Any]]:
    """Each Ray trial's report, as Tune logged it in the experiment directory."""
    return [json.loads((d / "result.json").read_text().splitlines()[-1])
            for d in sorted((run / "search" / "ray").glob("trial_*"))]


def _proc_net_listeners() -> dict[int, str]:
    """Listening TCP sockets of this machine: inode -> local address."""
    out = {}
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            raw = bytes.fromhex(fields[1].split(":")[0])
            # The kernel prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            out[int(fields[9])] = socket.inet_ntop(family, raw)
    return out


def listening_addresses_of_children() -> set[str]:
    """Addresses on which processes started by this one (Ray's servers and workers) listen."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(pid)
    todo, family = [os.getpid()], set()
    while todo:
        pid = todo.pop()
        family.add(pid)
        todo.extend(children.get(pid, []))
    inodes = set()
    for pid in family - {os.getpid()}:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(int(target[8:-1]))
    return {addr for inode, addr in _proc_net_listeners().items() if inode in inodes}


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def check_same_meaning(ray_table: pd.DataFrame, optuna_table: pd.DataFrame, space: SearchSpace) -> None:
    """Columns, dtypes, value ranges and per-architecture values of the two runners' tables agree."""
    assert list(ray_table.columns) == list(optuna_table.columns) == TRIAL_COLUMNS
    assert ray_table.dtypes.to_dict() == optuna_table.dtypes.to_dict()
    assert set(ray_table["backend"]) == {"ray"} and set(optuna_table["backend"]) == {"optuna"}
    for table in (ray_table, optuna_table):
        searched = table[~table["is_reference"]]
        assert list(searched["number"]) == list(range(len(searched)))
        assert (searched["state"] == "COMPLETE").all() and (searched["failure_reason"] == "").all()
        assert searched["accuracy"].between(0, 100).all()
        assert (searched["gflops"] > 0).all() and (searched["params"] > 0).all()
        assert ((searched["gflops_min"] <= searched["gflops"]) & (searched["gflops"] <= searched["gflops_max"])).all()
        assert (searched["latency_ms"] > 0).all()
        assert searched["latency_source"].str.startswith("measured: cpu").all()
        assert (searched["feasible"] == (searched["gflops"] <= LIMITS.max_gflops)).all()
        assert (searched["label"] == "").all()
        for arch_json, arch_id, summary in zip(searched["arch"], searched["arch_id"], searched["summary"]):
            arch = ArchConfig.from_dict(json.loads(arch_json))
            assert space.contains(arch) and arch.arch_id == arch_id and arch.summary() == summary
        refs = table[table["is_reference"]]
        assert sorted(refs["label"]) == ["all dwconv", "all window_attn"] and (refs["number"] < 0).all()
    # The same architecture, scored by the same evaluator settings, reads the same in both tables.
    by_arch = optuna_table.drop_duplicates("arch_id").set_index("arch_id")
    shared = [a for a in ray_table["arch_id"] if a in by_arch.index]
    assert shared, "the two searches share no architecture (the references at least)"
    for _, row in ray_table[ray_table["arch_id"].isin(shared)].iterrows():
        other = by_arch.loc[row["arch_id"]]
        assert all(row[c] == other[c] for c in VALUE_COLUMNS), row["arch_id"]


@pytest.mark.slow
def test_ray_search_restores_and_matches_the_optuna_table(trained: Path, tmp_path: Path, module_ray: None) -> None:
    space = SearchSpace.from_dict(TINY_SPACE)
    run = tmp_path / "ray"
    shutil.copytree(trained, run)
    settings = SearchSettings(trials=8, objectives=OBJECTIVES, limits=LIMITS, seed=0)
    local = RaySettings(max_concurrent=2)
    stop_ray()  # this test starts its own: the search must shut down the instance it started

    table = run_ray_search(run, settings, FAST, local, progress=False)
    assert not ray.is_initialized()  # the instance it started is shut down
    searched = table[~table["is_reference"]]
    assert len(searched) == 8 and list(searched["number"]) == list(range(8))
    # The default (guided) sampler and its warm start price candidates exactly (the cost table) and
    # stay under the GFLOPs limit; infeasible trials on Ray are covered by the searcher test above.
    assert searched["feasible"].all()
    # The warm start reaches Tune as points_to_evaluate: its architectures are the first trials.
    warm = [a.arch_id for a in warm_start_archs(space, LIMITS, 8)]
    assert warm and list(searched.sort_values("number")["arch_id"].iloc[:len(warm)]) == warm
    disk = load_trials(run)
    assert list(disk["arch_id"]) == list(table["arch_id"]) and list(disk["number"]) == list(table["number"])
    check_journal(run, table)  # the study optuna.load_study opens, as after an Optuna-backend search

    # Tune reused the trial actors: each worker process loaded the supernet once, for all its trials.
    reports = trial_reports(run)
    assert len(reports) == 8 and all(r["supernet_loads"] == 1 for r in reports)
    assert len({r["pid"] for r in reports}) <= local.max_concurrent

    # The Optuna runner on a copy of the run (its evaluator cache included) writes the same kind of table.
    other = tmp_path / "optuna"
    shutil.copytree(trained, other)
    shutil.copytree(run / "search" / "cache", other / "search" / "cache")
    optuna_table = run_optuna_search(other, replace(settings, trials=3), CandidateEvaluator(other, FAST),
                                     progress=False)
    check_same_meaning(table, optuna_table, space)
    check_same_meaning(load_trials(run), load_trials(other), space)

    # A Ray instance of this process is used as it is; every Ray server listens on 127.0.0.1 only. It stays
    # up for the module's other searches (the shared_ray fixture stops it).
    assert start_ray(local)
    if Path("/proc/net/tcp").is_file():  # Linux: read which addresses Ray's processes listen on
        listening = listening_addresses_of_children()
        assert listening and all(is_loopback(a) for a in listening), listening
    trial_dirs = sorted(p.name for p in (run / "search" / "ray").glob("trial_*"))

    # The same command again restores the experiment and evaluates nothing new.
    again = run_ray_search(run, settings, FAST, local, progress=False)
    assert ray.is_initialized()
    assert sorted(p.name for p in (run / "search" / "ray").glob("trial_*")) == trial_dirs
    pd.testing.assert_frame_equal(again, table)

    # Asking for more trials continues the restored experiment up to the new total.
    more = run_ray_search(run, replace(settings, trials=10), FAST, local, progress=False)

    # A failing candidate (here a NaN objective: latency is not measured) is a failed trial with its
    # reason, and the search goes on.
    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    failing = run_ray_search(broken, replace(settings, trials=3, references=False),
                             replace(FAST, latency="none"), local, progress=False)
    assert ray.is_initialized()  # not stopped by the searches that used it
    searched_more = more[~more["is_reference"]]
    assert list(searched_more["number"]) == list(range(10))
    check_journal(run, more)  # the restored searcher went on in the same study: 10 trials, each once
    check_journal(broken, failing)
    pd.testing.assert_frame_equal(searched_more.iloc[:8], searched, check_index_type=False)
    assert len(list((run / "search" / "ray").glob("trial_*"))) == 10
    assert len(load_trials(run)) == len(more)
    assert list(failing["state"]) == ["FAIL"] * 3 and list(failing["number"]) == [0, 1, 2]
    assert (failing["failure_reason"] == "FloatingPointError: objective latency is nan").all()
    assert failing["accuracy"].isna().all() and not failing["feasible"].any()


@pytest.mark.slow
def test_a_trial_that_tune_gives_up_for_a_dead_worker_runs_again(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_ray: RaySettings,
) -> None:
    """A node dying with a trial queued on its reused actor can make Tune give that trial up (two failures
    before it restarts); the search restores the experiment and runs it again instead of recording a FAIL.
    Here Tune gives up at the first death (max_failures 0) and the worker of trial 1 dies once."""
    run = tmp_path / "ray"
    shutil.copytree(trained, run)
    died = tmp_path / "died"
    real = evaluate_candidate

    def dying(config: dict[str, Any], run_dir: str, evaluation: EvalSettings, objectives: tuple[str, ...],
              limits: Limits) -> None:
        if config["number"] == 1 and not died.exists():
            died.write_text("1")
            os._exit(1)  # the worker process dies: Ray reports the actor dead, not a candidate's failure
        real(config, run_dir, evaluation, objectives, limits)

    monkeypatch.setattr(ray_worker, "evaluate_candidate", dying)
    monkeypatch.setattr(ray_runner, "TRIAL_MAX_FAILURES", 0)
    settings = SearchSettings(trials=4, objectives=OBJECTIVES, limits=LIMITS, seed=0, references=False)
    table = run_ray_search(run, settings, FAST, shared_ray, progress=False)

    assert died.exists()  # the worker did die
    assert list(table["state"]) == ["COMPLETE"] * 4, table[["number", "state", "failure_reason"]]
    assert list(table["number"]) == [0, 1, 2, 3] and table["arch_id"].is_unique
    assert len(list((run / "search" / "ray").glob("trial_*"))) == 4  # run again, not a fifth trial
    assert list(load_trials(run)["state"]) == ["COMPLETE"] * 4
    check_journal(run, table)  # trial 1's Optuna trial waited for the run that finished it


@pytest.mark.slow
def test_a_restore_from_an_experiment_older_than_the_journal_adds_no_trial(
    trained: Path, tmp_path: Path, shared_ray: RaySettings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A driver killed between two of Tune's saves leaves the journal ahead of the experiment. Here the
    experiment is put back to what it was after 2 trials while the journal holds 4. Running the search for 4
    again hands the 2 trials the experiment lost out again, under their own Optuna trials: the journal gains
    no trial, and the table lists the same 4 architectures under the same numbers."""
    run = tmp_path / "ray"
    shutil.copytree(trained, run)
    experiment, journal = run / "search" / "ray", run / "search" / "journal.log"
    settings = SearchSettings(trials=2, objectives=OBJECTIVES, limits=LIMITS, seed=0, references=False)
    # One Ray instance for the three searches, as a cluster joined with --address outlives the driver: the
    # restore must read the experiment as it is on disk, not the newer state Tune left in the instance's
    # staging folder (it did until 2026-12-07, and came back with 2 trials).
    local = shared_ray
    run_ray_search(run, settings, FAST, local, progress=False)
    shutil.copytree(experiment, tmp_path / "after-2")
    four = run_ray_search(run, replace(settings, trials=4), FAST, local, progress=False)
    check_journal(run, four)
    trials = [(t.number, t.state, t.params, t.values) for t in load_journal(journal).trials]

    shutil.rmtree(experiment)
    shutil.copytree(tmp_path / "after-2", experiment)  # as Tune last saved it before the "kill"
    again = run_ray_search(run, replace(settings, trials=4), FAST, local, progress=False)
    assert list(again["number"]) == [0, 1, 2, 3] and list(again["arch_id"]) == list(four["arch_id"])
    assert [(t.number, t.state, t.params, t.values) for t in load_journal(journal).trials] == trials
    check_journal(run, again)
    # Ray's own reader of the experiment sees the same 4 trials.
    frame = tune.ExperimentAnalysis(str(experiment)).dataframe()
    assert sorted(frame["config/number"]) == [0, 1, 2, 3]

    # A pickle of yours, private (0600), but not written by your mixnas: a planted __reduce__ never runs.
    # (Before seals, check_private let this one through and the payload ran on restore, silently.)
    marker = tmp_path / "payload-ran"
    states = sorted(experiment.glob("searcher-state-*.pkl"))
    assert states and (experiment / seal.SEAL_LOG).is_file()
    states[-1].write_bytes(pickle.dumps(Payload(marker)))
    os.chmod(states[-1], 0o600)
    joined: list[RaySettings] = []
    monkeypatch.setattr(ray_runner, "start_ray", lambda settings, say=None: joined.append(settings))
    with pytest.raises(ConfigError, match="not sealed by your mixnas") as info:
        run_ray_search(run, replace(settings, trials=5), FAST, local, progress=False)
    assert str(info.value).startswith(str(states[-1])) and "\n" not in str(info.value)
    assert not marker.exists() and not joined  # refused before Ray is started or joined
    assert [(t.number, t.state, t.params, t.values) for t in load_journal(journal).trials] == trials


class Payload:
    """What an attacker plants: unpickling it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_the_ray_searcher_never_hands_out_an_architecture_twice() -> None:
    space = SearchSpace.from_dict({
        "input_size": 32, "num_classes": 10, "patch_size": 8,
        "stages": [{"depth": [1, 2], "dim": [16], "heads": [2],
                    "mixers": {"dwconv": {"kernel_size": [3]}, "window_attn": {"window_size": [4]}}}],
    })  # 4 architectures
    search = ConstrainedOptunaSearch(space=ray_runner.ArchSpace(space), metric=["accuracy", "gflops"],
                                     mode=["max", "min"], sampler=optuna.samplers.RandomSampler(seed=0))
    first = search.suggest("t0")  # still running when the sampler repeats it: told PRUNED, asked again
    configs = [first]
    for i in range(1, 4):
        configs.append(search.suggest(f"t{i}"))
        search.on_trial_complete(f"t{i - 1}", result={"accuracy": 50.0 + i, "gflops": 0.1, "failed": False,
                                                       "failure_reason": ""})
    assert [c["number"] for c in configs] == [0, 1, 2, 3]
    assert len({c["arch"] for c in configs}) == 4
    assert search.suggest("t4") == ray_runner.Searcher.FINISHED  # the space is exhausted: stop, not loop
    trials = search._ot_study.get_trials(deepcopy=False)
    repeats = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert repeats and all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
                           for t in repeats)
    # A repeat of a finished architecture is told its values.
    done = [t for t in repeats if t.state == optuna.trial.TrialState.COMPLETE]
    for t in done:
        n = t.user_attrs["duplicate_of"]
        assert t.values[0] == 50.0 + n + 1


def test_only_a_dead_worker_or_node_counts_as_lost() -> None:
    from ray import exceptions

    assert ray_runner.lost_worker(exceptions.ActorUnavailableError("socket closed", b"\0" * 16))
    assert ray_runner.lost_worker(exceptions.ActorDiedError())
    assert ray_runner.lost_worker(exceptions.NodeDiedError("node gone"))
    assert not ray_runner.lost_worker(ValueError("a candidate's own error"))
    task_error = exceptions.RayTaskError("evaluate_candidate", "Traceback ...", CheckpointError("missing"))
    assert not ray_runner.lost_worker(task_error)
    assert not ray_runner.lost_worker(task_error.as_instanceof_cause())


def test_the_watchdog_kills_the_instances_processes_not_a_tail_of_its_logs(tmp_path: Path) -> None:
    """Processes whose flags name the instance's folder die with the driver; a ``tail -f`` of one of its
    logs (the folder as a plain argument) lives on."""
    import subprocess
    import sys
    import time

    from mixnas.search.ray_cluster import _WATCHDOG

    folder = tmp_path / "mixnas-ray-x"
    folder.mkdir()
    (folder / "raylet.out").write_text("log\n")
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--temp-dir={folder}"])
    tail = subprocess.Popen(["tail", "-f", str(folder / "raylet.out")], stdout=subprocess.DEVNULL)
    try:
        watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(folder)], stdin=subprocess.PIPE)
        watchdog.stdin.close()  # the driver has gone
        watchdog.wait(timeout=30)
        deadline = time.monotonic() + 10
        while worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert worker.poll() is not None  # killed
        assert tail.poll() is None  # left alone
    finally:
        for p in (worker, tail):
            p.kill()
            p.wait()


def test_a_cluster_is_mine_only_when_my_gcs_or_raylet_names_its_port() -> None:
    from mixnas.search.ray_cluster import cluster_owned_by_me

    assert not cluster_owned_by_me("127.0.0.1:1")  # no GCS of this user listens there


def test_the_local_instances_folder_and_token_are_closed_to_other_users(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import stat

    from mixnas.search.ray_cluster import tighten_permissions

    folder = tmp_path / "mixnas-ray-y"
    folder.mkdir()
    os.chmod(folder, 0o777)
    token = tmp_path / "auth_token"
    token.write_text("secret")
    os.chmod(token, 0o644)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    tighten_permissions(str(folder))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(token.stat().st_mode) == 0o600


@pytest.mark.parametrize("case", ["world-writable pickle", "group-writable folder", "linked pickle"])
def test_a_ray_experiment_others_could_write_is_never_restored(trained: Path, tmp_path: Path, case: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted ``__reduce__`` in Tune's pickles would run on restore: refuse, with one line, before Ray
    starts or anything is unpickled."""
    import os

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    experiment = run / "search" / "ray"
    experiment.mkdir(parents=True)
    pickle_file = experiment / "tuner.pkl"
    if case == "linked pickle":
        (tmp_path / "elsewhere.pkl").write_bytes(b"x")
        pickle_file.symlink_to(tmp_path / "elsewhere.pkl")
    else:
        pickle_file.write_bytes(b"not to be unpickled")
    os.chmod(run, 0o755)
    os.chmod(run / "search", 0o755)
    os.chmod(experiment, 0o775 if case == "group-writable folder" else 0o755)
    if case == "world-writable pickle":
        os.chmod(pickle_file, 0o666)
    joined: list[RaySettings] = []
    monkeypatch.setattr(ray_runner, "start_ray", lambda settings, say=None: joined.append(settings))
    with pytest.raises(ConfigError, match="writable by other users|symbolic link") as info:
        run_ray_search(run, SearchSettings(trials=2, objectives=OBJECTIVES), FAST, RaySettings(), progress=False)
    assert "\n" not in str(info.value) and not joined  # refused before Ray is started or joined
