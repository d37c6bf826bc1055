"""The Pareto front as a fixed-width text table (``mixnas results``) and as records (``--json``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import pandas as pd

from mixnas.errors import ResultsError
from mixnas.results.pareto import pareto_front
from mixnas.search_space import ArchConfig
from mixnas.trials import parse_objectives


@lru_cache(maxsize=4096)
def parse_arch(arch_json: str) -> ArchConfig:
    """The ArchConfig of a trial's ``arch`` column (cached: pages and tables read each many times).

    Raises:
        ResultsError: the column holds no architecture (malformed, forged or nested too deeply).
    """
    try:
        return ArchConfig.from_dict(json.loads(arch_json))
    except (ValueError, TypeError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e).splitlines()[0][:200]
        raise ResultsError(f"trial table: an 'arch' value is not an architecture ({reason})") from None


def stage_label(arch: ArchConfig, i: int) -> str:
    """Stage ``i`` in a few words: mixer, depth, width, heads, MLP ratio, FFN (``win7 d2 c96 h3 r4 mlp``)."""
    s = arch.stages[i]
    return f"{s.mixer.short()} d{s.depth} c{s.dim} h{s.heads} r{s.mlp_ratio:g} {s.ffn.short()}"


def stage_labels(arch_json: str) -> list[str]:
    """``stage_label`` for every stage of a trial's ``arch`` JSON."""
    arch = parse_arch(arch_json)
    return [stage_label(arch, i) for i in range(len(arch.stages))]


def _finite(v: Any) -> float | None:
    """A float, or None for NaN/missing (JSON has no NaN)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def pareto_records(df: pd.DataFrame, objectives: str | Sequence[str]) -> list[dict[str, Any]]:
    """The Pareto front, cheapest first, as JSON-ready dicts (missing values are None).

    Each record has number, arch_id, arch (a dict), summary, stages (a label per stage), accuracy
    (top-1 %), gflops (multiply-adds, batch 1) with gflops_min/gflops_max, params, latency_ms,
    latency_p90_ms and latency_source.

    Args:
        df: a trial table.
        objectives: names from ``mixnas.results.pareto.OBJECTIVES``.
    """
    records = []
    for row in pareto_front(df, parse_objectives(objectives)).itertuples(index=False):
        params = _finite(row.params)
        records.append({
            "number": int(row.number),
            "arch_id": row.arch_id,
            "arch": json.loads(row.arch),
            "summary": row.summary,
            "stages": stage_labels(row.arch),
            "accuracy": _finite(row.accuracy),
            "gflops": _finite(row.gflops),
            "gflops_min": _finite(row.gflops_min),
            "gflops_max": _finite(row.gflops_max),
            "params": None if params is None else int(params),
            "latency_ms": _finite(row.latency_ms),
            "latency_p90_ms": _finite(row.latency_p90_ms),
            "latency_source": row.latency_source,
        })
    return records


def format_gflops(gflops: float | None, lo: float | None, hi: float | None) -> str:
    """``0.123``, or ``0.123 (0.101-0.150)`` when the count depends on the image (DGE); three
    significant digits, so that the small models of the demo (``0.00473``) stay distinguishable."""
    if gflops is None:
        return "-"
    if lo is not None and hi is not None and not math.isclose(lo, hi, rel_tol=1e-6):
        return f"{gflops:.3g} ({lo:.3g}-{hi:.3g})"
    return f"{gflops:.3g}"


def table_rows(records: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the front table (shared by the text table and the HTML index)."""
    n_stages = max((len(r["stages"]) for r in records), default=0)
    stage_names = [f"stage {i + 1}" for i in range(n_stages)]
    header = ["trial", *stage_names, "acc %", "GFLOPs", "params M", "latency ms"]
    rows = []
    for r in records:
        stages = r["stages"] + [""] * (n_stages - len(r["stages"]))
        rows.append([
            str(r["number"]),
            *stages,
            "-" if r["accuracy"] is None else f"{r['accuracy']:.2f}",
            format_gflops(r["gflops"], r["gflops_min"], r["gflops_max"]),
            "-" if r["params"] is None else f"{r['params'] / 1e6:.3f}",
            "-" if r["latency_ms"] is None else f"{r['latency_ms']:.2f}",
        ])
    return header, rows


def pareto_table(df: pd.DataFrame, objectives: str | Sequence[str]) -> str:
    """The Pareto front as a fixed-width table, cheapest first.

    One row per front trial: trial number, each stage as ``mixer dDEPTH cDIM hHEADS rRATIO FFN``,
    accuracy (top-1 %), GFLOPs (multiply-adds, batch 1; DGE shows its range), params (millions),
    median latency (ms, ``-`` when not measured).

    Args:
        df: a trial table.
        objectives: names from ``mixnas.results.pareto.OBJECTIVES``.
    """
    objs = parse_objectives(objectives)
    records = pareto_records(df, objs)
    if not records:
        return f"Pareto front ({', '.join(objs)}): empty, no feasible complete trials yet"
    header, rows = table_rows(records)
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    # Numbers read best right-aligned; the stage labels are text.
    numeric = [i == 0 or i >= len(header) - 4 for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)
        ).rstrip()

    title = f"Pareto front ({', '.join(objs)}): {len(records)} architecture{'s' * (len(records) != 1)}"
    return "\n".join([title, line(header), line(["-" * w for w in widths]), *map(line, rows)])


def versus_references(df: pd.DataFrame, cost: str = "gflops") -> pd.DataFrame:
    """For each scored hand-designed reference: the most accurate searched architecture (complete and
    feasible, not the reference's own architecture) at no more than the reference's ``cost``.

    Args:
        df: a trial table.
        cost: ``gflops`` or ``latency`` (the ``latency_ms`` column; readings flagged unstable take no part).

    Returns:
        One row per reference: ``reference``, ``ref_accuracy``, ``ref_cost``, ``number`` (the searched
        trial, -1 when none), ``accuracy``, ``cost``, ``difference`` (accuracy points, searched minus
        reference; NaN when none), ``beats`` (strictly more accurate at strictly less cost).
    """
    col = "latency_ms" if cost == "latency" else "gflops"
    is_ref = df["is_reference"].astype("boolean").fillna(False).astype(bool)
    complete = df["state"] == "COMPLETE"
    searched = df[~is_ref & complete & df["feasible"].astype("boolean").fillna(False).astype(bool)]
    if col == "latency_ms" and "latency_unstable" in df:
        searched = searched[~searched["latency_unstable"].astype("boolean").fillna(False).astype(bool)]
    rows = []
    for r in df[is_ref & complete].itertuples(index=False):
        ref_cost = float(getattr(r, col))
        if not math.isfinite(ref_cost):
            continue
        cand = searched[(searched[col].astype(float) <= ref_cost) & (searched["arch_id"] != r.arch_id)]
        cand = cand[cand["accuracy"].astype(float).notna()]
        if len(cand):
            best = cand.sort_values(["accuracy", col, "number"], ascending=[False, True, True]).iloc[0]
            strictly = bool(((cand["accuracy"] > r.accuracy) & (cand[col].astype(float) < ref_cost)).any())
            rows.append({"reference": r.label, "ref_accuracy": float(r.accuracy), "ref_cost": ref_cost,
                         "number": int(best["number"]), "accuracy": float(best["accuracy"]),
                         "cost": float(best[col]), "difference": float(best["accuracy"] - r.accuracy),
                         "beats": strictly})
        else:
            rows.append({"reference": r.label, "ref_accuracy": float(r.accuracy), "ref_cost": ref_cost,
                         "number": -1, "accuracy": math.nan, "cost": math.nan, "difference": math.nan,
                         "beats": False})
    return pd.DataFrame(rows, columns=["reference", "ref_accuracy", "ref_cost", "number", "accuracy", "cost",
                                       "difference", "beats"])
