"""Results of a search: the trial store, Pareto fronts and hypervolume, the Pareto table, plotly pages.

``load_trials(run_dir)`` is the public way to get a run's trials as a pandas DataFrame.
"""

from mixnas.results.pages import render_page, screenshot, write_pages
from mixnas.results.pareto import (
    OBJECTIVES,
    default_reference,
    hypervolume,
    hypervolume_history,
    non_dominated_rank,
    objective_column,
    pareto_front,
    pareto_mask,
    parse_objectives,
)
from mixnas.results.store import TRIAL_COLUMNS, ResultsError, check_trials, load_trials, save_trials
from mixnas.results.table import pareto_records, pareto_table

__all__ = [
    "OBJECTIVES", "TRIAL_COLUMNS", "ResultsError", "check_trials", "default_reference", "hypervolume",
    "hypervolume_history", "load_trials", "non_dominated_rank", "objective_column", "pareto_front",
    "pareto_mask", "pareto_records", "pareto_table", "parse_objectives", "render_page", "save_trials",
    "screenshot", "write_pages",
]
