"""Random sampling on the same supernet: the baseline a search's hypervolume is drawn against.

``random_baseline`` scores ``n`` distinct architectures drawn uniformly (``SearchSpace.sample``, seeded)
with the search's own evaluator, so they share its cache and its scoring, and keeps them as a trial table
in ``RUN_DIR/search/random_baseline.csv`` (``RunDir.random_baseline``), written atomically after each
architecture: a killed run continues where it stopped, and the draws do not depend on where that was.
These rows are a baseline, not search results: they never enter the run's trial table, its front or its
export.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from mixnas.atomic import atomic_write
from mixnas.errors import ResultsError
from mixnas.run_dir import RunDir
from mixnas.search._shared import Limits, score, trial_record
from mixnas.search.evaluator import CandidateEvaluator
from mixnas.trials import TRIAL_COLUMNS, check_trials, load_trials


def load_baseline(run_dir: RunDir | str | Path) -> pd.DataFrame | None:
    """The run's random-sampling table, or None when there is none (or it cannot be read)."""
    path = RunDir.of(run_dir).random_baseline
    if not path.is_file():
        return None
    try:
        return load_trials(path)
    except ResultsError:
        return None  # damaged: scored again (cached results make that quick)


def random_baseline(run_dir: RunDir | str | Path, evaluator: CandidateEvaluator, n: int, objectives: list[str],
                    limits: Limits | None = None, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Score ``n`` distinct uniformly drawn architectures (module docstring); returns their table.

    Args:
        run_dir: the run directory (a ``RunDir`` or its path).
        evaluator: the search's evaluator.
        n: architectures to score.
        objectives: the search's objectives (a failed one is recorded as such).
        limits: the search's limits (feasibility).
        seed: seeds the draws.
        progress: show a progress bar.
    """
    run = RunDir.of(run_dir)
    limits = limits or Limits()
    rng = random.Random(seed)
    archs, seen = [], set()
    tries = 0
    while len(archs) < n and tries < 100 * n:
        tries += 1
        arch = evaluator.space.sample(rng)
        if arch.arch_id not in seen:
            seen.add(arch.arch_id)
            archs.append(arch)
    path = run.random_baseline
    done = load_baseline(run)
    # Rows kept up to the first that is not this draw's architecture (a table of other draws is redone).
    rows = list(itertools.takewhile(lambda ra: ra[0]["arch_id"] == ra[1].arch_id,
                                    zip(done.to_dict("records") if done is not None else [], archs)))
    rows = [r for r, _ in rows]
    for number, arch in enumerate(tqdm(archs, desc="random baseline", unit="arch", disable=not progress)):
        if number < len(rows):
            continue
        result, _, reason = score(evaluator.evaluate, arch, objectives)
        state = "FAIL" if result is None else "COMPLETE"
        rows.append(trial_record(number, state, arch, result, result is not None and limits.feasible(result),
                                 reason, "random"))
        table = pd.DataFrame(rows, columns=TRIAL_COLUMNS)
        atomic_write(path, lambda tmp, t=table: t.to_csv(tmp, index=False))
    return check_trials(pd.DataFrame(rows, columns=TRIAL_COLUMNS))


__all__ = ["load_baseline", "random_baseline"]
