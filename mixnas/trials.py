"""The trial table: the objectives, its columns and dtypes, and reading and writing it.

One row per trial, written beside a run as ``trials.parquet`` and ``trials.csv``. This module sits below
the search runners and the results code, which both read and write the table through it.

The table is the contract between the search runners (Optuna, Ray Tune) and everything that reads
results (the Pareto table, the plotly pages, export). Its columns, in order:

=================  =======  ==========================================================================
column             dtype    meaning
=================  =======  ==========================================================================
number             int      trial number, in the order the search asked for trials
state              str      COMPLETE, FAIL, RUNNING or PRUNED
arch_id            str      ``ArchConfig.arch_id``
arch               str      ``ArchConfig.canonical_json()``
summary            str      ``ArchConfig.summary()``
accuracy           float    top-1 % on the held-out split; NaN unless complete
gflops             float    GFLOPs as multiply-adds at the model's input size, batch 1 (DGE: the mean)
gflops_min/_max    float    the range over the evaluation set (equal to gflops for static models)
params             int      parameters (float with NaN only when some trial failed before counting)
latency_ms         float    median latency in ms; NaN when latency was not measured
latency_p90_ms     float    90th percentile latency in ms
latency_source     str      how latency was obtained, device and batch size stated
latency_unstable   bool     the reading stayed unstable after re-measurement (its rounds disagreed or the
                            machine was busy): shown flagged, not silently trusted
eval_seconds       float    wall time of the trial's evaluation
feasible           bool     met every constraint
failure_reason     str      "" when none
backend            str      optuna or ray
is_reference       bool     a hand-designed reference architecture (never part of the front)
label              str      the reference's name, e.g. "all window_attn"; "" for searched trials
worker             str      the Ray node that scored the trial (IP/node id); "" in process
=================  =======  ==========================================================================

Trial numbers run 0, 1, 2, ... over the architectures searched: a sampler's repeat of an architecture is
told the recorded values and takes no number (each architecture appears once). Tables written before a
column existed read with its default (``worker``: "").

Columns beyond these are kept, after them, so a runner can record more without breaking readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mixnas.atomic import atomic_write
from mixnas.errors import ResultsError
from mixnas.run_dir import RunDir

TRIAL_COLUMNS = [
    "number", "state", "arch_id", "arch", "summary", "accuracy", "gflops", "gflops_min", "gflops_max",
    "params", "latency_ms", "latency_p90_ms", "latency_source", "latency_unstable", "eval_seconds", "feasible",
    "failure_reason", "backend", "is_reference", "label", "worker",
]
_DEFAULTS = {"worker": "", "latency_unstable": False}  # columns added after tables were first written
TRIAL_STATES = ["COMPLETE", "FAIL", "RUNNING", "PRUNED"]
PARQUET_NAME = RunDir.TRIALS_PARQUET
CSV_NAME = RunDir.TRIALS_CSV

_STR_COLUMNS = ["state", "arch_id", "arch", "summary", "latency_source", "failure_reason", "backend", "label",
                "worker"]
_FLOAT_COLUMNS = [
    "accuracy", "gflops", "gflops_min", "gflops_max", "latency_ms", "latency_p90_ms", "eval_seconds",
]
_BOOL_COLUMNS = ["feasible", "is_reference", "latency_unstable"]

# Objective name -> direction. The column each reads is in _OBJECTIVE_COLUMNS.
OBJECTIVES: dict[str, str] = {"accuracy": "max", "gflops": "min", "params": "min", "latency": "min"}
_OBJECTIVE_COLUMNS = {"accuracy": "accuracy", "gflops": "gflops", "params": "params", "latency": "latency_ms"}
# The CLI's `--objectives accuracy,flops,latency` (DESIGN.md) names GFLOPs "flops".
_ALIASES = {"flops": "gflops"}
# How each objective is written on tables and plots.
OBJECTIVE_LABELS = {
    "accuracy": "accuracy (%)", "gflops": "GFLOPs", "params": "params", "latency": "latency (ms)",
}

def _canonical(name: str) -> str:
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in OBJECTIVES:
        raise ValueError(
            f"objective {name!r} is unknown; allowed: {', '.join(OBJECTIVES)} (flops means gflops)"
        )
    return key


def objective_column(name: str) -> str:
    """The trial-table column an objective reads (``latency`` -> ``latency_ms``).

    Args:
        name: one of ``OBJECTIVES`` (``flops`` is accepted for ``gflops``).

    Raises:
        ValueError: the name is not an objective; the message lists the allowed names.
    """
    return _OBJECTIVE_COLUMNS[_canonical(name)]


def parse_objectives(objectives: str | Sequence[str]) -> list[str]:
    """Canonical objective names from ``"accuracy,flops,latency"`` or a list of names.

    Args:
        objectives: a comma-separated string or a sequence of names.

    Raises:
        ValueError: an unknown or repeated name, or none at all.
    """
    names = objectives.split(",") if isinstance(objectives, str) else list(objectives)
    out = [_canonical(n) for n in names if n.strip()]
    if not out:
        raise ValueError(f"objectives: none given; choose from {', '.join(OBJECTIVES)}")
    repeated = sorted({n for n in out if out.count(n) > 1})
    if repeated:
        raise ValueError(f"objectives: {repeated[0]!r} is given twice")
    return out


def directions_of(objectives: Sequence[str]) -> list[str]:
    """``"max"``/``"min"`` for each objective, in order."""
    return [OBJECTIVES[_canonical(o)] for o in objectives]


def empty_trials() -> pd.DataFrame:
    """A trial table with no rows and every column at its dtype (what a run with no trials holds)."""
    return check_trials(pd.DataFrame({c: [] for c in TRIAL_COLUMNS}))


def check_trials(df: pd.DataFrame, source: str = "trial table") -> pd.DataFrame:
    """Validate a trial table and return a copy with the contract's column order and dtypes.

    Args:
        df: one row per trial with at least the columns in ``TRIAL_COLUMNS``.
        source: what to call the table in error messages (a file path when read from disk).

    Raises:
        ResultsError: a column is missing, a value has the wrong type, or a state is unknown.
    """
    df = df.assign(**{c: v for c, v in _DEFAULTS.items() if c not in df.columns})
    missing = [c for c in TRIAL_COLUMNS if c not in df.columns]
    if missing:
        raise ResultsError(
            f"{source}: missing column {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f"; a trial table has the columns {', '.join(TRIAL_COLUMNS)}"
        )
    extra = [c for c in df.columns if c not in TRIAL_COLUMNS]
    out = df[TRIAL_COLUMNS + extra].reset_index(drop=True).copy()
    converters = (
        [(c, _as_str) for c in _STR_COLUMNS]
        + [(c, _as_float) for c in _FLOAT_COLUMNS]
        + [(c, _as_bool) for c in _BOOL_COLUMNS]
        + [("number", _as_int), ("params", _as_int_or_nan)]
    )
    for col, convert in converters:
        try:
            out[col] = convert(out[col])
        except (TypeError, ValueError, KeyError) as e:
            raise ResultsError(f"{source}: column {col!r} has a value of the wrong type ({e})") from None
    bad = sorted(set(out["state"]) - set(TRIAL_STATES))
    if bad:
        raise ResultsError(f"{source}: column 'state' has {bad[0]!r}; allowed: {', '.join(TRIAL_STATES)}")
    return out


def _as_str(col: pd.Series) -> pd.Series:
    # CSV reads an empty string back as NaN; the contract says "" for "none".
    return col.astype(object).where(col.notna(), "").astype(str)


def _as_float(col: pd.Series) -> pd.Series:
    return pd.to_numeric(col, errors="raise").astype("float64")


def _as_bool(col: pd.Series) -> pd.Series:
    if col.dtype == bool:
        return col
    # A CSV round trip, or a column with missing values, arrives as strings or objects.
    words = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}

    def one(v: object) -> bool:
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return False
        key = str(v).strip().lower()
        if key not in words:
            raise ValueError(f"{v!r} is not a boolean")
        return words[key]

    return col.map(one).astype(bool)


def _as_int(col: pd.Series) -> pd.Series:
    num = pd.to_numeric(col, errors="raise")
    if num.isna().any():
        raise ValueError("a missing value")
    values = num.to_numpy(dtype="float64")
    if not np.all(np.isfinite(values)) or not np.all(np.mod(values, 1) == 0):
        raise ValueError("a non-integer value")
    if np.any(np.abs(values) >= 2**53):  # beyond this a float64 no longer holds every integer: int64 would wrap
        raise ValueError("an integer out of range")
    return num.astype("int64")


def _as_int_or_nan(col: pd.Series) -> pd.Series:
    """Integers, or float64 with NaN when some trial failed before it was counted."""
    num = pd.to_numeric(col, errors="raise")
    return num.astype("float64") if num.isna().any() else _as_int(num)


def save_trials(df: pd.DataFrame, run_dir: RunDir | str | Path) -> Path:
    """Write the trial table to ``RUN_DIR/trials.parquet`` and ``RUN_DIR/trials.csv``, each atomically.

    Args:
        df: the trial table (validated with ``check_trials`` first).
        run_dir: the run directory (a ``RunDir`` or its path); created if missing.

    Returns:
        The path of the parquet file.
    """
    table = check_trials(df)
    run = RunDir.of(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    # Parquet keeps dtypes and is what load_trials reads; the CSV is for people and spreadsheets.
    atomic_write(run.trials_parquet, lambda tmp: table.to_parquet(tmp, index=False))
    atomic_write(run.trials_csv, lambda tmp: table.to_csv(tmp, index=False))
    return run.trials_parquet


def load_trials(run_dir: RunDir | str | Path) -> pd.DataFrame:
    """Read a run's trial table as a DataFrame: the public way to get the trials.

    Reads ``RUN_DIR/trials.parquet``, or ``RUN_DIR/trials.csv`` when the parquet file is missing,
    then validates the columns and restores their dtypes (see the module docstring).

    Args:
        run_dir: a run directory (a ``RunDir`` or its path), or the path of a ``trials.parquet`` or
            ``trials.csv`` file itself.

    Raises:
        ResultsError: the directory or the trials file does not exist, cannot be parsed, or misses
            a column; the message names the path.
    """
    run = RunDir.of(run_dir)
    path = run.path
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = [p for p in (run.trials_parquet, run.trials_csv) if p.is_file()]
        if not files:
            raise ResultsError(
                f"{path}: no {PARQUET_NAME} or {CSV_NAME}; run `mixnas search {path}` to create trials"
            )
    else:
        raise ResultsError(f"{path}: no such run directory")
    file = files[0]
    try:
        # check_trials turns the CSV's NaN back into "" in the string columns.
        df = pd.read_csv(file) if file.suffix == ".csv" else pd.read_parquet(file)
    except Exception as e:  # pyarrow and the CSV parser raise many types; all mean "not a trial table".
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ResultsError(f"{file}: cannot be read as a trial table ({first})") from None
    return check_trials(df, source=str(file))
