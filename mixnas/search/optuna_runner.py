"""The default search backend: Optuna in process, storage in a journal file in the run directory.

``run_optuna_search`` asks Optuna for architectures (``SearchSpace.suggest``), scores each with the
shared ``CandidateEvaluator`` and tells the objectives back; limits are Optuna constraints (the samplers
rank infeasible trials behind feasible ones; infeasible trials never enter a Pareto front).

Resuming: the study lives in ``RUN_DIR/search/journal.log``. Stopping the process at any moment and
running the same command again continues: finished trials are kept; a trial that was running when the
process stopped is marked failed ("interrupted") and its architecture is queued again, so it is
evaluated (or read from the evaluator's cache) without counting twice; the total of finished trials
reaches the number asked for.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from tqdm.auto import tqdm

from mixnas.results.pareto import pareto_mask
from mixnas.results.store import TRIAL_COLUMNS, save_trials
from mixnas.search.evaluator import (
    SEARCH_DIR,
    SETTINGS_FILE,
    CandidateEvaluator,
    EvalSettings,
    load_settings,
    save_settings,
)
from mixnas.search.trials import Limits, failure_reason, objective_values, optuna_directions, trial_record
from mixnas.search_space import ArchConfig, ConfigError, SearchSpace

STUDY_NAME = "mixnas"
JOURNAL_FILE = "journal.log"
SAMPLERS = ["nsga2", "tpe", "random", "gp"]
INTERRUPTED = "interrupted: the search process stopped while evaluating it"


@dataclass(frozen=True)
class SearchSettings:
    """What to search for and how to sample.

    Args:
        trials: finished trials to reach (complete or failed).
        objectives: canonical objective names (accuracy, gflops, params, latency).
        sampler: nsga2 | tpe | random | gp.
        limits: cost limits, as constraints.
        seed: the sampler's seed.
        references: also evaluate the space's hand-designed references (every stage one mixer, largest sizes).
    """

    trials: int
    objectives: tuple[str, ...] = ("accuracy", "gflops", "latency")
    sampler: str = "nsga2"
    limits: Limits = Limits()
    seed: int = 0
    references: bool = True


def make_sampler(name: str, trials: int, seed: int) -> optuna.samplers.BaseSampler:
    """Optuna's sampler by name. Limits reach the samplers through ``Trial.set_constraint``."""
    if name == "nsga2":
        # Optuna's default population (50) would leave a small search all-random: keep several generations.
        population = max(4, min(50, trials // 5))
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise ConfigError(f"--sampler: unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")


def tell_constraints(trial: optuna.trial.Trial, limits: Limits, result: dict[str, Any]) -> None:
    """Record each limit's violation (<= 0 satisfied) for the sampler and for the trial table."""
    named = limits.named_constraints(result)
    for key, value in named.items():
        trial.set_constraint(key, value)
    trial.set_user_attr("constraints", list(named.values()))


def open_study(run_dir: Path, settings: SearchSettings) -> optuna.Study:
    """Create or load the study in ``RUN_DIR/search/journal.log``; refuse a study with other objectives."""
    path = run_dir / SEARCH_DIR / JOURNAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(path)))
    sampler = make_sampler(settings.sampler, settings.trials, settings.seed)
    directions = optuna_directions(list(settings.objectives))
    try:
        existing = optuna.load_study(study_name=STUDY_NAME, storage=storage, sampler=sampler)
    except KeyError:
        existing = None
    if existing is not None:
        stored = existing.user_attrs.get("objectives")
        if stored is not None and list(stored) != list(settings.objectives):
            raise ConfigError(
                f"{path}: this search optimised {','.join(stored)}; --objectives {','.join(settings.objectives)} "
                f"would mix incompatible trials (use another run directory or the same objectives)"
            )
        return existing
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, sampler=sampler, directions=directions)
    study.set_user_attr("objectives", list(settings.objectives))
    return study


def check_settings(run_dir: Path, settings: EvalSettings) -> None:
    """A resumed search must score candidates as before; the first run records how."""
    if (run_dir / SEARCH_DIR / SETTINGS_FILE).is_file():
        previous = load_settings(run_dir)
        if previous.cache_key() != settings.cache_key():
            changed = [k for k, v in asdict(settings).items()
                       if getattr(previous, k) != v and k != "latency_max_seconds"]
            raise ConfigError(
                f"{run_dir / SEARCH_DIR / SETTINGS_FILE}: this search scored candidates with other settings "
                f"({', '.join(changed)}); use the same options or another run directory"
            )
    save_settings(run_dir, settings)


def recover_interrupted(study: optuna.Study) -> int:
    """Mark trials left RUNNING by a stopped process as failed and queue their architectures again."""
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    interrupted = list(study.user_attrs.get("interrupted", []))
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number}, skip_if_exists=False)
        interrupted.append(t.number)
    if stale:
        study.set_user_attr("interrupted", interrupted)
    return len(stale)


def finished_count(study: optuna.Study) -> int:
    """Trials that count towards the total: complete, or failed for a reason other than interruption."""
    interrupted = set(study.user_attrs.get("interrupted", []))
    return sum(
        1 for t in study.get_trials(deepcopy=False)
        if t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and t.number not in interrupted)
    )


def study_table(study: optuna.Study, limits: Limits) -> pd.DataFrame:
    """The trial table (``TRIAL_COLUMNS``) of every trial in the study."""
    rows = []
    interrupted = set(study.user_attrs.get("interrupted", []))
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING)):
        arch = ArchConfig.from_dict(json.loads(t.user_attrs["arch"])) if "arch" in t.user_attrs else None
        result = t.user_attrs.get("result")
        state = t.state.name
        feasible = state == "COMPLETE" and result is not None and limits.feasible(result)
        reason = INTERRUPTED if t.number in interrupted else t.user_attrs.get("failure_reason", "")
        rows.append(trial_record(t.number, state, arch, result, feasible, reason, "optuna"))
    return pd.DataFrame(rows, columns=TRIAL_COLUMNS)


def reference_rows(space: SearchSpace, evaluator: CandidateEvaluator, limits: Limits, backend: str,
                   progress: bool = True) -> list[dict[str, Any]]:
    """The space's hand-designed references (every stage one mixer, at the largest sizes), scored alike."""
    rows = []
    kinds = space.mixer_types()
    for i, mixer in enumerate(tqdm(kinds, desc="references", disable=not progress, leave=False)):
        arch = space.largest(mixer).with_name(f"all {mixer}")
        try:
            result = evaluator.evaluate(arch)
            rows.append(trial_record(-(i + 1), "COMPLETE", arch, result, limits.feasible(result), "", backend,
                                     is_reference=True, label=f"all {mixer}"))
        except Exception as e:  # a reference that cannot run is reported, not fatal
            rows.append(trial_record(-(i + 1), "FAIL", arch, None, False, failure_reason(e), backend,
                                     is_reference=True, label=f"all {mixer}"))
    return rows


def run_optuna_search(
    run_dir: str | Path, settings: SearchSettings, evaluator: CandidateEvaluator, progress: bool = True,
) -> pd.DataFrame:
    """Run (or resume) the search until ``settings.trials`` trials have finished; returns the trial table."""
    run_dir = Path(run_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(run_dir, settings)
    check_settings(run_dir, evaluator.settings)
    recover_interrupted(study)
    objectives = list(settings.objectives)
    done = finished_count(study)
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
    while done < settings.trials:
        trial = study.ask()
        arch = evaluator.space.suggest(trial)
        trial.set_user_attr("arch", arch.canonical_json())
        try:
            result = evaluator.evaluate(arch)
            values = objective_values(objectives, result)
        except Exception as e:  # a failing candidate is recorded and the search goes on
            trial.set_user_attr("failure_reason", failure_reason(e))
            study.tell(trial, state=TrialState.FAIL)
        else:
            result = {k: v for k, v in result.items() if k != "cached"}
            trial.set_user_attr("result", result)
            tell_constraints(trial, settings.limits, result)
            study.tell(trial, values)
        done += 1
        table = save()
        front = int(pareto_mask(table, objectives).sum())
        bar.set_postfix(pareto=front, last=f"{table.iloc[-1]['accuracy']:.1f}%"
                        if math.isfinite(table.iloc[-1]["accuracy"]) else "failed")
        bar.update()
    bar.close()
    if settings.references:
        references.extend(reference_rows(evaluator.space, evaluator, settings.limits, "optuna", progress))
        table = save()
    return table
