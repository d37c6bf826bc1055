"""What both search backends share besides the evaluator: objectives, limits, scoring a candidate and
recording it, the references, and the search settings.

A trial's record is one row of the trial table (``mixnas.trials.TRIAL_COLUMNS``); the Optuna and Ray
runners build it with the same function, so their tables have the same columns and meaning. A candidate
whose evaluation fails in a way that belongs to the candidate (``candidate_failure``: out of memory, a
non-finite score or objective, a CUDA error) is recorded as failed and the search goes on; any other
exception (a ``RuntimeError`` from a shape mismatch, a ``ZeroDivisionError``, ...) is a bug and stops it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from mixnas.search_space import ArchConfig, SearchSpace
from mixnas.trials import OBJECTIVES, objective_column, parse_objectives

DEFAULT_OBJECTIVES = "accuracy,flops,latency"
# What a candidate's evaluation may fail with and the search survives: out of GPU memory (OutOfMemoryError),
# a CUDA error (AcceleratorError, torch >= 2.8), out of host memory (MemoryError), and a non-finite score
# or objective (FloatingPointError, raised by the evaluator and ``objective_values``).
CANDIDATE_FAILURES: tuple[type[BaseException], ...] = tuple(
    t for t in (torch.OutOfMemoryError, getattr(torch, "AcceleratorError", None), MemoryError, FloatingPointError)
    if t is not None)
# torch's CPU allocator and older CUDA builds say "out of memory" in a plain RuntimeError.
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory")


def candidate_failure(error: BaseException) -> bool:
    """Whether ``error`` is the candidate's own failure (``CANDIDATE_FAILURES``, or a ``RuntimeError`` that
    says it ran out of memory), not a bug."""
    if isinstance(error, CANDIDATE_FAILURES):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error).lower() for m in _OUT_OF_MEMORY)


def optuna_directions(objectives: list[str]) -> list[str]:
    return ["maximize" if OBJECTIVES[o] == "max" else "minimize" for o in objectives]


def metric_names(objectives: list[str]) -> list[str]:
    """The study's metric names (``Study.set_metric_names``), in the order of its directions: each
    objective's trial-table column (``accuracy``, ``gflops``, ``params``, ``latency_ms``), units included."""
    return [objective_column(o) for o in objectives]


def objective_values(objectives: list[str], result: dict[str, Any]) -> list[float]:
    """The values Optuna optimises, in the order of ``objectives``; raises on NaN (a failed trial)."""
    values = []
    for o in objectives:
        v = float(result[objective_column(o)])
        if not math.isfinite(v):
            raise FloatingPointError(f"objective {o} is {v}")
        values.append(v)
    return values


@dataclass(frozen=True)
class Limits:
    """Upper limits on a candidate's cost; each becomes an Optuna constraint (<= 0 is satisfied).

    Args:
        max_gflops: GFLOPs (multiply-adds, batch 1).
        max_params: parameters (count).
        max_latency_ms: median latency in ms.
    """

    max_gflops: float | None = None
    max_params: float | None = None
    max_latency_ms: float | None = None

    def named_constraints(self, result: dict[str, Any]) -> dict[str, float]:
        """Violation per limit, by limit name: value - limit (<= 0 satisfied); NaN counts as violated."""
        out = {}
        for name, limit, key in (("max_gflops", self.max_gflops, "gflops"), ("max_params", self.max_params, "params"),
                                 ("max_latency_ms", self.max_latency_ms, "latency_ms")):
            if limit is None:
                continue
            value = float(result.get(key, math.nan))
            out[name] = value - limit if math.isfinite(value) else math.inf
        return out

    def constraints(self, result: dict[str, Any]) -> list[float]:
        """Violation per limit: value - limit (<= 0 satisfied); NaN values count as violations."""
        return list(self.named_constraints(result).values())

    def feasible(self, result: dict[str, Any]) -> bool:
        return all(c <= 0 for c in self.constraints(result))

    def describe(self) -> str:
        parts = []
        if self.max_gflops is not None:
            parts.append(f"GFLOPs <= {self.max_gflops:g}")
        if self.max_params is not None:
            parts.append(f"params <= {self.max_params:g}")
        if self.max_latency_ms is not None:
            parts.append(f"latency <= {self.max_latency_ms:g} ms")
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class SearchSettings:
    """What to search for and how to sample.

    Args:
        trials: finished trials to reach (complete or failed).
        objectives: canonical objective names (accuracy, gflops, params, latency).
        sampler: guided | nsga2 | tpe | random | gp (``guided``: predictor-screened evolution,
            ``mixnas.search.guided``).
        limits: cost limits, as constraints.
        seed: the sampler's seed.
        references: also evaluate the space's hand-designed references (every stage one mixer, largest sizes).
        warm_start: queue the space's extremes and each mixer's largest architecture as the first trials
            (searched trials, counted in ``trials``).
    """

    trials: int
    objectives: tuple[str, ...] = ("accuracy", "gflops", "latency")
    sampler: str = "guided"
    limits: Limits = field(default_factory=lambda: Limits())
    seed: int = 0
    references: bool = True
    warm_start: bool = True


def score(evaluate: Callable[[ArchConfig], dict[str, Any]], arch: ArchConfig, objectives: list[str]
          ) -> tuple[dict[str, Any] | None, list[float] | None, str]:
    """Evaluate ``arch``: (result, objective values, "") or, for the candidate's own failure
    (``candidate_failure``), (None, None, the one-line reason). Other exceptions propagate."""
    try:
        result = evaluate(arch)
        values = objective_values(objectives, result)
    except Exception as e:
        if not candidate_failure(e):
            raise
        return None, None, failure_reason(e)
    return {k: v for k, v in result.items() if k != "cached"}, values, ""


def trial_record(
    number: int, state: str, arch: ArchConfig | None, result: dict[str, Any] | None, feasible: bool,
    failure_reason: str, backend: str, is_reference: bool = False, label: str = "",
) -> dict[str, Any]:
    """One row of the trial table."""
    result = result or {}
    nan = math.nan
    return {
        "number": number,
        "state": state,
        "arch_id": arch.arch_id if arch else "",
        "arch": arch.canonical_json() if arch else "",
        "summary": arch.summary() if arch else "",
        "accuracy": result.get("accuracy", nan),
        "gflops": result.get("gflops", nan),
        "gflops_min": result.get("gflops_min", nan),
        "gflops_max": result.get("gflops_max", nan),
        "params": result.get("params", nan),
        "latency_ms": result.get("latency_ms", nan),
        "latency_p90_ms": result.get("latency_p90_ms", nan),
        "latency_source": result.get("latency_source", ""),
        "latency_unstable": bool(result.get("latency_unstable", False)),
        "eval_seconds": result.get("eval_seconds", nan),
        "feasible": bool(feasible),
        "failure_reason": failure_reason,
        "backend": backend,
        "is_reference": is_reference,
        "label": label,
        "worker": str(result.get("worker", "")),
    }


def failure_reason(error: BaseException) -> str:
    """A one-line reason for a failed candidate: the exception's type and first line."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)) or any(m in text.lower() for m in _OUT_OF_MEMORY):
        return f"out of memory: {text[:200]}" if text else "out of memory"
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def reference_rows(space: SearchSpace, evaluate: Callable[[ArchConfig], dict[str, Any]], limits: Limits,
                   backend: str, progress: bool = True) -> list[dict[str, Any]]:
    """The space's hand-designed references (every stage one mixer, at the largest sizes), scored alike."""
    rows = []
    kinds = space.mixer_types()
    for i, mixer in enumerate(tqdm(kinds, desc="references", disable=not progress, leave=False)):
        arch = space.largest(mixer).with_name(f"all {mixer}")
        result, _, reason = score(evaluate, arch, ["accuracy"])
        state = "FAIL" if result is None else "COMPLETE"
        feasible = result is not None and limits.feasible(result)
        rows.append(trial_record(-(i + 1), state, arch, result, feasible, reason, backend,
                                 is_reference=True, label=f"all {mixer}"))
    return rows


__all__ = [
    "CANDIDATE_FAILURES", "DEFAULT_OBJECTIVES", "Limits", "SearchSettings", "candidate_failure", "failure_reason",
    "metric_names", "objective_values", "optuna_directions", "parse_objectives", "reference_rows", "score",
    "trial_record",
]
