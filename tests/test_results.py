"""The trial store, Pareto fronts, hypervolume, the Pareto table and the plotly pages."""

from __future__ import annotations

import itertools
import json
import os
import re
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from browser import find_chromium, render_page, screenshot
from plotly.offline import get_plotlyjs, get_plotlyjs_version
from shipped import shipped_space

from mixnas.results import (
    TRIAL_COLUMNS,
    ResultsError,
    default_reference,
    hypervolume,
    hypervolume_history,
    load_trials,
    non_dominated_rank,
    objective_column,
    pareto_front,
    pareto_mask,
    pareto_records,
    pareto_table,
    save_trials,
    write_pages,
)
from mixnas.results.pages import PAGE_FILES, PLOTLY_JS, scatter3d_figure, scatter_figure
from mixnas.search_space import ArchConfig
from mixnas.trials import empty_trials

DEMO_SPACE = Path(__file__).resolve().parents[1] / "mixnas" / "configs" / "spaces" / "demo.yaml"
OBJS = ["accuracy", "gflops", "latency"]
FAILED, INFEASIBLE = (4, 17), (8, 21)


def _row(number: int, arch: ArchConfig, rng: np.random.Generator, **over: object) -> dict:
    gflops = float(rng.uniform(0.01, 0.12))
    dynamic = any(s.mixer.type == "dge" for s in arch.stages)
    row = dict(
        number=number, state="COMPLETE", arch_id=arch.arch_id, arch=arch.canonical_json(),
        summary=arch.summary(), accuracy=float(np.clip(60 + 250 * gflops + rng.normal(0, 4), 0, 100)),
        gflops=gflops, gflops_min=gflops * (0.8 if dynamic else 1.0),
        gflops_max=gflops * (1.2 if dynamic else 1.0),
        params=int(rng.integers(50_000, 900_000)), latency_ms=float(2 + 40 * gflops + rng.uniform(0, 2)),
        latency_p90_ms=0.0, latency_source="measured: cpu: test cpu (2 threads), batch 1",
        eval_seconds=float(rng.uniform(1, 3)), feasible=True, failure_reason="", backend="optuna",
        is_reference=False, label="", worker="", latency_unstable=False,
    )
    row["latency_p90_ms"] = row["latency_ms"] * 1.1
    row.update(over)
    return row


def make_trials(n: int = 30, seed: int = 0) -> pd.DataFrame:
    """Real architectures from the demo space with made-up objectives: a couple of failures, a couple
    of infeasible trials, three references."""
    space = shipped_space(DEMO_SPACE)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = _row(i, space.sample(i), rng)
        if i in FAILED:
            row.update(state="FAIL", accuracy=np.nan, latency_ms=np.nan, latency_p90_ms=np.nan,
                       feasible=False, failure_reason="RuntimeError: out of memory")
        if i in INFEASIBLE:
            row.update(feasible=False, failure_reason="latency above the 5 ms budget")
        rows.append(row)
    for j, mixer in enumerate(["window_attn", "dwconv", "dge"]):
        rows.append(_row(n + j, space.largest(mixer), rng, is_reference=True, label=f"all {mixer}"))
    return pd.DataFrame(rows, columns=TRIAL_COLUMNS)


@pytest.fixture(scope="module")
def trials() -> pd.DataFrame:
    return make_trials()


# ----------------------------------------------------------------------------------------------- store
def test_trial_columns_are_the_contract() -> None:
    assert TRIAL_COLUMNS == [
        "number", "state", "arch_id", "arch", "summary", "accuracy", "gflops", "gflops_min", "gflops_max",
        "params", "latency_ms", "latency_p90_ms", "latency_source", "latency_unstable", "eval_seconds", "feasible",
        "failure_reason", "backend", "is_reference", "label", "worker",
    ]


def test_save_load_round_trip_parquet_and_csv(trials: pd.DataFrame, tmp_path: Path) -> None:
    save_trials(trials, tmp_path / "run")
    assert (tmp_path / "run" / "trials.parquet").is_file() and (tmp_path / "run" / "trials.csv").is_file()
    from_parquet = load_trials(tmp_path / "run")
    pd.testing.assert_frame_equal(from_parquet, trials, check_dtype=False)
    (tmp_path / "run" / "trials.parquet").unlink()
    from_csv = load_trials(tmp_path / "run")
    # The CSV fallback restores the same dtypes: "" strings, bools, NaN accuracies, int params.
    pd.testing.assert_frame_equal(from_csv, from_parquet, check_exact=False, rtol=1e-12)
    assert from_csv["failure_reason"].iloc[0] == ""
    assert from_csv["feasible"].dtype == bool and from_csv["params"].dtype == np.int64
    assert np.isnan(from_csv.loc[from_csv["number"] == FAILED[0], "accuracy"]).all()


def test_load_errors_name_the_path(trials: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="no such run directory"):
        load_trials(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match=r"empty: no trials.parquet or trials.csv"):
        load_trials(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    trials.drop(columns=["latency_ms"]).to_csv(tmp_path / "bad" / "trials.csv", index=False)
    with pytest.raises(ResultsError, match=r"bad/trials.csv: missing column 'latency_ms'") as e:
        load_trials(tmp_path / "bad")
    assert "\n" not in str(e.value)
    with pytest.raises(ResultsError, match="'state' has 'DONE'; allowed: COMPLETE, FAIL, RUNNING, PRUNED"):
        save_trials(trials.assign(state="DONE"), tmp_path / "x")


# ---------------------------------------------------------------------------------------------- fronts
def test_objective_names() -> None:
    assert objective_column("latency") == "latency_ms" and objective_column("flops") == "gflops"
    with pytest.raises(ValueError, match="'energy' is unknown; allowed: accuracy, gflops, params, latency"):
        objective_column("energy")


def test_non_dominated_rank_by_hand() -> None:
    # (accuracy max, gflops min)
    pts = np.array([[80, 1.0], [90, 2.0], [90, 2.0], [85, 2.0], [70, 1.5], [95, 4.0], [60, 5.0]])
    rank = non_dominated_rank(pts, ["max", "min"])
    # Duplicates [90, 2] are both on the front; [85, 2] is beaten by [90, 2]; [70, 1.5] by [80, 1].
    assert rank.tolist() == [0, 0, 0, 1, 1, 0, 2]


def test_pareto_mask_matches_optuna_best_trials(trials: pd.DataFrame) -> None:
    for objs in (["accuracy", "gflops"], OBJS, ["accuracy", "gflops", "params", "latency"]):
        mask = pareto_mask(trials, objs)
        assert not mask[trials["is_reference"] | ~trials["feasible"] | (trials["state"] != "COMPLETE")].any()
        ok = (trials["state"] == "COMPLETE") & trials["feasible"] & ~trials["is_reference"]
        study = optuna.create_study(directions=["maximize" if o == "accuracy" else "minimize" for o in objs])
        numbers = []
        for _, row in trials[ok].iterrows():
            values = [float(row[objective_column(o)]) for o in objs]
            study.add_trial(optuna.trial.create_trial(values=values, params={}, distributions={}))
            numbers.append(int(row["number"]))
        expected = sorted(numbers[t.number] for t in study.best_trials)
        assert sorted(trials.loc[mask, "number"]) == expected


def test_pareto_front_is_sorted_by_cost(trials: pd.DataFrame) -> None:
    front = pareto_front(trials, ["accuracy", "gflops"])
    assert front["gflops"].is_monotonic_increasing
    # On a 2-objective front a costlier point must also be more accurate.
    assert front["accuracy"].is_monotonic_increasing
    assert set(front["number"]) == set(trials.loc[pareto_mask(trials, "accuracy,gflops"), "number"])


# ----------------------------------------------------------------------------------------- hypervolume
def test_hypervolume_2d_by_hand() -> None:
    # Staircase of rectangles to the reference (accuracy 60, 4 GFLOPs): 30*1 + 20*1 + 10*1.
    pts = np.array([[90, 3.0], [80, 2.0], [70, 1.0]])
    assert hypervolume(pts, ["max", "min"], [60, 4]) == pytest.approx(60.0)
    # A dominated point, a duplicate and points at or beyond the reference add nothing.
    more = np.vstack([pts, [[75, 2.5], [90, 3.0], [60, 0.5], [99, 4.0], [50, 1.0]]])
    assert hypervolume(more, ["max", "min"], [60, 4]) == pytest.approx(60.0)
    assert hypervolume(np.zeros((0, 2)), ["max", "min"], [60, 4]) == 0.0


def test_hypervolume_3d_by_hand() -> None:
    # Inclusion-exclusion over boxes to the reference (1, 1, 1): A 0.5, B 0.25, C 0.25,
    # pairwise 0.125 each, all three 0.0625 -> 0.6875.
    pts = np.array([[0.5, 0, 0], [0, 0.5, 0.5], [0, 0, 0.75]])
    assert hypervolume(pts[:2], ["min"] * 3, [1, 1, 1]) == pytest.approx(0.625)
    assert hypervolume(pts, ["min"] * 3, [1, 1, 1]) == pytest.approx(0.6875)
    # The same with accuracy maximised: negating the first column and the reference changes nothing.
    flipped = pts * [-1, 1, 1]
    assert hypervolume(flipped, ["max", "min", "min"], [-1, 1, 1]) == pytest.approx(0.6875)


@pytest.mark.parametrize("dims, side, n", [(2, 12, 15), (3, 8, 12), (4, 5, 8)])
def test_hypervolume_against_grid_counting(dims: int, side: int, n: int) -> None:
    # Integer points: the dominated region is a union of unit cells, counted exactly.
    rng = np.random.default_rng(dims)
    pts = rng.integers(0, side, size=(n, dims)).astype(float)
    ref = np.full(dims, float(side))
    cells = np.array(list(itertools.product(range(side), repeat=dims)), dtype=float)
    covered = (pts[None, :, :] <= cells[:, None, :]).all(-1).any(-1).sum()
    assert hypervolume(pts, ["min"] * dims, ref) == pytest.approx(float(covered))


def test_hypervolume_history_matches_optuna_and_is_monotone(trials: pd.DataFrame) -> None:
    ref = default_reference(trials, OBJS)
    ok = (trials["state"] == "COMPLETE") & trials["feasible"] & ~trials["is_reference"]
    assert ref["accuracy"] == 0.0
    assert ref["latency"] == pytest.approx(1.1 * trials.loc[ok, "latency_ms"].max())
    history = hypervolume_history(trials, OBJS, ref)
    searched = trials[~trials["is_reference"]]
    assert history["number"].tolist() == sorted(searched["number"])
    assert (np.diff(history["hypervolume"]) >= 0).all()
    points = trials.loc[ok, ["accuracy", "gflops", "latency_ms"]].to_numpy()
    final = hypervolume(points, ["max", "min", "min"], [ref[o] for o in OBJS])
    assert history["hypervolume"].iloc[-1] == pytest.approx(final)

    # optuna's public plot computes the same history from a study of the feasible trials.
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for _, row in trials[ok].iterrows():
        study.add_trial(optuna.trial.create_trial(
            values=[row["accuracy"], row["gflops"], row["latency_ms"]], params={}, distributions={}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # plot_hypervolume_history is marked experimental
        fig = optuna.visualization.plot_hypervolume_history(study, [ref[o] for o in OBJS])
    ours = history.set_index("number").loc[trials.loc[ok, "number"].sort_values(), "hypervolume"]
    np.testing.assert_allclose(ours.to_numpy(), np.asarray(fig.data[0].y, dtype=float), rtol=1e-9)


# ----------------------------------------------------------------------------------------------- table
def test_pareto_table_and_records(trials: pd.DataFrame) -> None:
    front = pareto_front(trials, OBJS)
    text = pareto_table(trials, OBJS)
    lines = text.splitlines()
    assert lines[0].startswith("Pareto front (accuracy, gflops, latency)")
    assert "stage 1" in lines[1] and "latency ms" in lines[1]
    assert [int(line.split()[0]) for line in lines[3:]] == front["number"].tolist()
    arch = ArchConfig.from_dict(json.loads(front["arch"].iloc[0]))
    s = arch.stages[0]
    assert f"{s.mixer.short()} d{s.depth} c{s.dim} h{s.heads} r{s.mlp_ratio:g} {s.ffn.short()}" in lines[3]
    records = pareto_records(trials, OBJS)
    json.dumps(records, allow_nan=False)
    assert [r["number"] for r in records] == front["number"].tolist()
    assert records[0]["arch"] == arch.to_dict(with_name=False)
    assert "empty" in pareto_table(empty_trials(), OBJS)


# ----------------------------------------------------------------------------------------------- pages
def fake_ranking(trials: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """A ranking check's table and summary over eight of the trials (standalone accuracies made up)."""
    from mixnas.search.ranking import mixers_of, ranking_statistics

    picked = trials[(trials["state"] == "COMPLETE") & ~trials["is_reference"]].head(8)
    table = pd.DataFrame({
        "arch_id": picked["arch_id"], "number": picked["number"], "summary": picked["summary"],
        "arch": picked["arch"], "stage1_mixer": [mixers_of(a)[0] for a in picked["arch"]],
        "supernet_accuracy": picked["accuracy"], "gflops": picked["gflops"],
        "standalone_accuracy": picked["accuracy"] + 20 + np.arange(len(picked)), "epochs": 15,
    })
    return table, ranking_statistics(table["supernet_accuracy"], table["standalone_accuracy"],
                                     list(table["stage1_mixer"]))


@pytest.fixture(scope="module")
def pages(trials: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pages(trials, tmp_path_factory.mktemp("pages"), OBJS, title="test run", ranking=fake_ranking(trials))


def _front_trace(fig) -> list[int]:
    (trace,) = [t for t in fig.data if t.name == "Pareto front"]
    return sorted(int(c[0]) for c in trace.customdata)


def test_pages_are_written_linked_and_offline(trials: pd.DataFrame, pages: Path) -> None:
    index = pages.read_text()
    # One plotly.js for the folder, the one the installed plotly bundles.
    assert [p.name for p in pages.parent.glob("*.js")] == [PLOTLY_JS]
    assert (pages.parent / PLOTLY_JS).read_bytes() == get_plotlyjs().encode()
    for name in PAGE_FILES.values():
        page = pages.parent / name
        assert page.is_file() and f'href="{name}"' in index
        text = page.read_text()
        # plotly.js comes from the folder's copy, by a relative path; no script from anywhere else, and
        # no page embeds it (it is 4.8 MB).
        assert re.findall(r"<script[^>]*\bsrc=\"([^\"]*)\"", text) == [PLOTLY_JS], name
        assert "plotly.js v" not in text and page.stat().st_size < 1_000_000, name
    ref = default_reference(trials, OBJS)
    assert "no complete trials" not in index.lower()
    assert f"GFLOPs {ref['gflops']:.4g}" in index and "reference point" in index
    for number in pareto_front(trials, OBJS)["number"]:
        assert f'<td class="num">{number}</td>' in index
    assert "all window_attn" in index


def test_figures_highlight_the_front(trials: pd.DataFrame) -> None:
    plane = scatter_figure(trials, "gflops", OBJS)
    assert _front_trace(plane) == sorted(trials.loc[pareto_mask(trials, ["accuracy", "gflops"]), "number"])
    cube = scatter3d_figure(trials, OBJS, OBJS)
    assert _front_trace(cube) == sorted(trials.loc[pareto_mask(trials, OBJS), "number"])
    (refs,) = [t for t in plane.data if t.name == "reference architectures"]
    assert list(refs.text) == ["all window_attn", "all dwconv", "all dge"]


def test_pages_without_latency(trials: pd.DataFrame, tmp_path: Path) -> None:
    no_latency = trials.assign(latency_ms=np.nan, latency_p90_ms=np.nan, latency_source="")
    write_pages(trials, tmp_path, OBJS)  # an earlier call's latency page must not survive
    index = write_pages(no_latency, tmp_path, OBJS)
    assert not (tmp_path / PAGE_FILES["accuracy_vs_latency"]).exists()
    assert (tmp_path / PAGE_FILES["accuracy_vs_gflops"]).is_file()
    text = index.read_text()
    assert "latency plots skipped" in text and PAGE_FILES["accuracy_vs_latency"] not in text


def test_plotly_js_is_written_once_per_folder(trials: pd.DataFrame, tmp_path: Path) -> None:
    write_pages(trials, tmp_path, OBJS)
    js = tmp_path / PLOTLY_JS
    first = js.stat()
    write_pages(trials, tmp_path, OBJS)  # the same plotly.js: left as it is (no rewrite)
    assert (js.stat().st_ino, js.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    js.write_text("// another plotly.js\n")  # an older plotly's copy is replaced
    write_pages(trials, tmp_path, OBJS)
    assert js.read_bytes() == get_plotlyjs().encode()
    assert not list(tmp_path.glob(f".{PLOTLY_JS}.*"))  # no temporary left beside it
    write_pages(empty_trials(), tmp_path, OBJS)  # no plot page left to load it
    assert not js.exists()


@pytest.mark.parametrize("case", ["empty", "unfinished"])
def test_pages_with_no_complete_trials(trials: pd.DataFrame, tmp_path: Path, case: str) -> None:
    df = empty_trials() if case == "empty" else trials[~trials["is_reference"]].assign(state="RUNNING")
    index = write_pages(df, tmp_path, OBJS)
    assert "No complete trials yet" in index.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]


# ---------------------------------------------------------------------------------------- in a browser
# CI installs Chromium (scripts/ensure-chromium) and sets MIXNAS_REQUIRE_BROWSER, so there a missing
# browser fails the run instead of skipping the check.
needs_chromium = pytest.mark.skipif(
    find_chromium() is None and not os.environ.get("MIXNAS_REQUIRE_BROWSER"), reason="Chromium is not installed"
)


@needs_chromium
@pytest.mark.slow
def test_pages_render_in_chromium(trials: pd.DataFrame, pages: Path) -> None:
    plane_front = sorted(trials.loc[pareto_mask(trials, ["accuracy", "gflops"]), "number"])
    full_front = sorted(trials.loc[pareto_mask(trials, OBJS), "number"])
    # Chromium spends most of its time waiting, so a few at a time cut the wall time on 2 cores.
    with ThreadPoolExecutor(max_workers=3) as pool:
        rendered = dict(zip(["index", *PAGE_FILES], pool.map(
            render_page, [pages, *(pages.parent / name for name in PAGE_FILES.values())])))
    index = rendered["index"]
    assert index.errors == [] and "<table>" in index.dom
    shared = (pages.parent / PLOTLY_JS).resolve().as_uri()
    for key, name in PAGE_FILES.items():
        page = rendered[key]
        assert page.errors == [], f"{name}: {page.errors}"
        # The Plotly global comes from the folder's one plotly.min.js, and the plot drew from it.
        assert page.scripts == [shared] and page.plotly == get_plotlyjs_version(), (name, page.scripts)
        (plot,) = page.plots
        assert plot["svg"] > 0, name
        if key == "objectives_3d":
            assert plot["gl"] > 0, "the 3-D scene drew no WebGL canvas"
        fronts = [t["points"] for t in plot["traces"] if t["name"] == "Pareto front"]
        if key == "accuracy_vs_gflops":
            assert sorted(fronts[0]) == plane_front
        if key == "objectives_3d":
            assert sorted(fronts[0]) == full_front
        if key == "mixers":
            assert plot["traces"][0]["type"] == "heatmap" and 'class="hm"' in page.dom
        if key == "ranking":
            points = [n for t in plot["traces"] if t["name"].startswith("stage 1:") for n in t["points"]]
            assert sorted(points) == sorted(fake_ranking(trials)[0]["number"])
            assert "Kendall tau" in page.dom


@needs_chromium
@pytest.mark.slow
def test_screenshot_of_accuracy_vs_gflops(pages: Path, tmp_path: Path) -> None:
    png = screenshot(pages.parent / PAGE_FILES["accuracy_vs_gflops"], tmp_path / "shot.png", size=(1200, 800))
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1200, 800)
    from PIL import Image  # torchvision's dependency

    colours = Image.open(png).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot is (nearly) blank"


def test_a_forged_arch_in_the_trial_table_is_one_line(tmp_path: Path) -> None:
    from mixnas.errors import ResultsError
    from mixnas.results.table import parse_arch

    for forged in ("[" * 100_000 + "]" * 100_000, '{"stages": 5}', "not json"):
        with pytest.raises(ResultsError, match="'arch' value is not an architecture") as info:
            parse_arch(forged)
        assert "\n" not in str(info.value)


def test_a_deeply_nested_latency_table_is_one_line(tmp_path: Path) -> None:
    from mixnas.errors import LUTError
    from mixnas.search.latency_lut import LatencyTable

    path = tmp_path / "lut.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(LUTError, match="nested too deeply"):
        LatencyTable.load(path)


def test_export_names_stay_within_file_name_limits() -> None:
    """A forged or very deep table row cannot build a file name the file system refuses (255 bytes)."""
    from dataclasses import replace

    from mixnas.packaged import load_arch
    from mixnas.results.export import MAX_NAME, export_name

    base = load_arch("swin_t")
    deep = replace(base, stages=base.stages * 20)  # 80 stages: the mixers alone would take 320 characters
    row = pd.Series({"number": 123456789, "accuracy": 12.3456, "gflops": float("nan")})
    name = export_name(row, deep)
    assert len(name) <= MAX_NAME and name.endswith(deep.arch_id) and name.startswith("trial123456789_acc12.3_gfNA_")
    assert export_name(row, base) == "trial123456789_acc12.3_gfNA_win-win-win-win"
