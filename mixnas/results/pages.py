"""The results pages: plotly HTML that opens offline, plus a headless-browser check.

``write_pages`` writes, into one folder:

- ``accuracy_vs_gflops.html``, ``accuracy_vs_latency.html``: accuracy against cost. The line is the
  front of that plane (accuracy and that cost); when the search's objectives are more than those two,
  trials on the full front but off the plane's front are drawn as open circles. Dominated feasible
  trials are faded, infeasible ones are grey crosses, reference architectures are labelled diamonds.
- ``objectives_3d.html``: a 3-D scatter of three objectives, the search's front highlighted.
- ``hypervolume.html``: hypervolume against supernet evaluations, with the reference point stated, beside
  random sampling on the same supernet when a baseline was scored.
- ``mixers_along_front.html``: which mixer each stage of each front architecture chose, cheapest first.
- ``index.html``: links to all of them, a summary, the Pareto table, and for each hand-designed reference
  the best searched architecture at no more than its GFLOPs (and, separately, its latency) with the
  accuracy difference; the accuracy-vs-cost pages repeat that table for their cost.
- ``plotly.min.js``: plotly.js as the installed plotly package bundles it, which every plot page loads
  by a relative ``<script src>``. One copy per folder rather than one embedded in each page (4.8 MB
  each), and never a CDN, so a run directory copied to a machine without network is still read whole.

(The headless-browser checks of these pages live with the tests, in ``tests/browser.py``.)
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from mixnas.atomic import atomic_write_bytes, atomic_write_text
from mixnas.results.pareto import (
    Reference,
    candidates,
    default_reference,
    hypervolume_history,
    objective_column,
    pareto_front,
    pareto_mask,
)
from mixnas.results.table import (
    format_gflops,
    pareto_records,
    parse_arch,
    stage_label,
    table_rows,
    versus_references,
)
from mixnas.search_space import get_mixer, mixer_names
from mixnas.trials import OBJECTIVE_LABELS, OBJECTIVES, TRIAL_STATES, check_trials, parse_objectives

PAGE_FILES = {
    "accuracy_vs_gflops": "accuracy_vs_gflops.html",
    "accuracy_vs_latency": "accuracy_vs_latency.html",
    "objectives_3d": "objectives_3d.html",
    "hypervolume": "hypervolume.html",
    "mixers": "mixers_along_front.html",
    "ranking": "ranking.html",
}
PAGE_TITLES = {
    "accuracy_vs_gflops": "Accuracy vs GFLOPs",
    "accuracy_vs_latency": "Accuracy vs latency",
    "objectives_3d": "Objectives in 3-D",
    "hypervolume": "Hypervolume over trials",
    "mixers": "Mixers along the Pareto front",
    "ranking": "Ranking: supernet vs trained from scratch",
}
PLOTLY_JS = "plotly.min.js"  # beside the pages, which load it by this relative path
FRONT_COLOR = "#d62728"
_UNITS = {"accuracy": "%", "gflops": "GFLOPs", "params": "", "latency": "ms"}
_NAMES = {"accuracy": "accuracy", "gflops": "GFLOPs", "params": "params", "latency": "latency"}
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}


# ------------------------------------------------------------------------------------------ formatting
def _names(objectives: Sequence[str]) -> str:
    """``accuracy, GFLOPs, latency``."""
    return ", ".join(_NAMES[o] for o in objectives)


def format_reference(reference: Mapping[str, float]) -> str:
    """``accuracy 0 %, GFLOPs 0.1234, latency 5.678 ms``: a reference point as people read it.

    Args:
        reference: objective name -> value in the objective's own units.
    """
    parts = []
    for name, value in reference.items():
        unit = _UNITS[name]
        number = f"{_NAMES[name]} {value:.4g}"
        parts.append(number if unit in ("GFLOPs", "") else f"{number} {unit}")
    return ", ".join(parts)


def _fmt(value: Any, spec: str, missing: str = "-") -> str:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return missing
    return format(f, spec) if math.isfinite(f) else missing


def _hover_data(df: pd.DataFrame) -> list[list[Any]]:
    """Per trial: [number, who, stages, accuracy, GFLOPs, params M, latency] for the hover box."""
    rows = []
    for r in df.itertuples(index=False):
        who = f"reference: {r.label}" if r.is_reference else f"trial {r.number}"
        stages = "<br>".join(
            f"stage {i + 1}: {html.escape(s)}" for i, s in enumerate(str(r.summary).split(" | "))
        )
        rows.append([
            int(r.number),
            html.escape(who),
            stages,
            _fmt(r.accuracy, ".2f"),
            format_gflops(_finite(r.gflops), _finite(r.gflops_min), _finite(r.gflops_max)),
            _fmt(float(r.params) / 1e6, ".3f"),
            _fmt(r.latency_ms, ".2f"),
        ])
    return rows


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


_HOVER = (
    "<b>%{customdata[1]}</b><br>%{customdata[2]}<br>accuracy %{customdata[3]} %<br>"
    "GFLOPs %{customdata[4]}<br>params %{customdata[5]} M<br>latency %{customdata[6]} ms"
)


def _axis_title(objective: str) -> str:
    return OBJECTIVE_LABELS[objective] + (" (multiply-adds, batch 1)" if objective == "gflops" else "")


def _values(df: pd.DataFrame, objective: str) -> np.ndarray:
    return df[objective_column(objective)].to_numpy(dtype=float)


# ---------------------------------------------------------------------------------------------- figures
def scatter_figure(df: pd.DataFrame, cost: str, objectives: Sequence[str]) -> go.Figure:
    """Accuracy against one cost objective, with the plane's Pareto front as a line.

    Args:
        df: a trial table.
        cost: the x-axis objective (``gflops``, ``latency`` or ``params``).
        objectives: the search's objectives; when more than accuracy and ``cost``, trials on their
            front but not on the plane's are drawn as open circles.
    """
    objs = parse_objectives(objectives)
    plane = ["accuracy", cost]
    complete = df[(df["state"] == "COMPLETE") & ~df["is_reference"]]
    plotted = complete[candidates(complete, [])]  # complete, feasible, searched
    has_xy = np.isfinite(_values(plotted, "accuracy")) & np.isfinite(_values(plotted, cost))
    plotted = plotted[has_xy]
    on_plane = pareto_mask(plotted, plane)
    on_full = pareto_mask(df, objs).reindex(plotted.index, fill_value=False) & ~on_plane
    dominated = plotted[~on_plane & ~on_full]
    infeasible = complete[~complete["feasible"]]
    refs = df[df["is_reference"] & (df["state"] == "COMPLETE")]
    front = plotted[on_plane].sort_values([objective_column(cost), "number"])

    fig = go.Figure()

    def add(part: pd.DataFrame, name: str, **style: Any) -> None:
        fig.add_trace(go.Scatter(
            x=_values(part, cost), y=_values(part, "accuracy"), name=name, customdata=_hover_data(part),
            hovertemplate=_HOVER, **style,
        ))

    add(dominated, "dominated", mode="markers", marker=dict(color="#1f77b4", size=8), opacity=0.3)
    add(infeasible, "infeasible", mode="markers", opacity=0.6,
        marker=dict(color="#999999", symbol="x", size=8))
    if set(objs) != set(plane):
        add(plotted[on_full], f"on the front of {_names(objs)}, off this plane's", mode="markers",
            marker=dict(color=FRONT_COLOR, symbol="circle-open", size=10, line=dict(width=2)))
    add(front, "Pareto front", mode="lines+markers", marker=dict(color=FRONT_COLOR, size=10),
        line=dict(color=FRONT_COLOR, width=2, shape="hv"))
    add(refs, "reference architectures", mode="markers+text", text=list(refs["label"]),
        textposition="top center", marker=dict(color="black", symbol="diamond", size=11))
    if cost == "latency" and "latency_unstable" in df:
        unstable = df[(df["state"] == "COMPLETE") & df["latency_unstable"].astype(bool)]
        if len(unstable):
            add(unstable, "latency unstable after re-measuring (not trusted)", mode="markers",
                marker=dict(color="orange", symbol="triangle-up-open", size=14, line=dict(width=2)))
    fig.update_layout(
        title=f"Accuracy vs {OBJECTIVE_LABELS[cost]}: the line is the front of accuracy and "
              f"{OBJECTIVE_LABELS[cost]} ({len(front)} trials)",
        xaxis_title=_axis_title(cost), yaxis_title="top-1 accuracy (%)", height=650,
        legend=dict(orientation="h", y=-0.15), template="plotly_white",
    )
    return fig


def scatter3d_figure(df: pd.DataFrame, axes: Sequence[str], objectives: Sequence[str]) -> go.Figure:
    """Three objectives in 3-D, the front of ``objectives`` highlighted.

    Args:
        df: a trial table.
        axes: the three objectives on x, y and z.
        objectives: the objectives whose front is highlighted.
    """
    objs = parse_objectives(objectives)
    complete = df[(df["state"] == "COMPLETE") & ~df["is_reference"]]
    finite = np.logical_and.reduce([np.isfinite(_values(complete, a)) for a in axes])
    complete = complete[finite]
    on_front = pareto_mask(df, objs).reindex(complete.index, fill_value=False)
    feasible = complete["feasible"]
    refs = df[df["is_reference"] & (df["state"] == "COMPLETE")]
    fig = go.Figure()

    def add(part: pd.DataFrame, name: str, **style: Any) -> None:
        fig.add_trace(go.Scatter3d(
            x=_values(part, axes[0]), y=_values(part, axes[1]), z=_values(part, axes[2]), name=name,
            customdata=_hover_data(part), hovertemplate=_HOVER, **style,
        ))

    add(complete[feasible & ~on_front], "dominated", mode="markers", opacity=0.3,
        marker=dict(color="#1f77b4", size=4))
    add(complete[~feasible], "infeasible", mode="markers", opacity=0.6,
        marker=dict(color="#999999", symbol="x", size=4))
    add(complete[on_front], "Pareto front", mode="markers", marker=dict(color=FRONT_COLOR, size=6))
    add(refs, "reference architectures", mode="markers+text", text=list(refs["label"]),
        marker=dict(color="black", symbol="diamond", size=5))
    fig.update_layout(
        title=f"Objectives in 3-D; red: the front of {_names(objs)} ({int(on_front.sum())} trials)",
        scene=dict(xaxis_title=OBJECTIVE_LABELS[axes[0]], yaxis_title=OBJECTIVE_LABELS[axes[1]],
                   zaxis_title=OBJECTIVE_LABELS[axes[2]]),
        height=750, template="plotly_white",
    )
    return fig


def hypervolume_figure(
    history: pd.DataFrame, objectives: Sequence[str], reference: Mapping[str, float],
    baseline: pd.DataFrame | None = None,
) -> go.Figure:
    """Hypervolume against supernet evaluations, with random sampling on the same supernet beside it.

    Args:
        history: ``hypervolume_history`` output (number, hypervolume) of the search.
        objectives: the objectives the hypervolume is over.
        reference: the reference point used, by objective name.
        baseline: ``hypervolume_history`` of random sampling with the same reference point, if any.
    """
    objs = parse_objectives(objectives)
    units = " x ".join(u or "count" for u in (_UNITS[o] for o in objs))
    fig = go.Figure(go.Scatter(
        x=history["number"] + 1, y=history["hypervolume"], mode="lines+markers", name="search",
        line=dict(shape="hv", color=FRONT_COLOR), hovertemplate="evaluation %{x}<br>hypervolume %{y:.6g}",
    ))
    if baseline is not None and len(baseline):
        fig.add_trace(go.Scatter(
            x=baseline["number"] + 1, y=baseline["hypervolume"], mode="lines+markers",
            name="random sampling (same supernet)", line=dict(shape="hv", color="#7f7f7f", dash="dash"),
            hovertemplate="evaluation %{x}<br>hypervolume %{y:.6g}",
        ))
    directions = ", ".join(f"{_NAMES[o]} ({OBJECTIVES[o]})" for o in objs)
    fig.update_layout(
        title=f"Hypervolume over trials: {directions}"
              f"<br><sup>reference point: {format_reference(reference)}</sup>",
        xaxis_title="supernet evaluations", yaxis_title=f"hypervolume ({units})", height=600,
        template="plotly_white",
    )
    return fig


def mixer_figure(df: pd.DataFrame, objectives: Sequence[str]) -> go.Figure:
    """A heatmap of the mixer each stage chose, one column per front architecture, cheapest first.

    Args:
        df: a trial table.
        objectives: the objectives whose front is shown (ordered by the first minimised one).
    """
    front = pareto_front(df, objectives)
    archs = [parse_arch(a) for a in front["arch"]]
    n_stages = max((len(a.stages) for a in archs), default=0)
    x = [f"#{n}" for n in front["number"]]
    z = np.full((n_stages, len(archs)), np.nan)
    text = [["" for _ in archs] for _ in range(n_stages)]
    hover = [["" for _ in archs] for _ in range(n_stages)]
    # Every registered mixer keeps its colour (its spec's), so that runs can be compared side by side.
    types = mixer_names()
    for j, arch in enumerate(archs):
        for i, stage in enumerate(arch.stages):
            z[i, j] = types.index(stage.mixer.type)
            text[i][j] = stage.mixer.short()
            hover[i][j] = f"trial {front['number'].iloc[j]}, stage {i + 1}: {stage_label(arch, i)}"
    k = len(types)
    # A stepped colour scale: each mixer type owns the band [i/k, (i+1)/k].
    scale = []
    for i, t in enumerate(types):
        color = get_mixer(t).color
        scale += [[i / k, color], [(i + 1) / k, color]]
    fig = go.Figure(go.Heatmap(
        x=x, y=[f"stage {i + 1}" for i in range(n_stages)], z=z, text=text, customdata=hover,
        texttemplate="%{text}", hovertemplate="%{customdata}<extra></extra>", colorscale=scale,
        zmin=-0.5, zmax=k - 0.5, xgap=2, ygap=2,
        colorbar=dict(title="mixer", tickvals=list(range(k)), ticktext=types),
    ))
    minimised = [o for o in parse_objectives(objectives) if OBJECTIVES[o] == "min"]
    order = OBJECTIVE_LABELS[minimised[0]] if minimised else "accuracy"
    fig.update_layout(
        title=f"Mixers along the Pareto front ({len(archs)} architectures, cheapest first by {order})",
        xaxis=dict(title="front architecture (trial number)", type="category"),
        yaxis=dict(autorange="reversed"), height=250 + 60 * n_stages, template="plotly_white",
    )
    return fig


def ranking_figure(ranking: pd.DataFrame, summary: Mapping[str, Any]) -> go.Figure:
    """Supernet-inherited accuracy against standalone accuracy, one point per architecture coloured by its
    stage-1 mixer, with the diagonal; Kendall tau and its interval in the title.

    Args:
        ranking: ``mixnas rank-check``'s table (RUN_DIR/ranking/ranking.parquet).
        summary: its statistics (``kendall_tau``, ``kendall_tau_90``, ``spearman_rho``, ``regret``, ...).
    """
    fig = go.Figure()
    both = pd.concat([ranking["supernet_accuracy"], ranking["standalone_accuracy"]])
    lo, hi = float(both.min()) - 2, float(both.max()) + 2
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="equal accuracy",
                             line=dict(color="#bbbbbb", dash="dash"), hoverinfo="skip"))
    for mixer, part in ranking.groupby("stage1_mixer", sort=True):
        custom = [[int(r.number), html.escape(str(r.summary))] for r in part.itertuples(index=False)]
        fig.add_trace(go.Scatter(
            x=part["supernet_accuracy"], y=part["standalone_accuracy"], mode="markers", name=f"stage 1: {mixer}",
            marker=dict(color=get_mixer(str(mixer)).color if str(mixer) in mixer_names() else "#7f7f7f", size=11),
            customdata=custom,
            hovertemplate="trial %{customdata[0]}<br>%{customdata[1]}<br>supernet %{x:.2f} %<br>"
                          "trained alone %{y:.2f} %<extra></extra>",
        ))
    t_lo, t_hi = summary["kendall_tau_90"]
    fig.update_layout(
        title=f"Kendall tau {summary['kendall_tau']:.2f} (90% CI {t_lo:.2f} to {t_hi:.2f}), Spearman rho "
              f"{summary['spearman_rho']:.2f}, regret {summary['regret']:.1f} points, "
              f"{summary['n']} architectures",
        xaxis_title="top-1 with supernet weights (%)", yaxis_title="top-1 trained from scratch (%)", height=650,
        template="plotly_white", legend=dict(orientation="h", y=-0.15),
    )
    return fig


# ------------------------------------------------------------------------------------------------ pages
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #555; }
"""


def _page(title: str, heading: str, body: str, nav: Sequence[tuple[str, str]]) -> str:
    links = " ".join(f'<a href="{html.escape(href)}">{html.escape(text)}</a>' for href, text in nav)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<nav>{links}</nav>\n<h1>{html.escape(heading)}</h1>\n{body}\n</body>\n</html>\n"
    )


def _figure_html(fig: go.Figure, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=PLOTLY_JS, div_id=div_id, config=_PLOT_CONFIG)


def write_plotly_js(folder: Path) -> Path:
    """Write ``folder/plotly.min.js``, the plotly.js that the installed plotly bundles (``get_plotlyjs``),
    unless it already holds exactly that; returns its path."""
    from plotly.offline import get_plotlyjs

    path = folder / PLOTLY_JS
    js = get_plotlyjs().encode("utf-8")
    if not (path.is_file() and path.stat().st_size == len(js) and path.read_bytes() == js):
        atomic_write_bytes(path, js)
    return path


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="num">{html.escape(c)}</td>' if num else f"<td>{html.escape(c)}</td>"
            for c, num in zip(row, numeric)
        ) + "</tr>\n"
        for row in rows
    )
    return f"<table>\n<tr>{head}</tr>\n{body}</table>"


def versus_html(df: pd.DataFrame, cost: str) -> str:
    """The 'did the search beat hand design' table for one cost (``versus_references``), as HTML."""
    vs = versus_references(df, cost)
    if not len(vs):
        return ""
    unit, spec = ("GFLOPs", ".3g") if cost == "gflops" else ("ms", ".2f")
    rows = []
    for r in vs.itertuples(index=False):
        if r.number < 0:
            verdict = "no searched architecture at this cost"
        elif r.beats:
            verdict = "beaten: more accurate at less cost"
        elif r.difference >= 0:
            verdict = "matched"
        else:
            verdict = f"not reached ({r.difference:+.2f} points)"
        rows.append([r.reference, _fmt(r.ref_accuracy, ".2f"), _fmt(r.ref_cost, spec),
                     "-" if r.number < 0 else str(r.number), _fmt(r.accuracy, ".2f"), _fmt(r.cost, spec),
                     _fmt(r.difference, "+.2f"), verdict])
    header = ["reference", "ref acc %", f"ref {unit}", "best searched trial at <= its cost", "acc %", unit,
              "difference (points)", "verdict"]
    what = "GFLOPs" if cost == "gflops" else "latency (readings flagged unstable left out)"
    return (f"<h2>Search vs the hand-designed references, by {what}</h2>\n"
            f"<p>For each reference (every stage one mixer, at the space's largest sizes; scored, never counted "
            f"as a search result): the most accurate searched architecture, other than the reference's own, "
            f"that costs no more.</p>\n"
            + _html_table(header, rows, [False, True, True, True, True, True, True, False]))


def _reference_dict(objectives: list[str], reference_point: Reference) -> dict[str, float]:
    if isinstance(reference_point, Mapping):
        given = {parse_objectives([k])[0]: float(v) for k, v in reference_point.items()}
    else:
        values = [float(v) for v in np.asarray(reference_point, dtype=float).reshape(-1)]
        if len(values) != len(objectives):
            raise ValueError(
                f"reference_point: {len(values)} values for the objectives {', '.join(objectives)}"
            )
        given = dict(zip(objectives, values))
    missing = [o for o in objectives if o not in given]
    if missing:
        raise ValueError(f"reference_point: no value for objective {missing[0]!r}")
    return given


# ------------------------------------------------------------------------------ the steps of write_pages
# A plot page: its key in PAGE_FILES and PAGE_TITLES, and its body HTML.
_Page = tuple[str, str]
_COSTS = ("gflops", "latency")  # the costs with an accuracy-vs-cost page and a search-vs-references table
_AXES_3D = ("accuracy", "gflops", "latency", "params")  # the 3-D view's axes, in order of preference


def _complete(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["state"] == "COMPLETE"]


def _measured_objectives(df: pd.DataFrame) -> set[str]:
    """The objectives with a finite value in at least one complete trial (references included)."""
    complete = _complete(df)
    return {o for o in OBJECTIVES if np.isfinite(_values(complete, o)).any()}


def _unmeasured_notes(df: pd.DataFrame, objectives: Sequence[str], measured: set[str]) -> list[str]:
    """What the pages leave out because an objective, or latency, was not measured."""
    if not len(_complete(df)):
        return []
    notes = [
        f"{OBJECTIVE_LABELS[o]} was not measured in any complete trial "
        f"(column {objective_column(o)} is empty): left out of the front and the hypervolume"
        + ("; latency plots skipped." if o == "latency" else ".")
        for o in objectives if o not in measured
    ]
    if "latency" not in objectives and "latency" not in measured:
        notes.append("latency was not measured (latency_ms is empty): latency plots skipped.")
    return notes


def _latency_sources(df: pd.DataFrame) -> list[str]:
    """Where the complete trials' latencies came from (``measured: cpu: ...``, a latency table, ...)."""
    return sorted({s for s in _complete(df)["latency_source"] if s})


def _summary(df: pd.DataFrame, objectives: Sequence[str]) -> list[tuple[str, str]]:
    """The index's summary list, before the front: trials by state, references, objectives, latency source."""
    searched = df[~df["is_reference"]]
    counts = searched["state"].value_counts()
    n_infeasible = int(((searched["state"] == "COMPLETE") & ~searched["feasible"]).sum())
    by_state = ", ".join(f"{int(counts.get(s, 0))} {s.lower()}" for s in TRIAL_STATES)
    summary = [
        ("trials", f"{len(searched)} searched: {by_state}; {n_infeasible} complete but infeasible"),
        ("reference architectures", str(int(df["is_reference"].sum()))),
        ("objectives", ", ".join(f"{_NAMES[o]} ({OBJECTIVES[o]})" for o in objectives)),
    ]
    sources = _latency_sources(df)
    if sources:
        summary.append(("latency", "; ".join(sources)))
    return summary


def _hypervolume_reference(
    df: pd.DataFrame, objectives: list[str], used: Sequence[str], reference_point: Reference | None,
) -> dict[str, float]:
    """The reference point over the measured objectives ``used``: the given one, or ``default_reference``."""
    given = default_reference(df, used) if reference_point is None else _reference_dict(objectives, reference_point)
    return {o: given[o] for o in used}


def _front_summary(
    df: pd.DataFrame, objectives: Sequence[str], reference: Mapping[str, float], history: pd.DataFrame,
    base_history: pd.DataFrame | None, reference_point: Reference | None, reference_note: str | None,
) -> list[tuple[str, str]]:
    """The index's summary items about the front: its size, the reference point and where it came from,
    the hypervolume, and random sampling's hypervolume when a baseline was scored."""
    if reference_point is None:
        origin = " (default: accuracy 0 %, 1.1 x the worst feasible value of each cost)"
    else:
        origin = f" ({reference_note})" if reference_note else ""
    summary = [
        ("Pareto front", f"{int(pareto_mask(df, objectives).sum())} architectures"),
        ("reference point", format_reference(reference) + origin),
        ("hypervolume", f"{history['hypervolume'].iloc[-1]:.6g}"),
    ]
    if base_history is not None:
        summary.append(("random sampling", f"hypervolume {base_history['hypervolume'].iloc[-1]:.6g} after "
                        f"{len(base_history)} evaluations on the same supernet"))
    return summary


def _cost_pages(df: pd.DataFrame, used: Sequence[str], measured: set[str]) -> list[_Page]:
    """Accuracy against GFLOPs and against latency, each where accuracy and that cost were measured, with
    the search-vs-references table for that cost."""
    pages = []
    for cost in _COSTS:
        if cost not in measured or "accuracy" not in measured:
            continue
        key = f"accuracy_vs_{cost}"
        fig = scatter_figure(df, cost, used if "accuracy" in used else ["accuracy", cost])
        extra = ""
        if cost == "latency":
            extra = f'<p class="note">latency: {html.escape("; ".join(_latency_sources(df)))}</p>'
        pages.append((key, extra + _figure_html(fig, key) + versus_html(df, cost)))
    return pages


def _axes_3d(used: Sequence[str], measured: set[str]) -> list[str]:
    """The 3-D view's three axes: the search's measured objectives first, then other measured ones; fewer
    than three when fewer were measured."""
    axes = [o for o in _AXES_3D if o in used]
    axes += [o for o in _AXES_3D if o not in axes and o in measured]
    return axes[:3]


def _hypervolume_page(
    history: pd.DataFrame, used: Sequence[str], reference: Mapping[str, float], base_history: pd.DataFrame | None,
) -> _Page:
    fig = hypervolume_figure(history, used, reference, base_history)
    body = (f"<p>Reference point: {html.escape(format_reference(reference))}. Only feasible complete "
            f"searched trials count; maximised objectives are negated, so the volume is the region "
            f"between the front and the reference point.</p>")
    return "hypervolume", body + _figure_html(fig, "hypervolume")


def _ranking_page(table: pd.DataFrame, stats: Mapping[str, Any]) -> _Page:
    body = (f"<p>{len(table)} searched architectures trained from scratch for {int(table['epochs'].iloc[0])} "
            f"epochs (mixnas rank-check); top-3 overlap {stats['top3_overlap']}/3, standalone accuracies span "
            f"{stats['standalone_span']:.1f} points.")
    if stats.get("cost_tau") is not None and math.isfinite(stats["cost_tau"]):
        body += f" Ranking by GFLOPs alone reaches Kendall tau {stats['cost_tau']:.2f} (the cost baseline)."
    if stats.get("seed_agreement_tau") is not None:
        body += f" Two standalone seeds agree with each other at Kendall tau {stats['seed_agreement_tau']:.2f}."
    if stats.get("noise_ceiling_tau") is not None:
        body += (f" Noise ceiling: a perfect proxy would reach about tau {stats['noise_ceiling_tau']:.2f} "
                 "against the seed-averaged accuracies.")
    body += "</p>"
    return "ranking", body + _figure_html(ranking_figure(table, stats), "ranking")


def _write_plot_pages(out: Path, pages: Sequence[_Page], title: str, nav: Sequence[tuple[str, str]]) -> None:
    """Write the plot pages and the plotly.js they load, and remove what an earlier call left that this
    one did not write."""
    if pages:  # before the pages that load it
        write_plotly_js(out)
    else:  # no plot page left to load it
        (out / PLOTLY_JS).unlink(missing_ok=True)
    for key, body in pages:
        page = _page(f"{PAGE_TITLES[key]} - {title}", f"{title}: {PAGE_TITLES[key]}", body, nav)
        atomic_write_text(out / PAGE_FILES[key], page)
    # A page from an earlier call (latency measured then, not now) would contradict the new index.
    written = {PAGE_FILES[key] for key, _ in pages}
    for file in PAGE_FILES.values():
        if file not in written:
            (out / file).unlink(missing_ok=True)


def _index_tables(df: pd.DataFrame, front_objectives: Sequence[str] | None, measured: set[str]) -> list[str]:
    """The index's tables: the Pareto front of ``front_objectives`` (when there is a front), search vs the
    references for each measured cost, and the references' own objectives."""
    tables = []
    if front_objectives:
        header, rows = table_rows(pareto_records(df, front_objectives))
        numeric = [i == 0 or i >= len(header) - 4 for i in range(len(header))]
        tables.append(f"<h2>Pareto front ({html.escape(_names(front_objectives))}), cheapest first</h2>\n"
                      + _html_table(header, rows, numeric))
    tables += [versus_html(df, cost) for cost in _COSTS if cost in measured]
    refs = df[df["is_reference"] & (df["state"] == "COMPLETE")]
    if len(refs):
        rows = [
            [r.label, _fmt(r.accuracy, ".2f"),
             format_gflops(_finite(r.gflops), _finite(r.gflops_min), _finite(r.gflops_max)),
             _fmt(float(r.params) / 1e6, ".3f"), _fmt(r.latency_ms, ".2f")]
            for r in refs.itertuples(index=False)
        ]
        header = ["reference", "acc %", "GFLOPs", "params M", "latency ms"]
        tables.append(f"<h2>Reference architectures</h2>\n{_html_table(header, rows, [False] + [True] * 4)}")
    return tables


def _index_body(
    summary: Sequence[tuple[str, str]], searched_complete: bool, pages: Sequence[_Page], notes: Sequence[str],
    tables: Sequence[str],
) -> str:
    """The index: the summary, links to the plot pages, the notes, then the tables."""
    items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>\n" for k, v in summary)
    parts = [f"<ul>\n{items}</ul>"]
    if not searched_complete:
        parts.append("<p><b>No complete trials yet.</b></p>")
    if pages:
        links = "".join(f'<li><a href="{PAGE_FILES[k]}">{html.escape(PAGE_TITLES[k])}</a></li>\n' for k, _ in pages)
        parts.append(f"<h2>Plots</h2>\n<ul>\n{links}</ul>")
    if notes:
        parts.append("<h2>Notes</h2>\n<ul>\n"
                     + "".join(f'<li class="note">{html.escape(n)}</li>\n' for n in notes) + "</ul>")
    return "\n".join(parts + list(tables))


def write_pages(
    df: pd.DataFrame,
    out_dir: str | Path,
    objectives: str | Sequence[str] = ("accuracy", "gflops", "latency"),
    reference_point: Reference | None = None,
    title: str = "mixnas search results",
    ranking: tuple[pd.DataFrame, Mapping[str, Any]] | None = None,
    reference_note: str | None = None,
    baseline: pd.DataFrame | None = None,
) -> Path:
    """Write the results pages (see the module docstring) and return the path of ``index.html``.

    Objectives with no measured value in any complete trial (latency on a run that did not time
    models) are left out of the front and the hypervolume, and their plots are skipped; the index
    says so. A table with no complete trials gives an index that says so, and no plots.

    Args:
        df: a trial table (``mixnas.results.load_trials``).
        out_dir: the folder to write into; created if missing.
        objectives: the search's objectives, names from ``OBJECTIVES`` (or ``"accuracy,gflops"``).
        reference_point: the hypervolume's reference point, by objective name or in objective order,
            in the objectives' own units; ``default_reference`` when None.
        title: the heading of every page.
        ranking: a ranking check's table and summary (``mixnas.search.ranking.load_ranking``), drawn on
            its own page when given.
        reference_note: where ``reference_point`` came from (shown beside it).
        baseline: a trial table of random sampling on the same supernet (``mixnas.search.baseline``),
            drawn on the hypervolume page beside the search.
    """
    df = check_trials(df)
    objs = parse_objectives(objectives)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    measured = _measured_objectives(df)
    used = [o for o in objs if o in measured]  # the objectives of the front and the hypervolume
    searched_complete = bool(((df["state"] == "COMPLETE") & ~df["is_reference"]).any())
    has_front = bool(used) and bool(candidates(df, used).any())
    notes = _unmeasured_notes(df, objs, measured)
    summary = _summary(df, used or objs)
    pages = _cost_pages(df, used, measured) if searched_complete else []

    if has_front:
        reference = _hypervolume_reference(df, objs, used, reference_point)
        history = hypervolume_history(df, used, reference)
        base_history = None
        if baseline is not None and len(baseline):
            base_history = hypervolume_history(check_trials(baseline), used, reference)
        summary += _front_summary(df, used, reference, history, base_history, reference_point, reference_note)
        axes = _axes_3d(used, measured)
        if len(axes) == 3:
            pages.append(("objectives_3d", _figure_html(scatter3d_figure(df, axes, used), "objectives_3d")))
        else:
            notes.append("The 3-D view needs three measured objectives; skipped.")
        pages.append(_hypervolume_page(history, used, reference, base_history))
        pages.append(("mixers", _figure_html(mixer_figure(df, used), "mixers")))
    elif searched_complete:
        notes.append("No feasible complete trial yet: no Pareto front and no hypervolume.")

    if ranking is not None:
        pages.append(_ranking_page(*ranking))
        stats = ranking[1]
        summary.append(("ranking check", f"Kendall tau {stats['kendall_tau']:.2f} over {stats['n']} architectures"))

    nav = [("index.html", "index")] + [(PAGE_FILES[k], PAGE_TITLES[k]) for k, _ in pages]
    _write_plot_pages(out, pages, title, nav)
    tables = _index_tables(df, used if has_front else None, measured)
    body = _index_body(summary, searched_complete, pages, notes, tables)
    index = out / "index.html"
    atomic_write_text(index, _page(title, title, body, nav))
    return index
