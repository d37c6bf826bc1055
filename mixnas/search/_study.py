"""The Optuna study both search backends keep: its sampler, its warm start, the journal it lives in, and
the checks a resumed search passes (the same backend, objectives, scoring settings and supernet weights).

The Optuna runner (``optuna_runner``) and the Ray Tune runner (``ray_runner``) are peers that share this
module and ``_shared``, never each other's internals. (``_shared`` imports without optuna, which the
evaluator, the profiler and the GPU suite must not need; this module needs it.)
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from mixnas.atomic import atomic_write_text
from mixnas.errors import ConfigError
from mixnas.run_dir import RunDir
from mixnas.search._shared import Limits, SearchSettings, metric_names, optuna_directions
from mixnas.search.evaluator import EvalSettings, load_settings, save_settings
from mixnas.search_space import ArchConfig, SearchSpace

STUDY_NAME = "mixnas"
SAMPLERS = ["guided", "nsga2", "tpe", "random", "gp"]
DUPLICATE = "duplicate_of"
WARM_START = "warm_start"  # user attribute of the trials the warm start queued
BACKEND = "backend"  # user attribute of the study: the backend that searches it (optuna or ray)
# Consecutive repeats after which the space is taken to be exhausted (every architecture tried).
MAX_CONSECUTIVE_REPEATS = 200


def make_sampler(name: str, trials: int, seed: int, space: SearchSpace | None = None,
                 objectives: Sequence[str] = ("accuracy", "gflops", "latency"), limits: Limits | None = None,
                 cost_table_cache: str | Path | None = None) -> optuna.samplers.BaseSampler:
    """Optuna's sampler by name (``guided``: ``mixnas.search.guided.GuidedSampler``, which needs the space).
    Limits reach the samplers through ``Trial.set_constraint``.

    Args:
        name: one of ``SAMPLERS``.
        trials: the search's budget (sizes NSGA-II's population).
        seed: the sampler's seed.
        space: the search space (guided only).
        objectives: canonical objective names in the study's order (guided only).
        limits: cost limits (guided screens candidates against them).
        cost_table_cache: where the guided sampler keeps the space's cost table (a run directory's file).
    """
    if name == "guided":
        if space is None:
            raise ConfigError("--sampler guided: needs the search space")
        from mixnas.search.guided import GuidedSampler

        lim = limits or Limits()
        return GuidedSampler(space, list(objectives), seed=seed,
                             limits=(lim.max_gflops, lim.max_params, lim.max_latency_ms),
                             cost_table_cache=str(cost_table_cache) if cost_table_cache else None)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=nsga2_population(trials), seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise ConfigError(f"--sampler: unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")


def nsga2_population(trials: int) -> int:
    """NSGA-II's population for a budget of ``trials``: Optuna's default (50) would leave a small search
    all-random, so about five generations fit, between 4 and 50 members."""
    return max(4, min(50, trials // 5))


def warm_start_archs(space: SearchSpace, limits: Limits | None = None, trials: int | None = None,
                     cost_table_cache: str | Path | None = None) -> list[ArchConfig]:
    """The first generation's seeds: the space's largest and smallest architectures and each mixer's
    largest (the hand-designed references' architectures, here scored as searched trials), distinct,
    without those the cost table puts over a GFLOPs or parameter limit, at most ``trials`` of them.
    ``cost_table_cache``: the run's cost-table file, so that the table is counted once per run."""
    archs = [space.largest(), space.smallest()] + [space.largest(m) for m in space.mixer_types()]
    out: dict[str, ArchConfig] = {}
    table = None
    for arch in archs:
        arch = arch.with_name(None)
        if arch.arch_id in out:
            continue
        if limits is not None and (limits.max_gflops is not None or limits.max_params is not None):
            if table is None:
                from mixnas.search.cost_table import CostTable

                table = CostTable.for_space(space, cost_table_cache)
            gflops, params = table.arch_cost(arch)
            if not limits.feasible({"gflops": gflops, "params": params, "latency_ms": 0.0}):
                continue
        out[arch.arch_id] = arch
    return list(out.values())[:trials]


def warm_start_params(space: SearchSpace, settings: SearchSettings, cost_table_cache: str | Path | None = None
                      ) -> list[dict[str, Any]]:
    """``warm_start_archs`` as Optuna parameters, for ``enqueue_trial`` (none when the settings say so)."""
    if not settings.warm_start:
        return []
    archs = warm_start_archs(space, settings.limits, settings.trials, cost_table_cache)
    return [space.params_of(a) for a in archs]


def tell_constraints(trial: optuna.trial.Trial, limits: Limits, result: dict[str, Any]) -> None:
    """Record each limit's violation (<= 0 satisfied) for the sampler and for the trial table."""
    named = limits.named_constraints(result)
    for key, value in named.items():
        trial.set_constraint(key, value)
    trial.set_user_attr("constraints", list(named.values()))


def journal_storage(path: Path) -> JournalStorage:
    """The Optuna journal at ``path`` (a run's ``RunDir.journal``), its folder created if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def load_run_study(storage: JournalStorage, sampler: optuna.samplers.BaseSampler | None = None
                   ) -> optuna.Study | None:
    """The run's study (``STUDY_NAME``) in ``storage``, or None when there is none yet."""
    try:
        return optuna.load_study(study_name=STUDY_NAME, storage=storage, sampler=sampler)
    except KeyError:
        return None


def create_run_study(storage: JournalStorage, settings: SearchSettings, backend: str,
                     sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """Create the run's study as both backends do: the objectives' directions, their metric names
    (``metric_names``) and the user attributes ``objectives`` and ``backend``."""
    objectives = list(settings.objectives)
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, sampler=sampler,
                                directions=optuna_directions(objectives))
    study.set_user_attr("objectives", objectives)
    study.set_user_attr(BACKEND, backend)
    name_metrics(study, objectives)
    return study


def name_metrics(study: optuna.Study, objectives: Sequence[str]) -> None:
    """Name the study's values (``metric_names``), which the dashboard and Optuna's plots show."""
    with warnings.catch_warnings():  # Optuna marks it experimental (3.2) and warns on every call
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(metric_names(list(objectives)))


def check_study(study: optuna.Study, settings: SearchSettings, backend: str, path: Path) -> None:
    """Refuse to continue a study that another backend searches or that optimised other objectives.

    Raises:
        ConfigError: naming the journal, what it holds and what to do.
    """
    # Journals written before the attribute existed came from this runner.
    stored_backend = study.user_attrs.get(BACKEND, "optuna")
    if stored_backend != backend:
        raise ConfigError(
            f"{path}: this run directory was searched with --backend {stored_backend}; --backend {backend} would "
            f"mix two searches in one study (continue with --backend {stored_backend}, or search in another run "
            f"directory)"
        )
    stored = study.user_attrs.get("objectives")
    if stored is not None and list(stored) != list(settings.objectives):
        raise ConfigError(
            f"{path}: this search optimised {','.join(stored)}; --objectives {','.join(settings.objectives)} "
            f"would mix incompatible trials (use another run directory or the same objectives)"
        )


def check_settings(run_dir: RunDir | str | Path, settings: EvalSettings, weights_digest: str | None = None) -> None:
    """A resumed search must score candidates as before, with the same supernet weights; the first run
    records both.

    Raises:
        ConfigError: other scoring settings, or weights that changed since (trained further): the new
            scores would mix with the old ones in one table.
    """
    run = RunDir.of(run_dir)
    if run.eval_settings_file.is_file():
        previous = load_settings(run)
        if previous.cache_key() != settings.cache_key():
            changed = [k for k, v in asdict(settings).items()
                       if getattr(previous, k) != v and k != "latency_max_seconds"]
            raise ConfigError(
                f"{run.eval_settings_file}: this search scored candidates with other settings "
                f"({', '.join(changed)}); use the same options or another run directory"
            )
    if weights_digest is not None:
        stored = None
        if run.search_weights_file.is_file():
            try:
                stored = json.loads(run.search_weights_file.read_text()).get("sha256")
            except (OSError, ValueError, AttributeError):
                stored = None
        if stored is not None and stored != weights_digest:
            raise ConfigError(
                f"{run.weights}: the supernet changed since this search scored its candidates (trained further?); "
                f"its new scores would mix with the old ones: search in another run directory, or remove "
                f"{run.search_dir} and the trial table to search again from the start"
            )
        if stored is None:
            atomic_write_text(run.search_weights_file, json.dumps({"sha256": weights_digest}) + "\n")
    save_settings(run, settings)
