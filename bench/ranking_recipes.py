"""Which supernet training recipe ranks architectures the way training them from scratch does?

A reference run holds a finished ``mixnas rank-check`` (K architectures trained from scratch, their
standalone accuracies in ``RUN/ranking/ranking.parquet``). For each recipe variant this script trains a
supernet on the same space and data, scores the same K architectures with inherited weights (BatchNorm
recalibrated, the evaluator of ``mixnas search``), and records Kendall tau (bootstrap 90% interval),
Spearman rho, top-3 overlap and regret against the standalone accuracies, plus the largest's, the
smallest's and every all-X reference's accuracy and the training's wall time.

    python bench/ranking_recipes.py --reference RUN --name fair --fair --epochs 12
    python bench/ranking_recipes.py --reference RUN --name few --few-shot-from ep14 --epochs 2 --lr 1e-3
    python bench/ranking_recipes.py --render docs/benchmarks/ranking.md     # the table of every variant

Diagnostics that are not recipe options of mixnas (``--diagnostic NAME``, patched in this process only):
``dge-last`` (the first random architecture of each step always has DGE in its last stage),
``rotate-smallest-balanced`` (the sandwich's smallest takes each common mixer in turn and the random
architectures never use the first-listed mixer, which the largest trains), ``per-mixer-blocks`` (every
mixer gets its own norms and FFNs in every block: no weight shared across mixer types inside a block).
``--finetune-epochs E [--finetune-steps N]`` scores each architecture after fine-tuning it from its
inherited weights, as ``mixnas search --train-epochs`` does; ``--score-only RUN`` scores an already
trained supernet run directory instead of training one.

Variants are resumable (the supernet's run directory is kept under --work) and append to a JSON file.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import sys
from dataclasses import asdict, fields
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "benchmarks" / "ranking_variants.json"


DIAGNOSTICS = ("dge-last", "rotate-smallest-balanced", "per-mixer-blocks")


def apply_diagnostic(name: str) -> None:
    """Patch this process's supernet training for one of the DIAGNOSTICS (see the module docstring)."""
    from dataclasses import replace

    from torch import nn

    import mixnas.supernet.backbone as backbone
    import mixnas.training.supernet as supernet_training

    sandwich = supernet_training.sandwich_archs

    def never_first(space, rng):  # one mixer per stage, never the stage's first-listed one
        return [rng.choice([m.type for m in st.mixers[1:]] or [st.mixers[0].type]) for st in space.stages]

    def patched(space, rng, config, step):
        archs = sandwich(space, rng, config, step)
        if name == "dge-last":
            mixers = [st.mixer.type for st in archs[2].stages[:-1]] + ["dge"]
            archs[2] = space.sample(rng, mixers=mixers)
        elif name == "rotate-smallest-balanced":
            kinds = space.mixer_types()
            archs[1] = space.smallest(kinds[step % len(kinds)])
            archs[2:] = [space.sample(rng, mixers=never_first(space, rng)) for _ in archs[2:]]
        return archs

    if name in ("dge-last", "rotate-smallest-balanced"):
        supernet_training.sandwich_archs = patched
    elif name == "per-mixer-blocks":
        shared_block = backbone.Block

        class PerMixerBlock(nn.Module):
            """One whole Block (norms, FFNs, the mixer) per mixer type: nothing shared across mixer types."""

            def __init__(self, limits, eps=1e-5):
                super().__init__()
                self.per_mixer = nn.ModuleDict({
                    t: shared_block(replace(limits, mixers={t: limits.mixers[t]}), eps) for t in limits.mixers
                })

            def forward(self, x, stage, block_index, drop_prob):
                return self.per_mixer[stage.mixer.type](x, stage, block_index, drop_prob)

        backbone.Block = PerMixerBlock
    else:
        raise SystemExit(f"--diagnostic: unknown {name!r}; known: {', '.join(DIAGNOSTICS)}")


def run_variant(args: argparse.Namespace) -> dict:
    import pandas as pd
    import torch

    from mixnas.packaged import load_space
    from mixnas.run_dir import RunDir
    from mixnas.search import CandidateEvaluator, EvalSettings
    from mixnas.search.ranking import load_ranking, ranking_statistics
    from mixnas.search_space import ArchConfig
    from mixnas.training import TrainConfig, read_space, train_supernet

    torch.set_num_threads(args.threads)
    if args.diagnostic:
        apply_diagnostic(args.diagnostic)
    scoring = EvalSettings(latency="none", train_epochs=args.finetune_epochs, finetune_steps=args.finetune_steps)
    if args.reference is not None:
        loaded = load_ranking(args.reference)
        if loaded is None:
            raise SystemExit(f"{args.reference}: no finished rank-check (run mixnas rank-check there first)")
        ranking = loaded[0]
        space = read_space(args.reference)
    else:  # a probe: the supernet's accuracies only; re-run with --reference later to add the ranking
        ranking = None
        space = load_space("demo")
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    config = TrainConfig(**{"data": "digits", "epochs": 5, "calib_batches": 10, **overrides})
    run = Path(args.work) / args.name

    def minutes(run_dir: Path) -> float:
        # The epochs' own times (metrics.csv), so that a resumed variant still reports its whole training.
        return float(pd.read_csv(RunDir(run_dir).metrics)["epoch_seconds"].sum()) / 60

    if args.few_shot_from:
        # Few-shot split: one sub-supernet per stage-1 mixer, each starting from the shared supernet's
        # weights and trained on its own sub-space; an architecture is scored by its stage-1 mixer's.
        base = Path(args.work) / args.few_shot_from
        if not RunDir(base).is_trained():
            raise SystemExit(f"{base}: no trained supernet (run the variant {args.few_shot_from!r} first)")
        space = read_space(base)
        train_min = minutes(base)
        evaluators = {}
        for mixer in [m.type for m in space.stages[0].mixers]:
            sub = run / mixer
            train_supernet(space.with_stage_mixers(0, [mixer]), sub, config, device="cpu",
                           progress=not args.quiet, init_weights=base)
            train_min += minutes(sub)
            evaluators[mixer] = CandidateEvaluator(sub, scoring)
    else:
        if args.score_only:
            run = args.score_only
        else:
            train_supernet(space, run, config, device="cpu", progress=not args.quiet)
        train_min = minutes(run)
        space = read_space(run)  # as trained (num_classes resolved)
        evaluators = {None: CandidateEvaluator(run, scoring)}

    def accuracy(arch: ArchConfig) -> float:
        evaluator = evaluators.get(arch.stages[0].mixer.type, evaluators.get(None))
        return evaluator.evaluate(arch)["accuracy"]

    if ranking is not None:
        supernet_acc = [accuracy(ArchConfig.from_dict(json.loads(a))) for a in ranking["arch"]]
        stats = ranking_statistics(supernet_acc, ranking["standalone_accuracy"], list(ranking["stage1_mixer"]))
        standalone_epochs = int(ranking["epochs"].iloc[0])
    else:
        supernet_acc, standalone_epochs = [], None
        stats = dict.fromkeys(("kendall_tau", "kendall_tau_90", "spearman_rho", "top3_overlap", "regret"))
    extremes = {name: accuracy(arch) for name, arch in (("largest", space.largest()), ("smallest", space.smallest()))}
    refs = {f"all {m}": accuracy(space.largest(m)) for m in space.mixer_types()}
    settings = {k: v for k, v in asdict(config).items() if k in overrides or k == "epochs"}
    if args.few_shot_from:
        settings = {"few_shot_from": args.few_shot_from, **settings}
    if args.diagnostic:
        settings = {"diagnostic": args.diagnostic, **settings}
    if args.finetune_epochs:
        settings = {**settings, "finetune_epochs": args.finetune_epochs, "finetune_steps": args.finetune_steps}
    if args.score_only:
        settings = {"score_only": str(args.score_only), **settings}
    row = {
        "name": args.name, "config": settings, "train_minutes": round(train_min, 2),
        **{k: stats[k] for k in ("kendall_tau", "kendall_tau_90", "spearman_rho", "top3_overlap", "regret")},
        **extremes, "references": refs,
        "supernet_accuracy": supernet_acc, "standalone_epochs": standalone_epochs,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} torch thread(s)",
        "date": str(date.today()), "note": args.note,
    }
    with open(args.results.with_suffix(".lock"), "w") as lock:  # variants run side by side
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(args.results.read_text()) if args.results.is_file() else []
        results = [r for r in results if r["name"] != args.name] + [row]
        tmp = args.results.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        os.replace(tmp, args.results)  # atomic: a killed run leaves the previous file
    print(json.dumps({k: v for k, v in row.items() if k != "supernet_accuracy"}, indent=1))
    return row


def render(results_path: Path, out: Path, reference: Path | None) -> None:
    results = json.loads(results_path.read_text())
    lines = ["# Ranking fidelity: supernet training recipes", "",
             "Each row: a supernet trained on the demo space with the recipe named, then the same 12 searched "
             "architectures scored with inherited weights (BatchNorm recalibrated) and compared with the same "
             "architectures trained from scratch (`mixnas rank-check`, "
             f"{results[0]['standalone_epochs'] if results else '?'} epochs each). Measured with "
             "`bench/ranking_recipes.py`.", "",
             "| recipe | settings | train min | Kendall tau (90% CI) | Spearman | top-3 | regret | largest | "
             "smallest | all-X references |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        settings = ", ".join(f"{k}={v}" for k, v in r["config"].items())
        refs = ", ".join(f"{k[4:]} {v:.0f}" for k, v in r["references"].items())
        if r["kendall_tau"] is None:  # a probe without a reference
            ranked = "— | — | — | —"
        else:
            lo, hi = r["kendall_tau_90"]
            ranked = (f"{r['kendall_tau']:.2f} ({lo:.2f} to {hi:.2f}) | {r['spearman_rho']:.2f} | "
                      f"{r['top3_overlap']}/3 | {r['regret']:.1f}")
        lines.append(f"| {r['name']} | {settings} | {r['train_minutes']:.1f} | {ranked} | {r['largest']:.1f} | "
                     f"{r['smallest']:.1f} | {refs} |")
    if results:
        lines += ["", f"Machine: {results[-1]['machine']}; dates {min(r['date'] for r in results)} to "
                      f"{max(r['date'] for r in results)}."]
    notes = [f"* {r['name']}: {r['note']}" for r in results if r.get("note")]
    if notes:
        lines += ["", "Notes:", *notes]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    from mixnas.training import TrainConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", type=Path, help="a run directory with a finished rank-check")
    p.add_argument("--name", help="the variant's name")
    p.add_argument("--work", type=Path, default=Path("/tmp/mixnas-recipes"), help="where the supernets are trained")
    p.add_argument("--results", type=Path, default=RESULTS, help="the JSON file the rows go to")
    p.add_argument("--render", type=Path, default=None, help="write the Markdown table of every variant here")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--note", default="")
    p.add_argument("--few-shot-from", default=None, metavar="VARIANT",
                   help="split this variant's supernet by stage-1 mixer; the training flags apply to each part")
    p.add_argument("--diagnostic", choices=DIAGNOSTICS, default=None, help="a patched training (module docstring)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="score after fine-tuning each architecture")
    p.add_argument("--finetune-steps", type=int, default=0, help="cap on fine-tuning steps per epoch (0: all)")
    p.add_argument("--score-only", type=Path, default=None, metavar="RUN",
                   help="score this trained supernet run directory instead of training one")
    p.add_argument("--quiet", action="store_true")
    for f in fields(TrainConfig):
        if f.name == "data":
            continue
        kind = {bool: lambda s: s.lower() in ("1", "true", "yes")}.get(type(f.default), type(f.default))
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=None)
    args = p.parse_args()
    if args.render:
        render(args.results, args.render, args.reference)
        return 0
    if not args.name:
        p.error("--name is needed to run a variant (--reference adds the ranking; without it, a probe)")
    run_variant(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
