"""Pareto fronts and hypervolume over a trial table (see ``mixnas.trials``).

Optuna 5.0 exposes Pareto fronts only through a live study (``Study.best_trials``) and its plots
(``optuna.visualization.plot_pareto_front``, ``plot_hypervolume_history``); the array-level helpers
behind them (``optuna.study._multi_objective``, ``optuna._hypervolume``) are private. A trial table
can also come from the Ray Tune runner or from disk, so the sorting and the hypervolume are written in
numpy (``mixnas.search.hypervolume``, on arrays, shared with the guided sampler) and applied here to trial
tables; the tests check them against ``Study.best_trials`` and ``plot_hypervolume_history``.

Only feasible, complete, searched trials (not the hand-designed references) with a finite value for
every chosen objective take part in a front or a hypervolume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from mixnas.search.hypervolume import hypervolume, non_dominated_rank
from mixnas.trials import (
    OBJECTIVES,
    directions_of,
    objective_column,
    parse_objectives,
)

Reference = Mapping[str, float] | Sequence[float] | np.ndarray


def _flag(col: pd.Series) -> pd.Series:
    # A table not yet through check_trials may hold NaN here; plain astype(bool) would make it True.
    return col.astype("boolean").fillna(False).astype(bool)


def candidates(df: pd.DataFrame, objectives: Sequence[str]) -> pd.Series:
    """Trials that can be on a front: complete, feasible, searched, with every objective finite."""
    ok = (df["state"] == "COMPLETE") & _flag(df["feasible"]) & ~_flag(df["is_reference"])
    for o in objectives:
        ok &= np.isfinite(pd.to_numeric(df[objective_column(o)], errors="coerce").astype(float))
    return ok


def _objective_values(df: pd.DataFrame, objectives: Sequence[str]) -> np.ndarray:
    return np.column_stack(
        [df[objective_column(o)].to_numpy(dtype=float) for o in objectives]
    ) if len(df) else np.zeros((0, len(objectives)))


def pareto_mask(df: pd.DataFrame, objectives: str | Sequence[str]) -> pd.Series:
    """Which trials are on the Pareto front of the chosen objectives.

    Args:
        df: a trial table.
        objectives: names from ``OBJECTIVES`` (a list or ``"accuracy,gflops"``).

    Returns:
        A bool Series aligned with ``df``; False for every trial that is not a feasible complete
        searched trial with all objectives measured.
    """
    objs = parse_objectives(objectives)
    ok = candidates(df, objs)
    mask = pd.Series(False, index=df.index)
    if ok.any():
        rank = non_dominated_rank(_objective_values(df[ok], objs), directions_of(objs))
        mask[ok[ok].index] = rank == 0
    return mask


def pareto_front(df: pd.DataFrame, objectives: str | Sequence[str]) -> pd.DataFrame:
    """The Pareto-front trials, cheapest first.

    Sorted by the first minimised objective ascending (by the first objective when none is
    minimised), then by trial number.

    Args:
        df: a trial table.
        objectives: names from ``OBJECTIVES``.
    """
    objs = parse_objectives(objectives)
    front = df[pareto_mask(df, objs)]
    minimised = [o for o in objs if OBJECTIVES[o] == "min"]
    key = objective_column(minimised[0] if minimised else objs[0])
    return front.sort_values([key, "number"], kind="stable")


def _reference_array(objectives: Sequence[str], reference: Reference) -> np.ndarray:
    if isinstance(reference, Mapping):
        ref = {parse_objectives([k])[0]: float(v) for k, v in reference.items()}
        missing = [o for o in objectives if o not in ref]
        if missing:
            raise ValueError(f"reference point: no value for objective {missing[0]!r}")
        return np.array([ref[o] for o in objectives], dtype=float)
    arr = np.asarray(reference, dtype=float).reshape(-1)
    if len(arr) != len(objectives):
        raise ValueError(f"reference point: {len(arr)} values for {len(objectives)} objectives")
    return arr


def default_reference(df: pd.DataFrame, objectives: str | Sequence[str]) -> dict[str, float]:
    """The reference point used when none is given.

    accuracy: 0 %; each minimised objective (GFLOPs, params, latency in ms): 1.1 x its maximum over
    the feasible complete searched trials (references excluded, as in the hypervolume itself), so
    that every such trial, even the costliest, adds volume.

    Args:
        df: a trial table.
        objectives: names from ``OBJECTIVES``.

    Raises:
        ValueError: no feasible complete trial has every objective measured.
    """
    objs = parse_objectives(objectives)
    ok = candidates(df, objs)
    if not ok.any():
        raise ValueError("reference point: no feasible complete trial to set it from")
    ref = {}
    for o in objs:
        if OBJECTIVES[o] == "max":
            ref[o] = 0.0
        else:
            ref[o] = 1.1 * float(df.loc[ok, objective_column(o)].astype(float).max())
    return ref


def hypervolume_history(
    df: pd.DataFrame, objectives: str | Sequence[str], reference: Reference | None = None
) -> pd.DataFrame:
    """Hypervolume of the feasible complete trials numbered <= n, for every searched trial n.

    Args:
        df: a trial table.
        objectives: names from ``OBJECTIVES``.
        reference: the reference point (a mapping by objective name, or values in objective order);
            ``default_reference(df, objectives)`` when None.

    Returns:
        DataFrame(number, hypervolume), one row per searched trial in trial-number order;
        non-decreasing, since a trial can only add to the dominated region.
    """
    objs = parse_objectives(objectives)
    searched = df[~_flag(df["is_reference"])].sort_values("number", kind="stable")
    if reference is None:
        reference = default_reference(df, objs)
    directions = directions_of(objs)
    ref = _reference_array(objs, reference)
    ok = candidates(searched, objs).to_numpy()
    values = _objective_values(searched, objs)
    front = np.zeros((0, len(objs)))
    volume = 0.0
    volumes = []
    for i in range(len(searched)):
        if ok[i]:
            # Only the front so far can change the volume; keep it small instead of every point.
            front = np.vstack([front, values[i]])
            front = front[non_dominated_rank(front, directions) == 0]
            volume = hypervolume(front, directions, ref)
        volumes.append(volume)
    return pd.DataFrame({"number": searched["number"].to_numpy(dtype=np.int64), "hypervolume": volumes})
