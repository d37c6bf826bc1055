"""Candidate evaluation (accuracy, FLOPs, parameters, latency), latency tables, the search runners and the
ranking check.

The evaluator, the profiler, the cost code and the latency tables import with torch and fvcore alone; the
runners need optuna (and Ray for ``run_ray_search``) and are imported on first use.
"""

from typing import Any

from mixnas.search._shared import CANDIDATE_FAILURES, Limits, SearchSettings
from mixnas.search.cost import ArchCost, architecture_cost, model_gflops
from mixnas.search.evaluator import CandidateEvaluator, EvalSettings, load_settings
from mixnas.search.latency_lut import LatencyTable, build_latency_table
from mixnas.search.profiler import LatencyStats, count_flops, count_params, measure_latency

_LAZY = {
    "run_optuna_search": "mixnas.search.optuna_runner",
    "run_ray_search": "mixnas.search.ray_runner",
    "RaySettings": "mixnas.search.ray_cluster",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mixnas.search' has no attribute {name!r}")


__all__ = [
    "CANDIDATE_FAILURES", "ArchCost", "CandidateEvaluator", "EvalSettings", "LatencyStats", "LatencyTable", "Limits",
    "RaySettings", "SearchSettings", "architecture_cost", "build_latency_table", "count_flops", "count_params",
    "load_settings", "measure_latency", "model_gflops", "run_optuna_search", "run_ray_search",
]
