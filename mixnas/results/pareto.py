"""Pareto fronts and hypervolume over a trial table (see ``mixnas.trials``).

Optuna 5.0 exposes Pareto fronts only through a live study (``Study.best_trials``) and its plots
(``optuna.visualization.plot_pareto_front``, ``plot_hypervolume_history``); the array-level helpers
behind them (``optuna.study._multi_objective``, ``optuna._hypervolume``) are private. A trial table
can also come from the Ray Tune runner or from disk, so the sorting and the hypervolume are written
here in numpy; the tests check them against ``Study.best_trials`` and ``plot_hypervolume_history``.

Only feasible, complete, searched trials (not the hand-designed references) with a finite value for
every chosen objective take part in a front or a hypervolume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from mixnas.trials import (
    OBJECTIVES,
    directions_of,
    objective_column,
    parse_objectives,
)

Reference = Mapping[str, float] | Sequence[float] | np.ndarray


def _check_directions(directions: Sequence[str], m: int) -> np.ndarray:
    if len(directions) != m:
        raise ValueError(f"directions: {len(directions)} given for {m} objectives")
    bad = [d for d in directions if d not in ("min", "max")]
    if bad:
        raise ValueError(f"directions: {bad[0]!r} is not 'min' or 'max'")
    return np.array([-1.0 if d == "max" else 1.0 for d in directions])


def _as_loss(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """(n, m) values -> losses to minimise: maximised objectives are negated."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 2:
        raise ValueError(f"values: expected an (n_points, n_objectives) array, got shape {v.shape}")
    return v * _check_directions(directions, v.shape[1])


# ------------------------------------------------------------------------------- non-dominated sorting
def _dominance_matrix(loss: np.ndarray) -> np.ndarray:
    """dom[i, j]: point i dominates point j (no worse in every objective, better in one)."""
    n = len(loss)
    dom = np.zeros((n, n), dtype=bool)
    # Blocks of rows keep the (block, n, m) comparison near 8M elements, whatever n is.
    block = max(1, 8_000_000 // max(1, n * loss.shape[1]))
    for start in range(0, n, block):
        a = loss[start:start + block, None, :]
        dom[start:start + block] = (a <= loss[None]).all(-1) & (a < loss[None]).any(-1)
    return dom


def non_dominated_rank(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Non-dominated sorting: rank 0 is the Pareto front, rank 1 the front once rank 0 is removed, ...

    Identical points do not dominate each other, so duplicates share a rank.

    Args:
        values: (n_points, n_objectives) objective values in their own units; must be finite.
        directions: ``"max"`` or ``"min"`` for each objective (column).

    Returns:
        (n_points,) int ranks.
    """
    loss = _as_loss(values, directions)
    if not np.isfinite(loss).all():
        raise ValueError("values: non-dominated sorting needs finite values (filter NaN rows first)")
    n = len(loss)
    rank = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return rank
    dom = _dominance_matrix(loss)
    dominators = dom.sum(0)
    current = np.flatnonzero(dominators == 0)
    r = 0
    while current.size:
        rank[current] = r
        dominators = dominators - dom[current].sum(0)
        dominators[rank >= 0] = -1  # already ranked: never picked again
        current = np.flatnonzero(dominators == 0)
        r += 1
    return rank


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


# ----------------------------------------------------------------------------------------- hypervolume
def _hv_2d(loss: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by 2-D points (all strictly better than ref), by a sweep over x."""
    order = np.lexsort((loss[:, 1], loss[:, 0]))
    x, y = loss[order, 0], loss[order, 1]
    # Each point adds the strip [x, ref_x] x [y, best y among the points before it).
    best_before = np.concatenate([[ref[1]], np.minimum.accumulate(y)[:-1]])
    return float(np.sum((ref[0] - x) * np.clip(best_before - y, 0.0, None)))


def _hv(loss: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume of points strictly better than ref in every objective (minimisation).

    Slices along the last objective (HSO): between consecutive values of it, the dominated region's
    cross-section is the (d-1)-dimensional hypervolume of the points reached so far.
    """
    n, d = loss.shape
    if n == 0:
        return 0.0
    if d == 1:
        return float(ref[0] - loss[:, 0].min())
    if d == 2:
        return _hv_2d(loss, ref)
    # Dominated points add nothing; dropping them first shrinks every slice below.
    loss = loss[non_dominated_rank(loss, ["min"] * d) == 0]
    loss = loss[np.argsort(loss[:, -1], kind="stable")]
    last = np.append(loss[1:, -1], ref[-1])
    volume = 0.0
    for i in range(len(loss)):
        depth = last[i] - loss[i, -1]
        if depth > 0:
            volume += depth * _hv(loss[: i + 1, :-1], ref[:-1])
    return volume


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


def hypervolume(
    points: np.ndarray, directions: Sequence[str], reference: Sequence[float] | np.ndarray
) -> float:
    """The volume of objective space dominated by the points and bounded by the reference point.

    Exact, in any number of objectives (cost grows as n^(d-1); fine for fronts of hundreds of
    points in 3-D). Maximised objectives are negated so that everything is minimised; a point
    counts only if it is strictly better than the reference in every objective, so the reference
    should be worse than every point of interest.

    Args:
        points: (n_points, n_objectives) values in the objectives' own units (accuracy in %, ...).
        directions: ``"max"`` or ``"min"`` for each objective.
        reference: the reference point, in the objectives' own units.

    Returns:
        The hypervolume, in the product of the objectives' units.
    """
    loss = _as_loss(np.asarray(points, dtype=float).reshape(-1, len(directions)), directions)
    ref = np.asarray(reference, dtype=float).reshape(-1) * _check_directions(directions, loss.shape[1])
    if len(ref) != loss.shape[1]:
        raise ValueError(f"reference: {len(ref)} values for {loss.shape[1]} objectives")
    inside = np.isfinite(loss).all(1) & (loss < ref).all(1)
    return _hv(loss[inside], ref)


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
