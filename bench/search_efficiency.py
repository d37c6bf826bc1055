"""How fast each search reaches a good front, on one trained demo supernet.

    .venv/bin/python bench/search_efficiency.py --run runs/demo [--budget 40] [--seeds 0 1 2] [--long 3000]

On the supernet of RUN (a finished ``mixnas run --preset demo``), with the objectives accuracy and GFLOPs:

* each method searches ``--budget`` evaluations with each seed: random sampling, plain NSGA-II (population
  sized to the budget), TPE, NSGA-II with the warm start, the guided sampler without the warm start, and
  the default (guided with the warm start);
* one long search (``--long`` evaluations, NSGA-II with a population of 50 and the warm start) and the union
  of every architecture any run scored give the best known front;
* the hypervolume of each run's front after 10, 20, ... evaluations, against a fixed reference point from
  the space (0% accuracy, 1.1x the space's costliest GFLOPs, exact from ``CostTable``), as a share of the
  best known front's;
* for each hand-designed reference (every stage one mixer at the largest sizes), whether the run found
  another architecture at no more than its GFLOPs with at least its accuracy minus 0.5 points;
* the accuracy predictor's Kendall tau on held-out supernet scores (fitted on a run's first ``--budget``
  scored candidates, scored on the long search's other architectures), and against the standalone
  accuracies of ``docs/benchmarks/ranking_demo.csv`` where those architectures are in the space.

Every run shares one evaluator (scores are deterministic and cached), so a method's wall time is estimated
as its sampler's own time plus the recorded evaluation time of the architectures it asked for. Work files
go to ``RUN/bench_search/``; the command resumes. Table: ``docs/benchmarks/search.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mixnas.results.pareto import hypervolume, hypervolume_history, pareto_mask  # noqa: E402
from mixnas.results.table import versus_references  # noqa: E402
from mixnas.run_dir import RunDir  # noqa: E402
from mixnas.search import CandidateEvaluator, EvalSettings, SearchSettings  # noqa: E402
from mixnas.search._shared import reference_rows  # noqa: E402
from mixnas.search.cost_table import CostTable  # noqa: E402
from mixnas.search.encoding import ArchCodec  # noqa: E402
from mixnas.search.optuna_runner import run_optuna_search  # noqa: E402
from mixnas.search.predictor import AccuracyPredictor, kendall_tau  # noqa: E402
from mixnas.search_space import ArchConfig  # noqa: E402

OBJECTIVES = ("accuracy", "gflops")
DIRECTIONS = ["max", "min"]
# name -> (sampler, warm start)
METHODS = {
    "random": ("random", False),
    "nsga2": ("nsga2", False),
    "tpe": ("tpe", False),
    "nsga2+warm": ("nsga2", True),
    "guided (no warm start)": ("guided", False),
    "default: guided+warm": ("guided", True),
}
TOLERANCE = 0.5  # accuracy points a cheaper architecture may lose against a reference


def _scoring_dir(run: Path, work: Path) -> Path:
    """A run directory for the bench's evaluator: the supernet's files, its own cache and settings."""
    scoring = work / "scoring"
    scoring.mkdir(parents=True, exist_ok=True)
    for name in (RunDir.SPACE, RunDir.TRAIN_CONFIG, RunDir.SUPERNET_WEIGHTS):
        if not (scoring / name).exists():
            shutil.copy2(run / name, scoring / name)
    return scoring


def _search(evaluator: CandidateEvaluator, out: Path, sampler: str, warm: bool, trials: int, seed: int,
            population: int | None = None) -> tuple[pd.DataFrame, float]:
    """Run (or resume) one search; returns its table and its sampler's own seconds (total minus scoring)."""
    settings = SearchSettings(trials=trials, objectives=OBJECTIVES, sampler=sampler, seed=seed, references=False,
                              warm_start=warm)
    before = evaluator.seconds_inside
    t0 = time.perf_counter()
    if population is not None:
        import optuna

        from mixnas.search import optuna_runner

        original = optuna_runner.make_sampler

        def make(name, trials, seed, **kw):  # the long search's population (not the budget's)
            if name == "nsga2":
                return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
            return original(name, trials, seed, **kw)

        optuna_runner.make_sampler = make
        try:
            table = run_optuna_search(out, settings, evaluator, progress=True)
        finally:
            optuna_runner.make_sampler = original
    else:
        table = run_optuna_search(out, settings, evaluator, progress=False)
    elapsed = time.perf_counter() - t0
    sampler_s = max(0.0, elapsed - (evaluator.seconds_inside - before))
    # A finished run resumed by a later invocation does nothing: keep the time its own invocation measured.
    timing = out / "bench_timing.json"
    if timing.is_file():
        return table, float(json.loads(timing.read_text())["sampler_s"])
    timing.write_text(json.dumps({"sampler_s": sampler_s}))
    return table, sampler_s


def _cached_table(evaluator: CandidateEvaluator) -> pd.DataFrame:
    """Every architecture in the evaluator's cache scored under its settings, as trial-table rows."""
    from mixnas.search._shared import trial_record
    from mixnas.trials import TRIAL_COLUMNS, check_trials

    rows = []
    for path in sorted(evaluator.cache_dir.glob("*.json")):
        entry = json.loads(path.read_text())
        if entry.get("settings") != evaluator.settings.cache_key():
            continue
        arch = ArchConfig.from_dict(entry["arch"])
        rows.append(trial_record(len(rows), "COMPLETE", arch, entry["result"], True, "", "cache"))
    return check_trials(pd.DataFrame(rows, columns=TRIAL_COLUMNS))


class _TimedEvaluator(CandidateEvaluator):
    """The evaluator, counting the seconds spent inside ``evaluate`` (cache hits included)."""

    seconds_inside = 0.0

    def evaluate(self, arch: ArchConfig) -> dict:
        t0 = time.perf_counter()
        try:
            return super().evaluate(arch)
        finally:
            self.seconds_inside += time.perf_counter() - t0


def _front_hv(table: pd.DataFrame, ref: list[float]) -> float:
    ok = table[pareto_mask(table, list(OBJECTIVES))]
    return hypervolume(ok[["accuracy", "gflops"]].to_numpy(float), DIRECTIONS, ref) if len(ok) else 0.0


def _beats(table: pd.DataFrame, refs: pd.DataFrame) -> dict[str, dict]:
    """Per reference row of ``refs``: the pages' comparison (``versus_references``, by GFLOPs) of the run's
    searched architectures against it, with the target's tolerance applied."""
    vs = versus_references(pd.concat([table, refs], ignore_index=True), "gflops")
    return {r.reference: {"diff": float(r.difference), "ok": bool(r.difference >= -TOLERANCE),
                          "strict": bool(r.beats), "best_gflops": float(r.cost)} for r in vs.itertuples(index=False)}


def scoring_breakdown(evaluator: CandidateEvaluator, n: int = 20, seed: int = 7) -> dict[str, float]:
    """Mean seconds of each part of scoring one candidate (n random architectures, nothing cached): the
    supernet slice and BatchNorm recalibration, top-1 on the validation split, FLOPs (traced for DGE,
    from the cost table otherwise). Tells what successive halving (scoring a validation slice first)
    could save at most."""
    from mixnas.search.cost import is_input_dependent, model_gflops
    from mixnas.training import evaluate_accuracy

    rng = np.random.default_rng(seed)
    parts = {"prepare_s": [], "validation_s": [], "flops_s": []}
    for _ in range(n):
        arch = evaluator.space.sample(int(rng.integers(2**31)))
        t0 = time.perf_counter()
        model = evaluator.prepare(arch)
        t1 = time.perf_counter()
        evaluate_accuracy(model, evaluator.val_loader, evaluator.device)
        t2 = time.perf_counter()
        if is_input_dependent(arch):
            model_gflops(model.cpu().eval(), arch, evaluator.flops_loader)
        else:
            evaluator.cost_table.arch_cost(arch)
        t3 = time.perf_counter()
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
            parts[k].append(v)
    return {k: float(np.mean(v)) for k, v in parts.items()}


def render(r: dict) -> str:
    """The Markdown table of one benchmark result (the JSON this script writes)."""
    cps = [k for k in r["methods"][0] if k.startswith("hv@")]
    lines = [
        "# Search efficiency on the demo supernet",
        "",
        "Generated by `bench/search_efficiency.py` (do not edit: a rerun rewrites it). The search's targets, "
        "what was tried and what the numbers show: `search_targets.md`; the guided sampler's settings: "
        "`search_tuning.md`.",
        "",
        f"Measured {r['date']} on {r['machine']} by `bench/search_efficiency.py` (the 2-core machine, shared with "
        "other work while it ran: wall times are estimates, see below). One trained demo supernet "
        "(`mixnas run --preset demo`), objectives accuracy and GFLOPs, seeds "
        f"{', '.join(map(str, r['seeds']))}, a budget of {r['budget']} supernet evaluations per search.",
        "",
        f"Hypervolume: reference point accuracy 0 %, GFLOPs {r['reference_point'][1]:.6f} (1.1 x the space's "
        "costliest architecture, exact from the cost table). Shares are of the **best known front**: every "
        f"architecture ever scored on this supernet ({r['union_archs']}: a {r['long']}-evaluation NSGA-II search "
        f"with the warm start, which alone reaches {r['long_hv'] / r['best_known_hv']:.1%} of it, every run "
        "below, and the tuning runs of the guided sampler's settings).",
        "",
        "| method | " + " | ".join(f"HV share after {c[3:]} evals (median)" for c in cps)
        + " | worst seed at the budget | references matched (per seed) | beaten strictly (per seed) "
        "| wall time est. (s) | sampler's own time (s) |",
        "|---" * (len(cps) + 6) + "|",
    ]
    for m in r["methods"]:
        lines.append(f"| {m['method']} | " + " | ".join(f"{m[c]:.1%}" for c in cps)
                     + f" | {m['hv_min']:.1%} | {m['refs_ok']} of 4 | {m['refs_strict']} | {m['wall_s']:.0f} "
                     f"| {m['sampler_s']:.1f} |")
    lines += [
        "",
        "*References matched*: for each non-DGE reference (all window_attn, all dwconv, all dyn_dwconv, all "
        "refiner; every stage one mixer at the space's largest sizes), a searched architecture other than the "
        f"reference's own network at no more than its GFLOPs with at least its supernet accuracy minus "
        f"{TOLERANCE} points. *Beaten strictly*: more accurate at fewer GFLOPs. Wall time: the sampler's own "
        f"time plus the recorded scoring time of each architecture the search asked for (mean "
        f"{r['mean_eval_s']:.2f} s per evaluation; every run shares one cached evaluator).",
        "",
        "References as the supernet scores them: " + "; ".join(
            f"{x['label']} {x['accuracy']:.1f}% at {x['gflops']:.5f} GFLOPs" for x in r["references_scored"]) + ".",
        "",
        "Per reference, the default search (guided + warm start), best searched architecture at no more GFLOPs:",
        "",
        "| seed | reference | difference (points) | its GFLOPs | strictly better |",
        "|---|---|---|---|---|",
    ]
    for x in r["references"]:
        if x["method"].startswith("default"):
            lines.append(f"| {x['seed']} | {x['reference']} | {x['diff']:+.2f} | {x['best_gflops']:.5f} "
                         f"| {'yes' if x['strict'] else 'no'} |")
    taus = r["predictor_tau_heldout"]
    if r.get("breakdown"):
        b = r["breakdown"]
        total = sum(b.values())
        lines += [
            "",
            f"Where a candidate's scoring time goes (mean of 20 random architectures, nothing cached): slicing "
            f"the supernet and recalibrating BatchNorm {b['prepare_s']:.2f} s, top-1 on the validation split "
            f"{b['validation_s']:.2f} s, FLOPs {b['flops_s']:.2f} s (the cost table for static networks; DGE is "
            f"traced per image). Successive halving, scoring a quarter of the validation split first and only "
            f"the survivors on the rest, saves at most three quarters of the validation time of the candidates "
            f"it drops: {0.75 * b['validation_s'] / total:.0%} of an evaluation for each dropped one. It is not "
            f"in the search: its threshold comes from the front scored so far, so a candidate's recorded "
            f"accuracy would depend on what was scored before it and in which process, which breaks the "
            f"contract that scoring is deterministic (the same table after a kill and resume, from Ray "
            f"workers or in process) and the evaluation cache the workers share; the predictor already "
            f"screens candidates before any is scored. What does not depend on the architecture is reused: "
            f"the cost table replaced the per-candidate FLOP trace of static networks (it took 0.4-1.0 s "
            f"of a 1-2 s evaluation before).",
        ]
    lines += [
        "",
        f"Accuracy predictor (fitted on each default run's {r['budget']} scored candidates, scored on the long "
        f"search's other architectures): Kendall tau {', '.join(f'{t:.2f}' for t in taus)} (seeds "
        f"{', '.join(map(str, r['seeds']))}).",
    ]
    if r.get("predictor_tau_standalone"):
        lines.append("Against the standalone accuracies of `ranking_demo.csv`: Kendall tau "
                     + ", ".join(f"{t:.2f}" for t in r["predictor_tau_standalone"]) + ".")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, type=Path, help="a finished demo run directory")
    p.add_argument("--budget", type=int, default=40)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--long", type=int, default=3000, help="evaluations of the best-known-front search")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "search.md")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier timings on a shared machine)")
    p.add_argument("--render", action="store_true", help="only write the Markdown from the JSON of an earlier run")
    args = p.parse_args()
    if args.render:
        args.out.write_text(render(json.loads(args.out.with_suffix(".json").read_text())))
        return
    torch.set_num_threads(args.threads)

    work = args.run / "bench_search"
    evaluator = _TimedEvaluator(_scoring_dir(args.run, work), EvalSettings(latency="none"))
    space = evaluator.space
    table_costs = CostTable.for_space(space, work / "cost_table.json")
    max_gflops = table_costs.max_cost()[0]
    ref = [0.0, 1.1 * max_gflops]
    print(f"reference point: accuracy 0%, GFLOPs {ref[1]:.6f} (1.1 x the space's costliest, {max_gflops:.6f})")

    refs = pd.DataFrame(reference_rows(space, evaluator.evaluate, SearchSettings(trials=1).limits, "optuna", False))
    refs = refs[refs["state"] == "COMPLETE"]
    dge = [m for m in space.mixer_types() if any(s.mixer.spec.wraps_block for s in space.largest(m).stages)]
    non_dge = refs[~refs["label"].isin([f"all {m}" for m in dge])]

    t0 = time.perf_counter()
    long_table, long_sampler_s = _search(evaluator, work / "long", "nsga2", True, args.long, 0, population=50)
    long_seconds = time.perf_counter() - t0
    runs: dict[tuple[str, int], tuple[pd.DataFrame, float]] = {}
    for name in args.methods:
        sampler, warm = METHODS[name]
        for seed in args.seeds:
            out = work / f"{name.replace(' ', '_').replace(':', '').replace('(', '').replace(')', '')}-s{seed}"
            runs[name, seed] = _search(evaluator, out, sampler, warm, args.budget, seed)
            print(f"{name} seed {seed}: done ({runs[name, seed][1]:.1f} s of sampler time)", flush=True)

    # The best known front: every architecture ever scored on this supernet with these settings (the long
    # search, every run above, and any earlier experiment that shares the evaluator's cache).
    union = pd.concat([long_table] + [t for t, _ in runs.values()] + [_cached_table(evaluator)], ignore_index=True)
    union = union.drop_duplicates("arch_id").reset_index(drop=True)
    best_hv = _front_hv(union, ref)
    long_hv = _front_hv(long_table, ref)

    eval_s = {k: float(v.get("eval_seconds", 0.0)) for k, v in evaluator._memory.items()}
    mean_eval = float(np.mean(list(eval_s.values())))
    rows, beats_rows = [], []
    checkpoints = [c for c in (10, 20, 30, 40, 60, 80, 100) if c <= args.budget] + (
        [args.budget] if args.budget not in (10, 20, 30, 40, 60, 80, 100) else [])
    for name in args.methods:
        per_seed = []
        for seed in args.seeds:
            table, sampler_s = runs[name, seed]
            hist = hypervolume_history(table, list(OBJECTIVES), reference=ref)
            at = {c: float(hist["hypervolume"].iloc[min(c, len(hist)) - 1]) / best_hv for c in checkpoints}
            wall = sampler_s + sum(eval_s.get(a, mean_eval) for a in table["arch_id"])
            per_seed.append((at, wall, sampler_s, _beats(table, non_dge)))
        row = {"method": name}
        for c in checkpoints:
            row[f"hv@{c}"] = float(np.median([s[0][c] for s in per_seed]))
        row["hv_min"] = float(min(s[0][args.budget] for s in per_seed))
        row["wall_s"] = float(np.median([s[1] for s in per_seed]))
        row["sampler_s"] = float(np.median([s[2] for s in per_seed]))
        row["refs_ok"] = [sum(v["ok"] for v in s[3].values()) for s in per_seed]
        row["refs_strict"] = [sum(v["strict"] for v in s[3].values()) for s in per_seed]
        rows.append(row)
        for seed, s in zip(args.seeds, per_seed):
            for label, v in s[3].items():
                beats_rows.append({"method": name, "seed": seed, "reference": label, **v})

    # The predictor: fitted on each default run's scored candidates, scored on held-out long-search ones.
    codec = ArchCodec(space)
    taus, taus_standalone = [], []
    held = long_table[long_table["state"] == "COMPLETE"]
    standalone_csv = ROOT / "docs" / "benchmarks" / "ranking_demo.csv"
    standalone = pd.read_csv(standalone_csv) if standalone_csv.is_file() else None
    for seed in args.seeds:
        table, _ = runs.get(("default: guided+warm", seed), (None, 0))
        if table is None:
            continue
        train = table[table["state"] == "COMPLETE"]
        g_train = np.array([codec.encode(ArchConfig.from_dict(json.loads(a))) for a in train["arch"]])
        feats = lambda g: np.hstack([codec.features(g), np.log(table_costs.costs(g))])  # noqa: E731
        model = AccuracyPredictor(seed=seed).fit(feats(g_train), train["accuracy"].to_numpy(float))
        test = held[~held["arch_id"].isin(set(train["arch_id"]))]
        g_test = np.array([codec.encode(ArchConfig.from_dict(json.loads(a))) for a in test["arch"]])
        taus.append(kendall_tau(model.predict(feats(g_test))[0], test["accuracy"].to_numpy(float)))
        if standalone is not None:  # the ranking's architectures that some run here scored (by arch_id)
            known = union.set_index("arch_id")["arch"]
            inside = standalone[standalone["arch_id"].isin(known.index)]
            if len(inside) >= 4:
                g_s = np.array([codec.encode(ArchConfig.from_dict(json.loads(known[a]))) for a in inside["arch_id"]])
                taus_standalone.append(kendall_tau(model.predict(feats(g_s))[0],
                                                   inside["standalone_accuracy"].to_numpy(float)))

    breakdown = scoring_breakdown(evaluator)
    result = {
        "breakdown": breakdown,
        "date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
        "budget": args.budget, "seeds": args.seeds, "long": args.long, "reference_point": ref,
        "best_known_hv": best_hv, "long_hv": long_hv, "union_archs": int(len(union)),
        "long_minutes": long_seconds / 60, "long_sampler_s": long_sampler_s, "mean_eval_s": mean_eval,
        "methods": rows, "references": beats_rows,
        "references_scored": refs[["label", "arch_id", "accuracy", "gflops"]].to_dict("records"),
        "predictor_tau_heldout": taus, "predictor_tau_standalone": taus_standalone,
    }
    (args.out.with_suffix(".json")).write_text(json.dumps(result, indent=1))
    args.out.write_text(render(result))
    print(json.dumps(result["methods"], indent=1))
    print(f"best known HV {best_hv:.5f} (long search alone {long_hv / best_hv:.4f}); predictor tau {taus}")


if __name__ == "__main__":
    main()
