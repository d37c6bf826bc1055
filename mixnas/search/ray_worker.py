"""The worker side of a Ray search: the trainable every trial runs (``evaluate_candidate``).

Tune reuses a trial's actor for the next trial (``reuse_actors=True``), and the worker keeps one
``CandidateEvaluator`` per run directory and settings (``shared_evaluator``), so each worker process loads
the supernet once, not once per trial. A candidate that fails (``mixnas.search._shared.candidate_failure``:
out of memory, a non-finite score) reports a failure marker and its reason instead of raising; the driver
(``ray_runner``) tells Optuna the trial failed and records the reason. Limits are reported as Optuna
constraint violations, one result key per limit (``constraint.max_gflops``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import ray
from ray import tune

from mixnas.run_dir import RunDir
from mixnas.search._shared import Limits, SearchSettings, score
from mixnas.search.evaluator import CandidateEvaluator, EvalSettings
from mixnas.search.ray_cluster import RaySettings
from mixnas.search_space import ArchConfig
from mixnas.trials import objective_column

FAILED = "failed"
CONSTRAINT_PREFIX = "constraint."  # one result key per limit: "constraint.max_gflops" (flat, as Tune keeps it)


_EVALUATORS: dict[tuple[str, EvalSettings], CandidateEvaluator] = {}
_SUPERNET_LOADS = 0


def shared_evaluator(run_dir: str, settings: EvalSettings) -> CandidateEvaluator:
    """This process's evaluator for ``run_dir`` and ``settings``: the supernet is loaded on first use only.

    Args:
        run_dir: the supernet run directory (resolved path).
        settings: how candidates are scored.
    """
    global _SUPERNET_LOADS
    key = (run_dir, settings)
    if key not in _EVALUATORS:
        _EVALUATORS.clear()  # another search's supernet is not needed any more; free its memory
        _EVALUATORS[key] = CandidateEvaluator(run_dir, settings)
        _SUPERNET_LOADS += 1
    return _EVALUATORS[key]


def evaluate_candidate(
    config: dict[str, Any], run_dir: str, evaluation: EvalSettings, objectives: tuple[str, ...], limits: Limits,
) -> None:
    """Ray Tune function trainable: score one architecture and report it once.

    The report holds the evaluator's result (accuracy %, GFLOPs as multiply-adds, params, latency in ms,
    ...), each limit's violation (``constraint.<limit>``), ``failed``, ``failure_reason`` and
    ``supernet_loads`` (how many times this worker process has loaded a supernet). A failing candidate
    reports NaN objectives, ``failed=True`` and its reason instead of raising, so Tune keeps the reason
    and goes on.

    Args:
        config: the trial's config: ``arch`` (canonical JSON) and ``number`` besides the Optuna parameters.
        run_dir: the supernet run directory (resolved path).
        evaluation: how candidates are scored.
        objectives: canonical objective names, in the searcher's order.
        limits: cost limits, reported as constraint violations (<= 0 satisfied).
    """
    evaluator = shared_evaluator(run_dir, evaluation)
    arch = ArchConfig.from_dict(json.loads(config["arch"]))
    report: dict[str, Any] = {"arch_id": arch.arch_id}
    result, _, reason = score(evaluator.evaluate, arch, list(objectives))
    if result is None:  # a failing candidate is recorded and the search goes on
        report.update({objective_column(o): math.nan for o in objectives})
        report.update({FAILED: True, "failure_reason": reason})
    else:
        report.update(result)
        report.update({FAILED: False, "failure_reason": ""})
        report.update({CONSTRAINT_PREFIX + k: v for k, v in limits.named_constraints(result).items()})
    report["supernet_loads"] = _SUPERNET_LOADS
    report["worker"] = worker_name()
    tune.report(report)


def worker_name() -> str:
    """The Ray node this process runs on: its IP and the start of its node id (nodes on one machine share
    the IP)."""
    if not ray.is_initialized():  # outside Ray (get_runtime_context would start an instance)
        return ""
    node_id = ray.get_runtime_context().get_node_id() or ""
    return f"{ray.util.get_node_ip_address()}/{node_id[:8]}" if node_id else ""


def make_trainable(
    run: RunDir, settings: SearchSettings, evaluation: EvalSettings, ray_settings: RaySettings,
) -> Any:
    """``evaluate_candidate`` with its arguments bound and the resources each trial reserves.

    Args:
        run: the supernet run directory, named by its absolute path (``RunDir.resolved``); the workers get
            the path.
        settings: the objectives and limits the workers report.
        evaluation: how the workers score candidates.
        ray_settings: CPUs and GPUs per trial.
    """
    bound = tune.with_parameters(
        evaluate_candidate, run_dir=str(run.path), evaluation=evaluation, objectives=tuple(settings.objectives),
        limits=settings.limits,
    )
    return tune.with_resources(bound, {"cpu": ray_settings.cpus_per_trial, "gpu": ray_settings.gpus_per_trial})
