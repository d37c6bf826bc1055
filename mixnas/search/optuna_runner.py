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
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState
from tqdm.auto import tqdm

from mixnas.lock import drive
from mixnas.run_dir import RunDir
from mixnas.search._shared import (
    Limits,
    SearchSettings,
    reference_rows,
    score,
    trial_record,
)
from mixnas.search._study import (
    BACKEND,
    DUPLICATE,
    MAX_CONSECUTIVE_REPEATS,
    SAMPLERS,
    STUDY_NAME,
    WARM_START,
    check_settings,
    check_study,
    create_run_study,
    journal_storage,
    load_run_study,
    make_sampler,
    name_metrics,
    nsga2_population,
    tell_constraints,
    warm_start_archs,
    warm_start_params,
)
from mixnas.search.evaluator import CandidateEvaluator
from mixnas.search_space import ArchConfig, SearchSpace
from mixnas.trials import TRIAL_COLUMNS, save_trials

INTERRUPTED = "interrupted: the search process stopped while evaluating it"


def open_study(run_dir: RunDir | str | Path, settings: SearchSettings, space: SearchSpace | None = None
               ) -> optuna.Study:
    """Create or load the study in ``RUN_DIR/search/journal.log``; refuse a study with other objectives or
    one the Ray backend searches (``check_study``). A new study gets the warm start (``warm_start_archs``)
    queued as its first trials.

    Args:
        run_dir: the run directory (a ``RunDir`` or its path).
        settings: the search's settings.
        space: the search space (the guided sampler needs it, and the warm start is queued only with it;
            the run's when None and the sampler is guided).
    """
    run = RunDir.of(run_dir)
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
    run_dir: RunDir | str | Path, settings: SearchSettings, evaluator: CandidateEvaluator, progress: bool = True,
) -> pd.DataFrame:
    """Run (or resume) the search until ``settings.trials`` trials have finished; returns the trial table.

    Raises:
        RunLockedError: another process drives the run directory.
    """
    run = RunDir.of(run_dir)
    with drive(run, "search"):
        return _run_optuna_search(run, settings, evaluator, progress)


def _run_optuna_search(
    run: RunDir, settings: SearchSettings, evaluator: CandidateEvaluator, progress: bool,
) -> pd.DataFrame:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(run, settings, evaluator.space)
    check_settings(run, evaluator.settings, getattr(evaluator, "weights_digest", None))
    objectives = list(settings.objectives)
    done = finished_count(study)
    seen = first_trials_by_arch(study)
    references: list[dict[str, Any]] = []

    def save() -> pd.DataFrame:
        table = study_table(study, settings.limits)
        if references:
            table = pd.concat([table, pd.DataFrame(references, columns=TRIAL_COLUMNS)], ignore_index=True)
        save_trials(table, run)
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
