"""The ranking check: does the supernet rank architectures the way training them from scratch does?

``rank_check(run_dir)`` (``mixnas rank-check RUN_DIR``) picks K searched architectures, trains each from
scratch with ``mixnas train``'s code and defaults (one directory per architecture and seed under
``RUN_DIR/ranking/``, each resumable), and compares the accuracy each inherited from the supernet with
the accuracy it reaches alone:

* Kendall's tau and Spearman's rho, with bootstrap 90% intervals (pairs resampled 2,000 times, seeded);
* the top-3 overlap: how many of the supernet's three best are among the three best trained alone;
* the regret: the best standalone accuracy minus the standalone accuracy of the supernet's favourite;
* tau within each mixer family (architectures sharing a stage-1 mixer) with at least 4 members;
* the cost baseline: Kendall tau of GFLOPs alone against the standalone accuracies. Within a search space
  bigger networks tend to be more accurate, so ranking by cost is the trivial proxy a supernet must beat
  to tell users something they could not read off the FLOPs column.

The picks are stratified over the supernet's accuracy range, cover every mixer the searched table
contains (in any stage), and always include the most accurate feasible architecture (the accurate end of
the Pareto front). Results go to ``RUN_DIR/ranking/ranking.parquet``; ``mixnas results`` draws them.
With ``backend="ray"`` each training is a Ray task holding its own CPUs (and GPUs), so a cluster trains
them side by side; a training interrupted anywhere resumes from its last finished epoch on the next run.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mixnas.atomic import atomic_write
from mixnas.errors import ResultsError
from mixnas.lock import drive
from mixnas.run_dir import RunDir
from mixnas.search_space import ArchConfig
from mixnas.training import StandaloneConfig, read_config, train_architecture
from mixnas.trials import load_trials

RANKING_FILE = "ranking.parquet"
SUMMARY_FILE = "summary.json"
BOOTSTRAP = 2000


@dataclass(frozen=True)
class RankSettings:
    """How the ranking check trains and compares.

    Args:
        archs: architectures to train (K).
        epochs: standalone epochs each.
        seeds: training seeds per architecture (their accuracies are averaged).
        device: where each training runs.
        backend: ``local`` (one after the other) or ``ray`` (Ray tasks, side by side).
        address: the Ray cluster to join (None: a local instance).
        cpus_per_task: CPUs each Ray training holds.
        gpus_per_task: GPUs each Ray training holds.
        batch_size, lr, steps_per_epoch: ``mixnas train``'s settings (its defaults unless changed).
    """

    archs: int = 12
    epochs: int = 15
    seeds: int = 1
    device: str = "auto"
    backend: str = "local"
    address: str | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    batch_size: int = StandaloneConfig.batch_size
    lr: float = StandaloneConfig.lr
    steps_per_epoch: int = 0


# ------------------------------------------------------------------------------------------ picking
def mixers_of(arch_json: str) -> list[str]:
    """The mixer type of each stage."""
    return [s["mixer"]["type"] for s in json.loads(arch_json)["stages"]]


def pick_architectures(table: pd.DataFrame, k: int) -> pd.DataFrame:
    """K complete searched architectures stratified over the supernet's accuracy, every mixer of the table
    covered, the most accurate feasible one included; ordered by supernet accuracy, best first.

    Raises:
        ResultsError: the table holds no complete searched architecture.
    """
    pool = table[(table["state"] == "COMPLETE") & ~table["is_reference"] & table["accuracy"].notna()]
    pool = pool.drop_duplicates("arch_id").sort_values(["accuracy", "number"], ascending=[False, True])
    if pool.empty:
        raise ResultsError("no complete searched architecture to rank; run mixnas search first")
    k = min(k, len(pool))
    picked: list[int] = []
    feasible = pool[pool["feasible"]]
    picked.append(int((feasible if len(feasible) else pool).index[0]))
    # Every mixer the table holds: the most accurate architecture using it not yet covered.
    for mixer in sorted({m for a in pool["arch"] for m in mixers_of(a)}):
        if any(mixer in mixers_of(pool.loc[i, "arch"]) for i in picked) or len(picked) >= k:
            continue
        users = [i for i in pool.index if mixer in mixers_of(pool.loc[i, "arch"])]
        picked.append(int(users[len(users) // 2]))  # a middling one: the extremes come next
    # The rest spread evenly over the accuracy range, bottom included: k evenly spaced targets from the
    # best to the worst, each pick so far taking the target nearest its accuracy, the closest free
    # architecture to each target left over.
    lo, hi = float(pool["accuracy"].min()), float(pool["accuracy"].max())
    targets = list(np.linspace(hi, lo, k))
    for i in picked:
        targets.pop(int(np.argmin([abs(t - float(pool.loc[i, "accuracy"])) for t in targets])))
    for target in targets:
        free = pool.drop(index=picked)
        if free.empty:
            break
        picked.append(int((free["accuracy"] - target).abs().idxmin()))
    return pool.loc[picked].sort_values(["accuracy", "number"], ascending=[False, True])


# ------------------------------------------------------------------------------------------ statistics
def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import kendalltau

    with warnings.catch_warnings():  # a resample of all-equal values has no correlation: NaN, dropped
        warnings.simplefilter("ignore")
        return float(kendalltau(a, b).statistic)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a, b).statistic)


def bootstrap_interval(stat: Callable[[np.ndarray, np.ndarray], float], a: np.ndarray, b: np.ndarray,
                       seed: int = 0, level: float = 0.90, n: int = BOOTSTRAP) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over resampled pairs (NaN resamples, all ties, dropped)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(a), len(a))
        v = stat(a[idx], b[idx])
        if math.isfinite(v):
            values.append(v)
    if not values:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def ranking_statistics(supernet: Sequence[float], standalone: Sequence[float], families: Sequence[str] = (),
                       seed: int = 0, cost: Sequence[float] | None = None) -> dict[str, Any]:
    """Kendall tau, Spearman rho (each with a bootstrap 90% interval), top-3 overlap, regret and tau per
    family (>= 4 members) of paired accuracies (%); with ``cost`` (GFLOPs of each architecture), also
    ``cost_tau``: how well ranking by cost alone agrees with the standalone accuracies."""
    a, b = np.asarray(supernet, float), np.asarray(standalone, float)
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("ranking statistics need at least two paired accuracies")
    top = min(3, len(a))
    by_supernet = np.argsort(-a, kind="stable")
    by_standalone = np.argsort(-b, kind="stable")
    out: dict[str, Any] = {
        "n": len(a),
        "kendall_tau": _kendall(a, b), "kendall_tau_90": bootstrap_interval(_kendall, a, b, seed),
        "spearman_rho": _spearman(a, b), "spearman_rho_90": bootstrap_interval(_spearman, a, b, seed),
        "top3_overlap": len(set(by_supernet[:top]) & set(by_standalone[:top])),
        "regret": float(b.max() - b[by_supernet[0]]),
        "standalone_span": float(b.max() - b.min()),
        "supernet_span": float(a.max() - a.min()),
    }
    per_family = {}
    for family in sorted(set(families)):
        idx = [i for i, f in enumerate(families) if f == family]
        if len(idx) >= 4:
            per_family[family] = _kendall(a[idx], b[idx])
    out["kendall_tau_by_family"] = per_family
    if cost is not None:
        c = np.asarray(cost, float)
        if len(c) != len(b):
            raise ValueError("cost needs one value per architecture")
        out["cost_tau"] = _kendall(c, b)
    return out


def seed_agreement(per_seed: Sequence[Sequence[float]]) -> float | None:
    """Mean Kendall tau between the standalone accuracies of every pair of seeds (None with one seed).

    It measures how well training from scratch agrees with itself: the supernet's tau against the
    seed-averaged accuracies is judged against it, since no proxy can rank more reliably than the noise of
    the reference it is compared with allows.
    """
    runs = [np.asarray(r, float) for r in per_seed]
    if len(runs) < 2:
        return None
    return float(np.mean([_kendall(runs[i], runs[j]) for i in range(len(runs)) for j in range(i + 1, len(runs))]))


def noise_ceiling(per_seed: Sequence[Sequence[float]], seed: int = 0, draws: int = 2000) -> float | None:
    """The Kendall tau a perfect proxy would be expected to reach against the seed-averaged accuracies:
    the ceiling that training noise puts on ``kendall_tau`` (None with one seed).

    A parametric bootstrap: the per-training noise is the seeds' pooled variance s^2, so the mean of S seeds
    carries noise of variance s^2 / S; the true accuracies are the means shrunk towards their grand mean so
    that their spread excludes that noise. Each draw adds the noise to the truth and ranks both. Two single
    seeds agree less (``seed_agreement``) than a noise-free ranking agrees with their mean.
    """
    runs = np.asarray([np.asarray(r, float) for r in per_seed])
    if runs.ndim != 2 or len(runs) < 2:
        return None
    n_seeds = len(runs)
    noise_var = float(np.mean(np.var(runs, axis=0, ddof=1))) / n_seeds  # of the S-seed mean
    means = runs.mean(axis=0)
    spread = float(np.var(means, ddof=1))
    if noise_var == 0:
        return 1.0
    if spread <= noise_var:  # the means' spread is all noise: no ranking is recoverable
        return 0.0
    truth = means.mean() + (means - means.mean()) * math.sqrt((spread - noise_var) / spread)
    rng = np.random.default_rng(seed)
    taus = [_kendall(truth, truth + rng.normal(0.0, math.sqrt(noise_var), len(truth))) for _ in range(draws)]
    return float(np.mean(taus))


# ------------------------------------------------------------------------------------------ training
def _train(arch_dict: dict, out_dir: str, config: dict, device: str) -> float:
    """One standalone training (a Ray task or a local call): its final validation top-1 (%)."""
    history = train_architecture(ArchConfig.from_dict(arch_dict), out_dir, StandaloneConfig(**config), device=device,
                                 progress=False)
    return float(history[-1]["val_acc"])


Job = tuple[str, int, dict, dict, Path]  # arch_id, seed, architecture (dict), StandaloneConfig (dict), out dir


def _check_arch_id(arch_id: Any, arch_json: str, number: int) -> None:
    """An ``arch_id`` becomes a folder name: it must be the 12 hex digits of the row's own architecture, so
    that a forged trial table (``../../x``, an absolute path) cannot send a training outside the run.

    Raises:
        ResultsError: naming the trial.
    """
    text = str(arch_id)
    if not re.fullmatch(r"[0-9a-f]{12}", text):
        raise ResultsError(f"trial table: trial {number}'s arch_id {text[:40]!r} is not 12 hex digits; "
                           f"the table was altered (rerun mixnas search)")
    try:
        own = ArchConfig.from_dict(json.loads(arch_json)).arch_id
    except (ValueError, TypeError, KeyError) as e:
        raise ResultsError(f"trial table: trial {number}'s arch is not a valid architecture ({e})") from None
    if own != text:
        raise ResultsError(f"trial table: trial {number}'s arch_id {text} is not its architecture's ({own}); "
                           f"the table was altered (rerun mixnas search)")


def _jobs(run: RunDir, picks: pd.DataFrame, settings: RankSettings, data: str, data_seed: int) -> list[Job]:
    # Every training uses the supernet's dataset (its digits renders and split): seeds change the training
    # only, so seed-to-seed differences and the comparison with the supernet are measured on the same images.
    base = StandaloneConfig(data=data, epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                            steps_per_epoch=settings.steps_per_epoch, data_seed=data_seed)
    jobs = []
    for _, row in picks.iterrows():
        arch = json.loads(row["arch"])
        _check_arch_id(row["arch_id"], row["arch"], int(row["number"]))
        for s in range(settings.seeds):
            config = asdict(replace(base, seed=s))
            jobs.append((row["arch_id"], s, arch, config, run.ranking_dir / f"{row['arch_id']}-seed{s}"))
    return jobs


def rank_check(run_dir: RunDir | str | Path, settings: RankSettings | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Train the picked architectures from scratch (or resume them), write the ranking table and summary,
    and return the statistics (``ranking_statistics`` plus the settings and the table's path).

    Raises:
        ResultsError: the run directory has not been searched.
        RunLockedError: another process drives the run directory.
    """
    settings = settings or RankSettings()
    run = RunDir.of(run_dir)
    if not run.is_searched():
        raise ResultsError(f"{run.path}: not searched yet (no {RunDir.TRIALS_PARQUET}); run mixnas search first")
    with drive(run, "rank-check"):
        table = load_trials(run)
        picks = pick_architectures(table, settings.archs)
        supernet_config = read_config(run)
        data = supernet_config.data
        jobs = _jobs(run, picks, settings, data, supernet_config.seed)
        say = print if progress else (lambda *a, **k: None)
        say(f"rank-check: {len(picks)} architectures x {settings.seeds} seed(s), {settings.epochs} epochs each, "
            f"on {data} ({settings.backend}); trainings in {run.ranking_dir}")
        accuracies = _run_jobs(jobs, settings, progress)
        rows = []
        for _, row in picks.iterrows():
            per_seed = [accuracies[(row["arch_id"], s)] for s in range(settings.seeds)]
            rows.append({
                "arch_id": row["arch_id"], "number": int(row["number"]), "summary": row["summary"],
                "arch": row["arch"], "stage1_mixer": mixers_of(row["arch"])[0],
                "supernet_accuracy": float(row["accuracy"]), "gflops": float(row["gflops"]),
                **{f"standalone_accuracy_seed{s}": a for s, a in enumerate(per_seed)},
                "standalone_accuracy": float(np.mean(per_seed)), "epochs": settings.epochs,
            })
        ranking = pd.DataFrame(rows)
        stats = ranking_statistics(ranking["supernet_accuracy"], ranking["standalone_accuracy"],
                                   list(ranking["stage1_mixer"]), cost=ranking["gflops"])
        per_seed_table = [ranking[f"standalone_accuracy_seed{s}"] for s in range(settings.seeds)]
        stats["seed_agreement_tau"] = seed_agreement(per_seed_table)
        stats["noise_ceiling_tau"] = noise_ceiling(per_seed_table)
        atomic_write(run.ranking_dir / RANKING_FILE, lambda tmp: ranking.to_parquet(tmp, index=False))
        summary = {**stats, "settings": asdict(settings), "data": data}
        atomic_write(run.ranking_dir / SUMMARY_FILE, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
        say(format_summary(stats))
        return {**summary, "table": str(run.ranking_dir / RANKING_FILE)}


def _run_jobs(jobs: list[Job], settings: RankSettings, progress: bool) -> dict:
    from tqdm.auto import tqdm

    out: dict[tuple[str, int], float] = {}
    if settings.backend == "local":
        for arch_id, seed, arch, config, out_dir in tqdm(jobs, desc="rank-check", unit="training",
                                                         disable=not progress, dynamic_ncols=True):
            out[(arch_id, seed)] = _train(arch, str(out_dir), config, settings.device)
        return out
    if settings.backend != "ray":
        raise ValueError(f"backend must be 'local' or 'ray', got {settings.backend!r}")
    import ray

    from mixnas.search.ray_cluster import RaySettings, start_ray, stop_ray

    started = start_ray(RaySettings(address=settings.address, cpus_per_trial=settings.cpus_per_task,
                                    gpus_per_trial=settings.gpus_per_task), say=print if progress else None)
    try:
        task = ray.remote(num_cpus=settings.cpus_per_task, num_gpus=settings.gpus_per_task)(_train)
        refs = {(a, s): task.remote(arch, str(d), c, settings.device) for a, s, arch, c, d in jobs}
        bar = tqdm(total=len(refs), desc="rank-check (ray)", unit="training", disable=not progress)
        pending = dict(zip(refs.values(), refs.keys()))
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                out[pending.pop(ref)] = float(ray.get(ref))
                bar.update()
        bar.close()
    finally:
        if started:
            stop_ray()
    return out


def load_ranking(run_dir: RunDir | str | Path) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """The ranking table and summary of a run directory, or None when no check has finished there."""
    folder = RunDir.of(run_dir).ranking_dir
    if not (folder / RANKING_FILE).is_file() or not (folder / SUMMARY_FILE).is_file():
        return None
    try:
        table = pd.read_parquet(folder / RANKING_FILE)
    except Exception as e:  # pyarrow raises many types; all mean "not a ranking table"
        raise ResultsError(f"{folder / RANKING_FILE}: cannot be read ({type(e).__name__}); run mixnas rank-check "
                           f"again") from None
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise ResultsError(f"{folder / SUMMARY_FILE}: cannot be read ({type(e).__name__}); run mixnas rank-check "
                           f"again") from None
    needed = ("kendall_tau", "n", "top3_overlap", "standalone_span")
    if not isinstance(summary, dict) or any(k not in summary for k in needed) or not all(
            isinstance(summary[k], (int, float)) and not isinstance(summary[k], bool) for k in needed):
        raise ResultsError(f"{folder / SUMMARY_FILE}: not a ranking summary (needs the numbers {', '.join(needed)}); "
                           f"run mixnas rank-check again")
    return table, summary


def format_summary(stats: dict[str, Any]) -> str:
    lo, hi = stats["kendall_tau_90"]
    rlo, rhi = stats["spearman_rho_90"]
    lines = [
        f"Kendall tau {stats['kendall_tau']:.3f} (90% CI {lo:.2f} to {hi:.2f}), Spearman rho "
        f"{stats['spearman_rho']:.3f} (90% CI {rlo:.2f} to {rhi:.2f}) over {stats['n']} architectures",
        f"top-3 overlap {stats['top3_overlap']}/3, regret {stats['regret']:.2f} points "
        f"(standalone accuracies span {stats['standalone_span']:.1f} points, supernet's {stats['supernet_span']:.1f})",
    ]
    if stats.get("cost_tau") is not None and math.isfinite(stats["cost_tau"]):
        lines.append(f"cost baseline: ranking by GFLOPs alone reaches tau {stats['cost_tau']:.3f} "
                     f"(the supernet {'beats' if stats['kendall_tau'] > stats['cost_tau'] else 'does not beat'} it)")
    if stats.get("seed_agreement_tau") is not None:
        lines.append(f"standalone seeds agree with each other at Kendall tau {stats['seed_agreement_tau']:.3f}")
    if stats.get("noise_ceiling_tau") is not None:
        lines.append(f"noise ceiling: a perfect proxy would reach about tau {stats['noise_ceiling_tau']:.2f} "
                     "against these seed-averaged accuracies")
    if stats["kendall_tau_by_family"]:
        lines.append("tau by stage-1 mixer: " + ", ".join(
            f"{k} {v:.2f}" for k, v in stats["kendall_tau_by_family"].items()))
    return "\n".join(lines)


__all__ = ["RankSettings", "format_summary", "load_ranking", "pick_architectures", "rank_check",
           "noise_ceiling", "ranking_statistics", "seed_agreement"]
