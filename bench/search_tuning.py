"""The guided sampler's settings, each measured: which choices the default rests on.

    .venv/bin/python bench/search_tuning.py --run runs/demo     # after bench/search_efficiency.py

Each variant (the guided sampler with the warm start, one setting changed) searches 40 evaluations with
seeds 0, 1 and 2 on the supernet of RUN, objectives accuracy and GFLOPs, sharing the scoring cache of
``bench/search_efficiency.py`` (run that first: its ``docs/benchmarks/search.json`` holds the best known
front and the reference point these shares are taken against). Runs resume. Table:
``docs/benchmarks/search_tuning.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from search_efficiency import _beats, _scoring_dir, _TimedEvaluator  # noqa: E402

import mixnas.search.guided as guided  # noqa: E402
from mixnas.results.pareto import hypervolume_history  # noqa: E402
from mixnas.search import EvalSettings, SearchSettings  # noqa: E402
from mixnas.search.optuna_runner import run_optuna_search  # noqa: E402

# tag -> (what changes, GuidedSampler keyword arguments)
VARIANTS: dict[str, tuple[str, dict]] = {
    "k05": ("the default (kappa 0.5, anchors every 2nd proposal, 8 scored before the predictor)", {}),
    "k0": ("kappa 0 (no optimism)", {"kappa": 0.0}),
    "k025": ("kappa 0.25", {"kappa": 0.25}),
    "et": ("kappa 1", {"kappa": 1.0}),
    "k20": ("kappa 2", {"kappa": 2.0}),
    "m4a2": ("no uniform phase (4 scored before the predictor; the warm start gives 6)",
             {"min_observations": 4, "kappa": 1.0}),
    "m8a3": ("anchors every 3rd proposal, kappa 1", {"anchor_every": 3, "kappa": 1.0}),
    "a4k05": ("anchors every 4th proposal", {"anchor_every": 4}),
    "a0k05": ("no anchors", {"anchor_every": 0}),
    "t2k05": ("at most 2 proposals per anchor", {"anchor_tries": 2}),
    "t4k05": ("at most 4 proposals per anchor", {"anchor_tries": 4}),
}
SEEDS = (0, 1, 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "search_tuning.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    bench = json.loads((ROOT / "docs" / "benchmarks" / "search.json").read_text())
    best, ref = bench["best_known_hv"], bench["reference_point"]
    work = args.run / "bench_search"
    evaluator = _TimedEvaluator(_scoring_dir(args.run, work), EvalSettings(latency="none"))
    refs = pd.DataFrame(bench["references_scored"]).assign(state="COMPLETE", is_reference=True)
    non_dge = refs[refs["label"] != "all dge"]
    original = guided.GuidedSampler.__init__
    lines = [
        "# The guided sampler's settings",
        "",
        f"Measured {bench['date']} by `bench/search_tuning.py` on the supernet and the scoring cache of "
        "`search.md` (same machine). Each row: the guided sampler with the warm start, 40 evaluations, "
        "seeds 0-2, objectives accuracy and GFLOPs; hypervolume shares of the best known front of `search.md`, "
        "medians over the seeds; references matched as there (a searched network other than the reference's "
        "own at no more GFLOPs, at most 0.5 points less accurate; 4 non-DGE references).",
        "",
        "| variant | HV share after 10 / 20 / 30 / 40 evaluations | references matched (seeds 0, 1, 2) |",
        "|---|---|---|",
    ]
    for tag, (label, kwargs) in VARIANTS.items():
        def patched(self, *a, _kw=kwargs, **k):
            original(self, *a, **{**k, **_kw})

        guided.GuidedSampler.__init__ = patched
        shares, matched = [], []
        try:
            for seed in SEEDS:
                table = run_optuna_search(work / f"{tag}-s{seed}", SearchSettings(
                    trials=40, objectives=("accuracy", "gflops"), seed=seed, references=False), evaluator,
                    progress=False)
                hist = hypervolume_history(table, ["accuracy", "gflops"], reference=ref)
                shares.append([hist["hypervolume"].iloc[c - 1] / best for c in (10, 20, 30, 40)])
                vs = _beats(table, non_dge)
                matched.append(sum(v["ok"] for v in vs.values()))
        finally:
            guided.GuidedSampler.__init__ = original
        m = np.median(np.array(shares), axis=0)
        lines.append(f"| {label} | {' / '.join(f'{v:.1%}' for v in m)} | {', '.join(map(str, matched))} |")
        print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
