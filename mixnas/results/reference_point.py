"""The hypervolume's reference point, fixed by the search space rather than by the worst observation.

A reference point taken from the trials themselves (1.1 x the worst cost seen) moves whenever one bad
reading arrives: a single 206 ms latency on a busy machine once set it for a whole run. mixnas derives it
from the space instead:

- accuracy: 0 %;
- GFLOPs and parameters: 1.1 x the space's costliest architecture (``CostTable.max_cost``, exact);
- latency: 1.1 x the slowest hand-designed reference (every stage one mixer at the largest sizes: the
  space's costliest networks) as measured in the same run. Without a scored reference the latency's
  reference falls back to 1.1 x the slowest searched trial, and the note says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mixnas.search.cost_table import CostTable
from mixnas.search_space import SearchSpace
from mixnas.trials import objective_column, parse_objectives


def space_reference_point(space: SearchSpace, df: pd.DataFrame, objectives: str | Sequence[str],
                          cache: str | Path | None = None) -> tuple[dict[str, float], str]:
    """(reference point by objective, a one-line description of where it came from).

    Args:
        space: the run's search space.
        df: the trial table (its references give the latency's reference).
        objectives: the objectives of the hypervolume.
        cache: the run's cost-table file (``RunDir.cost_table``).
    """
    objs = parse_objectives(objectives)
    table = CostTable.for_space(space, cache)
    max_gflops, max_params = table.max_cost()
    ref: dict[str, float] = {}
    said = []
    for o in objs:
        if o == "accuracy":
            ref[o] = 0.0
        elif o == "gflops":
            ref[o] = 1.1 * max_gflops
            said.append("GFLOPs 1.1 x the space's costliest architecture")
        elif o == "params":
            ref[o] = 1.1 * max_params
            said.append("params 1.1 x the space's largest architecture")
        else:
            col = objective_column(o)
            refs = pd.to_numeric(df.loc[df["is_reference"].astype(bool) & (df["state"] == "COMPLETE"), col],
                                 errors="coerce").to_numpy(float)
            refs = refs[np.isfinite(refs)]
            if refs.size:
                ref[o] = 1.1 * float(refs.max())
                said.append("latency 1.1 x the slowest hand-designed reference")
            else:
                seen = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
                seen = seen[np.isfinite(seen)]
                ref[o] = 1.1 * float(seen.max()) if seen.size else 1.0
                said.append("latency 1.1 x the slowest trial (no reference was scored)")
    return ref, "accuracy 0 %, " + ", ".join(said)


__all__ = ["space_reference_point"]
