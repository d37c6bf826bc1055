"""The pages of one run directory: its trial table, the space's reference point, the random baseline and
the ranking check, put together for ``write_pages`` (``mixnas results`` and ``mixnas run`` both call it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mixnas.errors import MixnasError
from mixnas.results.pages import write_pages
from mixnas.results.reference_point import space_reference_point
from mixnas.run_dir import RunDir


def write_run_pages(run_dir: RunDir | str | Path, table: pd.DataFrame, objectives: Sequence[str],
                    out: str | Path | None = None, title: str | None = None) -> Path:
    """Write the pages of ``run_dir`` (a ``RunDir`` or its path) to ``out`` (default ``RUN_DIR/pages``); returns
    the index's path.

    The hypervolume's reference point comes from the run's space (``space_reference_point``); when the
    space cannot be read (a table copied out of its run directory), the default from the trials is used.
    """
    from mixnas.search.baseline import load_baseline
    from mixnas.search.ranking import load_ranking
    from mixnas.training import read_space

    run = RunDir.of(run_dir)
    reference, note = None, None
    try:
        space = read_space(run)
        reference, note = space_reference_point(space, table, objectives, cache=run.cost_table)
    except MixnasError:
        pass
    return write_pages(table, out or run.pages_dir, list(objectives), reference_point=reference,
                       title=title or f"mixnas: {run.path}", ranking=load_ranking(run), reference_note=note,
                       baseline=load_baseline(run))


__all__ = ["write_run_pages"]
