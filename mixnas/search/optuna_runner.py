"""The default search backend: Optuna in process, storage in a journal file in the run directory.

``run_optuna_search`` asks Optuna for architectures (``SearchSpace.suggest``), scores each with the
shared ``CandidateEvaluator`` and tells the objectives back; limits are Optuna constraints (the samplers
rank infeasible trials behind feasible ones; infeasible trials never enter a Pareto front).

Repeats: a sampler may suggest an architecture it has already been told about. Such a trial is told
the values recorded for that architecture (so the sampler learns nothing false), marked
``duplicate_of`` the first trial, and neither takes one of the N trial slots nor appears in the trial
table, so the table, the front and export list each architecture once.

The study (``STUDY_NAME`` in ``RUN_DIR/search/journal.log``, Optuna's ``JournalFileBackend``) is the one
the Ray runner writes too: the objectives' directions, their trial-table columns as metric names, and the
user attributes ``objectives`` and ``backend``. A run directory holds one search, so a study that the
other backend writes is refused (``check_study``).

Resuming: the study lives in ``RUN_DIR/search/journal.log``. Stopping the process at any moment and
running the same command again continues: finished trials are kept; a trial that was running when the
process stopped is finished by the new process under its own number (its architecture scored, or read
from the evaluator's cache), so nothing is counted twice; the total of finished trials reaches the number
asked for. The samplers' random states are seeded per trial slot (``reseed``), so a search that was
killed and resumed suggests, trial for trial, what an uninterrupted one would have.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from tqdm.auto import tqdm

from mixnas.atomic import atomic_write_text
from mixnas.errors import ConfigError
from mixnas.lock import drive
from mixnas.run_dir import RunDir
from mixnas.search._shared import (
    Limits,
    SearchSettings,
    metric_names,
    optuna_directions,
    reference_rows,
    score,
    trial_record,
)
from mixnas.search.evaluator import CandidateEvaluator, EvalSettings, load_settings, save_settings
from mixnas.search_space import ArchConfig, SearchSpace
from mixnas.trials import TRIAL_COLUMNS, save_trials

STUDY_NAME = "mixnas"
SAMPLERS = ["guided", "nsga2", "tpe", "random", "gp"]
INTERRUPTED = "interrupted: the search process stopped while evaluating it"
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


def open_study(run_dir: Path, settings: SearchSettings, space: SearchSpace | None = None) -> optuna.Study:
    """Create or load the study in ``RUN_DIR/search/journal.log``; refuse a study with other objectives or
    one the Ray backend searches (``check_study``). A new study gets the warm start (``warm_start_archs``)
    queued as its first trials.

    Args:
        run_dir: the run directory.
        settings: the search's settings.
        space: the search space (the guided sampler needs it, and the warm start is queued only with it;
            the run's when None and the sampler is guided).
    """
    run = RunDir(run_dir)
    path = run.journal
    storage = journal_storage(path)
    name = settings.sampler
    if space is None and name == "guided":
        if run.space_file.is_file():
            from mixnas.training import read_space

            space = read_space(run)
        else:  # only a study opened to be read, never searched (a search passes its evaluator's space)
            name = "random"
    sampler = make_sampler(name, settings.trials, settings.seed, space=space,
                           objectives=settings.objectives, limits=settings.limits, cost_table_cache=run.cost_table)
    existing = load_run_study(storage, sampler)
    if existing is not None:
        check_study(existing, settings, "optuna", path)
        if existing.metric_names is None:  # a journal written before the study named its values
            name_metrics(existing, settings.objectives)
        return existing
    study = create_run_study(storage, settings, "optuna", sampler)
    if space is not None:
        for params in warm_start_params(space, settings, run.cost_table):
            study.enqueue_trial(params, user_attrs={WARM_START: True})
    return study


def check_settings(run_dir: Path, settings: EvalSettings, weights_digest: str | None = None) -> None:
    """A resumed search must score candidates as before, with the same supernet weights; the first run
    records both.

    Raises:
        ConfigError: other scoring settings, or weights that changed since (trained further): the new
            scores would mix with the old ones in one table.
    """
    run = RunDir(run_dir)
    if run.eval_settings_file.is_file():
        previous = load_settings(run_dir)
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
    save_settings(run_dir, settings)


def stale_trials(study: optuna.Study) -> list[optuna.trial.Trial]:
    """Trials left RUNNING by a process that stopped (the run directory's lock says none is alive), as
    Trial objects this process can finish: the resumed search scores their architecture and tells them,
    under the trial's own number, as if nothing had happened."""
    return [optuna.trial.Trial(study, t._trial_id) for t in study.get_trials(deepcopy=False)
            if t.state == TrialState.RUNNING]


def _counted(t: optuna.trial.FrozenTrial, interrupted: set[int]) -> bool:
    """Trials that count towards the total: complete, or failed for a reason other than interruption;
    repeats of an architecture never count."""
    if DUPLICATE in t.user_attrs:
        return False
    return t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and t.number not in interrupted)


def finished_count(study: optuna.Study) -> int:
    """Trials that count towards the total (``_counted``)."""
    interrupted = set(study.user_attrs.get("interrupted", []))
    return sum(1 for t in study.get_trials(deepcopy=False) if _counted(t, interrupted))


def first_trials_by_arch(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:
    """arch_id -> the first finished (complete or failed, not interrupted) trial that scored it."""
    interrupted = set(study.user_attrs.get("interrupted", []))
    out: dict[str, optuna.trial.FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        arch_id = t.user_attrs.get("arch_id")
        if arch_id and arch_id not in out and t.number not in interrupted and DUPLICATE not in t.user_attrs:
            out[arch_id] = t
    return out


def study_table(study: optuna.Study, limits: Limits) -> pd.DataFrame:
    """The trial table (``TRIAL_COLUMNS``) of every trial in the study, repeats of an architecture left out
    and the rest numbered 0, 1, 2, ... in the order they were asked for. Interrupted trials (their
    architecture was queued again) are left out too."""
    rows = []
    interrupted = set(study.user_attrs.get("interrupted", []))
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING))
    # Interrupted trials stay in the journal (their architecture was queued again); repeats take no row.
    kept = (t for t in trials if DUPLICATE not in t.user_attrs and t.number not in interrupted)
    for number, t in enumerate(kept):
        arch = ArchConfig.from_dict(json.loads(t.user_attrs["arch"])) if "arch" in t.user_attrs else None
        result = t.user_attrs.get("result")
        state = t.state.name
        feasible = state == "COMPLETE" and result is not None and limits.feasible(result)
        reason = t.user_attrs.get("failure_reason", "")
        rows.append(trial_record(number, state, arch, result, feasible, reason, "optuna"))
    return pd.DataFrame(rows, columns=TRIAL_COLUMNS)


def reseed(sampler: optuna.samplers.BaseSampler, seed: int, slot: int, attempt: int) -> None:
    """Seed every random state of ``sampler`` from (seed, slot, attempt): the ``attempt``-th ask for the
    ``slot``-th counted trial draws the same whichever process makes it, so a search that is killed and
    resumed suggests what an uninterrupted one would (Optuna's samplers do not persist their random state)."""
    states: list[Any] = []
    seen: set[int] = set()

    def walk(obj: Any, depth: int) -> None:
        if id(obj) in seen or depth > 3:
            return
        seen.add(id(obj))
        if hasattr(obj, "rng") and type(obj).__name__ == "LazyRandomState":
            states.append(obj)
            return
        for value in getattr(obj, "__dict__", {}).values():
            if isinstance(value, optuna.samplers.BaseSampler) or type(value).__name__ in (
                "LazyRandomState", "NSGAIIChildGenerationStrategy"
            ):
                walk(value, depth + 1)

    walk(sampler, 0)
    for k, state in enumerate(states):
        state.rng.seed(int(np.random.SeedSequence([seed, slot, attempt, k]).generate_state(1)[0]))


def front_size(study: optuna.Study) -> int:
    """Distinct architectures on the study's feasible Pareto front (Optuna's ``best_trials``)."""
    return len({t.user_attrs.get("arch_id") for t in study.best_trials})


def _tell_repeat(study: optuna.Study, trial: optuna.trial.Trial, first: optuna.trial.FrozenTrial) -> None:
    """Tell a repeated architecture what its first trial was told, marked as a repeat of it."""
    trial.set_user_attr(DUPLICATE, first.number)
    if first.state == TrialState.COMPLETE:
        for key, value in (first.constraints or {}).items():
            trial.set_constraint(key, value)
        trial.set_user_attr("constraints", list(first.user_attrs.get("constraints", [])))
        study.tell(trial, first.values)
    else:
        study.tell(trial, state=TrialState.FAIL)


def run_optuna_search(
    run_dir: str | Path, settings: SearchSettings, evaluator: CandidateEvaluator, progress: bool = True,
) -> pd.DataFrame:
    """Run (or resume) the search until ``settings.trials`` trials have finished; returns the trial table.

    Raises:
        RunLockedError: another process drives the run directory.
    """
    with drive(run_dir, "search"):
        return _run_optuna_search(Path(run_dir), settings, evaluator, progress)


def _run_optuna_search(
    run_dir: Path, settings: SearchSettings, evaluator: CandidateEvaluator, progress: bool,
) -> pd.DataFrame:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(run_dir, settings, evaluator.space)
    check_settings(run_dir, evaluator.settings, getattr(evaluator, "weights_digest", None))
    objectives = list(settings.objectives)
    done = finished_count(study)
    seen = first_trials_by_arch(study)
    references: list[dict[str, Any]] = []

    def save() -> pd.DataFrame:
        table = study_table(study, settings.limits)
        if references:
            table = pd.concat([table, pd.DataFrame(references, columns=TRIAL_COLUMNS)], ignore_index=True)
        save_trials(table, run_dir)
        return table

    bar = tqdm(total=settings.trials, initial=min(done, settings.trials), desc="search", unit="trial",
               disable=not progress, dynamic_ncols=True)
    table = save()
    repeats = 0
    resumed = stale_trials(study)
    while done < settings.trials or resumed:
        if resumed:  # a trial the stopped process was scoring: finish it first
            trial = resumed.pop(0)
            try:
                arch = evaluator.space.suggest(optuna.trial.FixedTrial(trial.params))
            except ValueError:  # stopped before its architecture was chosen: drop it, ask afresh
                study.set_user_attr("interrupted", [*study.user_attrs.get("interrupted", []), trial.number])
                study.tell(trial, state=TrialState.FAIL)
                continue
        else:
            reseed(study.sampler, settings.seed, done, repeats)
            trial = study.ask()
            arch = evaluator.space.suggest(trial)
        trial.set_user_attr("arch", arch.canonical_json())
        trial.set_user_attr("arch_id", arch.arch_id)
        if arch.arch_id in seen:
            _tell_repeat(study, trial, seen[arch.arch_id])
            repeats += 1
            if repeats >= MAX_CONSECUTIVE_REPEATS:
                bar.write(f"search: the sampler repeated known architectures {repeats} times in a row; the space "
                          f"holds about {len(seen)} distinct ones, stopping at {done} trials")
                break
            continue
        repeats = 0
        result, values, reason = score(evaluator.evaluate, arch, objectives)
        if result is None:
            trial.set_user_attr("failure_reason", reason)
            frozen = study.tell(trial, state=TrialState.FAIL)
        else:
            trial.set_user_attr("result", result)
            tell_constraints(trial, settings.limits, result)
            frozen = study.tell(trial, values)
        seen[arch.arch_id] = frozen
        done += 1
        table = save()
        last = float(result["accuracy"]) if result is not None else math.nan
        bar.set_postfix(pareto=front_size(study), last=f"{last:.1f}%" if math.isfinite(last) else "failed")
        bar.update()
    bar.close()
    if settings.references:
        references.extend(reference_rows(evaluator.space, evaluator.evaluate, settings.limits, "optuna", progress))
        table = save()
    return table


__all__ = [
    "BACKEND", "DUPLICATE", "INTERRUPTED", "SAMPLERS", "STUDY_NAME", "SearchSettings", "check_settings", "check_study",
    "create_run_study", "finished_count", "journal_storage", "load_run_study", "make_sampler", "name_metrics",
    "nsga2_population", "open_study", "run_optuna_search", "stale_trials", "study_table", "warm_start_archs",
    "warm_start_params",
]
