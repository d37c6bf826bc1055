"""Non-dominated sorting and exact hypervolume on plain arrays (numpy only).

The search's guided sampler and the results code both need them; they live here, below both, so that the
search never imports the results layer. ``mixnas.results.pareto`` applies them to trial tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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



__all__ = ["hypervolume", "non_dominated_rank"]
