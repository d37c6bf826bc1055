"""Results of a search: Pareto fronts and hypervolume, the Pareto table, plotly pages, export.

``load_trials(run_dir)`` is the public way to get a run's trials as a pandas DataFrame (the table's
schema and store are ``mixnas.trials``, shared with the search runners).
"""

from mixnas.errors import ResultsError
from mixnas.results.export import export_architectures
from mixnas.results.pages import write_pages
from mixnas.results.pareto import (
    default_reference,
    hypervolume,
    hypervolume_history,
    non_dominated_rank,
    pareto_front,
    pareto_mask,
)
from mixnas.results.table import pareto_records, pareto_table
from mixnas.trials import (
    OBJECTIVES,
    TRIAL_COLUMNS,
    check_trials,
    load_trials,
    objective_column,
    parse_objectives,
    save_trials,
)

__all__ = [
    "OBJECTIVES", "TRIAL_COLUMNS", "ResultsError", "check_trials", "default_reference", "export_architectures",
    "hypervolume", "hypervolume_history", "load_trials", "non_dominated_rank", "objective_column",
    "pareto_front", "pareto_mask", "pareto_records", "pareto_table", "parse_objectives", "save_trials",
    "write_pages",
]
