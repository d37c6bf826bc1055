"""The Ray Tune search backend: the Optuna runner's sampler, objectives and constraints, with the
trials spread over the workers of a Ray instance.

``run_ray_search`` gives Ray Tune an ``OptunaSearch`` searcher built from the same Optuna sampler as the
Optuna runner (``make_sampler``) and a define-by-run space (``SearchSpace.suggest``). Every trial runs
``ray_worker.evaluate_candidate`` in a Ray worker process, on the instance ``ray_cluster`` starts or joins.
A candidate that fails (out of memory, a non-finite score) reports a failure marker and its reason: the
searcher tells Optuna the trial failed, the trial table records the reason, and the search goes on. Limits are
Optuna constraints, as in the Optuna runner: the worker reports each limit's violation and, before the
searcher tells Optuna a trial's values, it sets them on the Optuna trial (``Trial.set_constraint``, and
the ``constraints`` user attribute), where the samplers read them.

The Optuna study: the searcher keeps it in the run's journal (``RUN_DIR/search/journal.log``, study
``STUDY_NAME``), created as the Optuna runner creates its own (``create_run_study``), so
``optuna.load_study`` and optuna-dashboard open a Ray search as they open an Optuna one. Each searched
trial carries its ``arch`` and ``arch_id``; a sampler's repeat is ``duplicate_of`` the first trial, as in
the Optuna runner. A journal that the Optuna runner writes is refused (``check_study``).

Storage and resuming: the experiment lives in ``RUN_DIR/search/ray`` (keep the run directory on
shared storage for a multi-node cluster; the evaluators' result cache sits beside it in
``RUN_DIR/search/cache``). Running the command again restores the experiment with ``Tuner.restore``:
finished trials are kept, trials that were running when the driver stopped (or whose worker died) run
again under the same number (Tune retries a trial whose worker dies; one it gives up on, as when a node
dies with a trial queued on its reused actor, is run again by restoring the experiment at once, up to
``LOST_TRIAL_ROUNDS`` times), and new trials are created until ``trials`` trials exist in all, so
asking for more trials continues a finished search and asking for as many evaluates nothing new. A restore
reads only what this user's mixnas wrote: ``check_private`` refuses an experiment other users could write,
and ``mixnas.search.seal`` refuses any state file Tune would unpickle that carries no seal of this user's key
(``TrialBudget.save_to_dir`` seals each save before Tune copies it to the experiment).
Tune saves the searcher (its Optuna study included) every so often, so after a ``kill -9`` the restored
searcher can be older than the journal: ``ConstrainedOptunaSearch.reopen`` takes the journal as the truth
and hands out the trials that the saved searcher missed again, under their own Optuna trials, instead of
asking for new ones; a trial already told is not told twice. The journal holds each trial once.

Ray quirk (2.60): ``Tuner.restore`` brings back the first run's ``TuneConfig``, ``num_samples`` and the
search algorithm included; only ``param_space`` can be given again. The current run's trial budget,
concurrency and progress flag therefore travel in ``param_space`` under ``RUN_KEY``; Tune hands that to
``SearchAlgorithm.set_search_properties`` on every start, and ``TrialBudget`` applies it after the
saved state is restored. Trials created by an earlier run keep the resources they were created with.

Networking and the instance's life: ``mixnas.search.ray_cluster``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState
from ray import tune
from ray.tune.search import Searcher, SearchGenerator
from ray.tune.search.concurrency_limiter import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from tqdm.auto import tqdm

from mixnas.atomic import atomic_write_text
from mixnas.errors import CheckpointError, ConfigError
from mixnas.lock import drive
from mixnas.run_dir import RunDir
from mixnas.search import seal
from mixnas.search._shared import Limits, SearchSettings, failure_reason, reference_rows, trial_record
from mixnas.search._study import (
    BACKEND,
    DUPLICATE,
    MAX_CONSECUTIVE_REPEATS,
    STUDY_NAME,
    check_settings,
    check_study,
    create_run_study,
    journal_storage,
    load_run_study,
    make_sampler,
    warm_start_params,
)
from mixnas.search.evaluator import CandidateEvaluator, EvalSettings
from mixnas.search.ray_cluster import RaySettings, start_ray, stop_ray
from mixnas.search.ray_worker import CONSTRAINT_PREFIX, FAILED, make_trainable
from mixnas.search_space import ArchConfig, SearchSpace
from mixnas.training import read_space
from mixnas.trials import OBJECTIVES, TRIAL_COLUMNS, objective_column, save_trials

EXPERIMENT_NAME = RunDir.RAY
SETTINGS_FILE = RunDir.RAY_SETTINGS
RUN_KEY = "mixnas_run"
# Tune runs a trial again this many times when its worker or node dies (FailureConfig.max_failures).
TRIAL_MAX_FAILURES = 3
# How many times run_ray_search restores the experiment to run trials Tune gave up on for a dead worker.
LOST_TRIAL_ROUNDS = 3


class ArchSpace:
    """Define-by-run space for ``OptunaSearch``: one architecture per trial, passed on as constants.

    Args:
        space: the search space.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: Any) -> dict[str, Any]:
        arch = self.space.suggest(trial)
        # Optuna numbers trials in the order they are asked for: the trial table's ``number``.
        return {"arch": arch.canonical_json(), "number": trial.number}


class ConstrainedOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that gives the sampler each trial's constraints, records failed candidates, and never
    runs an architecture twice.

    Ray's ``OptunaSearch`` tells Optuna itself; before it does, this sets the reported violations
    (``constraint.<limit>`` keys) on the Optuna trial with ``Trial.set_constraint`` and as the
    ``constraints`` user attribute, as the Optuna runner's ``tell_constraints`` does, so the samplers
    rank infeasible trials behind feasible ones. A result marked ``failed`` is told as a failed trial
    (with its ``failure_reason`` attribute), never as values.

    Repeats: when the sampler suggests an architecture already scored, the Optuna trial is told what the
    first one was (its values and constraints; PRUNED while the first is still running), marked
    ``duplicate_of``, and the sampler is asked again, so no Tune trial (and no slot of the budget) goes to
    it. Accepted trials are numbered 0, 1, 2, ... (the trial table's ``number``); every Optuna trial carries
    its ``arch`` and ``arch_id`` as user attributes, as in the Optuna runner.

    A trial that Tune gives up for its worker (``error``) is not told: a restore runs it again under the same
    Tune trial (``resume_errored``), and that run's result is told. With a journal (``storage``), ``reopen``
    brings a restored searcher up to date with it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._known: dict[str, dict[str, Any]] = {}  # arch_id -> {"state", "number", "values", "constraints"}
        self._arch_of: dict[str, str] = {}  # Tune trial id -> arch_id
        self._next_number = 0
        self._orphans: list[int] = []  # Optuna trial ids to hand out again before asking the sampler (reopen)

    def suggest(self, trial_id: str) -> dict | str | None:
        for _ in range(MAX_CONSECUTIVE_REPEATS):
            if trial_id not in self._ot_trials and self._orphans:
                self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, self._orphans.pop(0))
            config = super().suggest(trial_id)
            if not isinstance(config, dict) or "arch" not in config:
                return config
            arch_id = ArchConfig.from_dict(json.loads(config["arch"])).arch_id
            known = self._known.get(arch_id)
            ot_trial = self._ot_trials[trial_id]
            told = self._stored(ot_trial).state.is_finished()  # an orphan told before the driver stopped
            if not told:
                ot_trial.set_user_attr("arch", config["arch"])
                ot_trial.set_user_attr("arch_id", arch_id)
            if known is None:
                number = self._next_number
                self._next_number += 1
                self._known[arch_id] = {"state": "running", "number": number}
                self._arch_of[trial_id] = arch_id
                return {**config, "number": number}
            self._ot_trials.pop(trial_id)
            if not told:
                self._tell_repeat(ot_trial, known)
        logging.getLogger(__name__).warning(
            "search: the sampler repeated known architectures %d times in a row; the space holds about %d "
            "distinct ones, stopping", MAX_CONSECUTIVE_REPEATS, len(self._known))
        return Searcher.FINISHED

    def _tell_repeat(self, ot_trial: optuna.trial.Trial, known: dict[str, Any]) -> None:
        ot_trial.set_user_attr(DUPLICATE, known["number"])
        if known["state"] == "complete":
            for key, value in known["constraints"].items():
                ot_trial.set_constraint(key, value)
            ot_trial.set_user_attr("constraints", list(known["constraints"].values()))
            self._ot_study.tell(ot_trial, known["values"])
        elif known["state"] == "failed":
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
        else:  # its first trial is still being scored: nothing to tell yet
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        known = self._known.get(self._arch_of.get(trial_id, ""))
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and trial_id not in self._completed_trials:
            stored = self._stored(ot_trial)
            if stored.state.is_finished():  # told before the driver stopped, after Tune last saved this searcher
                if known is not None:
                    known.update(self._outcome(stored))
                self._completed_trials.add(trial_id)
                return
            if error and not result:  # its worker died: left running, a restore runs it again
                return
        if ot_trial is None or trial_id in self._completed_trials or not result:
            if known is not None and (error or not result):
                known["state"] = "failed"
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        if result.get(FAILED):
            ot_trial.set_user_attr("failure_reason", result.get("failure_reason", ""))
            if known is not None:
                known["state"] = "failed"
            super().on_trial_complete(trial_id, result=None, error=True)
            return
        named = {k[len(CONSTRAINT_PREFIX):]: float(v) for k, v in result.items() if k.startswith(CONSTRAINT_PREFIX)}
        for key, value in named.items():
            ot_trial.set_constraint(key, value)
        ot_trial.set_user_attr("constraints", list(named.values()))
        if known is not None:
            metrics = self._metric if isinstance(self._metric, list) else [self._metric]
            known.update(state="complete", values=[float(result[m]) for m in metrics], constraints=named)
        super().on_trial_complete(trial_id, result=result, error=error)

    def _stored(self, ot_trial: optuna.trial.Trial) -> optuna.trial.FrozenTrial:
        """The trial as the storage holds it now (a ``Trial`` caches what it was when made)."""
        return self._ot_study._storage.get_trial(ot_trial._trial_id)

    @staticmethod
    def _outcome(stored: optuna.trial.FrozenTrial) -> dict[str, Any]:
        """What a repeat of a told trial's architecture is told (``_tell_repeat``)."""
        if stored.state == TrialState.COMPLETE:
            return {"state": "complete", "values": list(stored.values), "constraints": dict(stored.constraints)}
        return {"state": "failed" if stored.state == TrialState.FAIL else "running"}

    def reopen(self, journal: Path) -> None:
        """Continue in the run's journal after Tune restored this searcher, at ``journal``'s current path.

        Tune saves the searcher every so often (and on a clean stop), so after a ``kill -9`` the restored
        state can be older than the journal: trials asked or told since then are in the journal only. The
        journal is the truth: a trial it holds that the restored state does not know (not a repeat, not
        waiting in the queue) is handed out again before the sampler is asked (``suggest``), so its Tune trial
        reuses its Optuna trial; a trial told since is not told again (``on_trial_complete``). A searcher
        saved before searchers wrote the journal (its study in memory) moves its trials into the journal's
        empty study.

        Args:
            journal: the run's journal (``RunDir.journal``), which holds the study (``prepare_journal``).

        Raises:
            ConfigError: the journal lacks trials the restored searcher knows (replaced or cut short).
        """
        storage = journal_storage(journal)
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage, sampler=self._ot_study.sampler,
                                  pruner=optuna.pruners.NopPruner())
        trials = study.get_trials(deepcopy=False)
        if self._storage is None and not trials:
            study.add_trials(self._ot_study.get_trials(deepcopy=False))
            trials = study.get_trials(deepcopy=False)
        numbers = {tid: t.number for tid, t in self._ot_trials.items()}
        if any(n >= len(trials) for n in numbers.values()):
            raise ConfigError(
                f"{journal}: lacks trials of the Ray search it belongs to (replaced or cut short?); remove "
                f"{journal.parent} and the trial table to search again from the start"
            )
        self._storage, self._study_name, self._ot_study = storage, STUDY_NAME, study
        self._ot_trials = {tid: optuna.trial.Trial(study, trials[n]._trial_id) for tid, n in numbers.items()}
        known = set(numbers.values())
        self._orphans = [t._trial_id for t in trials if t.number not in known and DUPLICATE not in t.user_attrs
                         and t.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.FAIL)]


class TrialBudget(SearchGenerator):
    """Tune's search generator with a trial budget, concurrency and progress bar that a restore can change,
    and the run's journal, which a restored searcher reopens (``ConstrainedOptunaSearch.reopen``) at its
    current path.

    Args:
        searcher: the searcher (a ``ConcurrencyLimiter`` around ``ConstrainedOptunaSearch``).
        trials: trials to create in all (restored ones included).
        progress: show a progress bar of finished trials.
    """

    def __init__(self, searcher: Searcher, trials: int, progress: bool) -> None:
        super().__init__(searcher)
        self.trials = trials
        self.progress = progress
        self.max_concurrent: int | None = None
        self.journal: str | None = None
        self.experiment: str | None = None
        self._done: set[str] = set()
        self._bar: tqdm | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_bar"] = None
        return state

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        run = (config or {}).get(RUN_KEY)
        if run:
            self.trials, self.progress = int(run["trials"]), bool(run["progress"])
            self.max_concurrent = int(run["max_concurrent"])
            self.journal = run.get("journal")
            self.experiment = run.get("experiment")
        # Tuner.restore brought the searcher back as it was created; Tune restores its saved state next
        # (set_state), if it saved one. Either way, the journal may be ahead of it.
        searcher = self.optuna_search()
        if self.journal and searcher is not None and searcher._storage is not None:
            searcher.reopen(Path(self.journal))
        rest = {k: v for k, v in (config or {}).items() if k != RUN_KEY}
        return super().set_search_properties(metric, mode, rest, **spec)

    def add_configurations(self, experiments: Any) -> None:
        super().add_configurations(experiments)
        self._total_samples = self.trials
        self._apply_concurrency()
        self._update_bar()

    def get_state(self) -> dict:
        return {**super().get_state(), "done": sorted(self._done)}

    def save_to_dir(self, dirpath: str, session_str: str = "default") -> None:
        # Tune calls this after writing its experiment state to the staging folder and before copying that
        # folder to the experiment: seal what is about to arrive there (mixnas.search.seal).
        super().save_to_dir(dirpath, session_str)
        experiment = getattr(self, "experiment", None)  # absent from a generator pickled before seals
        if experiment:
            seal.seal_folder(Path(dirpath), Path(experiment) / seal.SEAL_LOG, skip=[SETTINGS_FILE])

    def has_checkpoint(self, dirpath: str) -> bool:
        return super().has_checkpoint(self._sealed_folder(dirpath))

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(self._sealed_folder(dirpath))

    def _sealed_folder(self, staging: str) -> str:
        """Where a restore reads the search's saved state: the experiment, whose files were checked against
        their seals, not the driver's staging folder that Tune hands over. Tune fills that folder from the
        experiment, but in a Ray session that outlives a run (a cluster joined with ``--address``, or two
        searches in one process) it may still hold a newer state of an earlier run, one the experiment never
        received (a driver killed between Tune's save and its copy) and no seal covers."""
        return self.experiment or staging

    def set_state(self, state: dict) -> None:
        super().set_state(state)  # after Tune restored the searcher's saved state
        searcher = self.optuna_search()
        if self.journal and searcher is not None:
            searcher.reopen(Path(self.journal))
        self._done = set(state.get("done", []))
        # The saved state holds the first run's budget: this run's decides whether more trials are created.
        self._total_samples = self.trials
        self._finished = False
        self._apply_concurrency()
        self._update_bar()

    def create_trial_if_possible(self, experiment_spec: dict) -> Any:
        # RUN_KEY is for the generator, not a trial's config.
        spec = {**experiment_spec, "config": {k: v for k, v in experiment_spec.get("config", {}).items()
                                              if k != RUN_KEY}}
        return super().create_trial_if_possible(spec)

    def optuna_search(self) -> ConstrainedOptunaSearch | None:
        """The Optuna searcher inside the wrappers (the concurrency limiter), if it is one."""
        searcher: Any = self.searcher
        while not isinstance(searcher, ConstrainedOptunaSearch) and hasattr(searcher, "searcher"):
            searcher = searcher.searcher
        return searcher if isinstance(searcher, ConstrainedOptunaSearch) else None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        super().on_trial_complete(trial_id, result=result, error=error)
        # The concurrency limiter passes on only the trials it holds live, and a restored errored trial that
        # runs again is not among them: its result still goes to the Optuna trial left running for it.
        searcher = self.optuna_search()
        if searcher is not None and trial_id in searcher._ot_trials and trial_id not in searcher._completed_trials:
            searcher.on_trial_complete(trial_id, result=result, error=error)
        self._done.add(trial_id)
        last = "failed"
        if result and not result.get(FAILED) and math.isfinite(float(result.get("accuracy", math.nan))):
            last = f"{float(result['accuracy']):.1f}%"
        self._update_bar(last)

    def _apply_concurrency(self) -> None:
        if self.max_concurrent is not None and isinstance(self.searcher, ConcurrencyLimiter):
            self.searcher.set_max_concurrency(self.max_concurrent)

    def _update_bar(self, last: str | None = None) -> None:
        if not self.progress:
            return
        done = min(len(self._done), self.trials)
        if self._bar is None:
            self._bar = tqdm(total=self.trials, initial=done, desc="search (ray)", unit="trial", dynamic_ncols=True)
        elif done > self._bar.n:
            self._bar.update(done - self._bar.n)
        if last is not None:
            self._bar.set_postfix(last=last)
        if done >= self.trials:
            self._bar.close()
            self._bar = None
            self.progress = False  # one bar per run


def trial_dirname(trial: Any) -> str:
    """A trial's directory under the experiment: its number and Tune's trial id.

    Args:
        trial: Tune's trial (its config holds ``number``).
    """
    return f"trial_{int(trial.config.get('number', -1)):05d}_{trial.trial_id}"


@contextlib.contextmanager
def _quiet_tune() -> Iterator[None]:
    """Tune's default output engine prints an experiment table and paths even at ``verbose=0``; the
    legacy engine prints nothing at 0 (progress is this module's bar)."""
    saved = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved


def make_search(space: SearchSpace, settings: SearchSettings, ray_settings: RaySettings, progress: bool,
                cost_table_cache: str | Path | None = None, journal: Path | None = None) -> TrialBudget:
    """The search algorithm: the Optuna runner's sampler behind Tune's searcher, concurrency and budget; the
    warm start's architectures are Tune's ``points_to_evaluate`` (queued in the Optuna study).

    Args:
        space: the search space.
        settings: objectives (and their directions), sampler, seed and total trials.
        ray_settings: trials evaluated at once.
        progress: show a progress bar.
        cost_table_cache: where the guided sampler keeps the space's cost table.
        journal: the run's journal, holding the study (``prepare_journal``); None keeps it in memory.
    """
    objectives = list(settings.objectives)
    storage = {"storage": journal_storage(journal), "study_name": STUDY_NAME} if journal is not None else {}
    searcher = ConstrainedOptunaSearch(
        space=ArchSpace(space),
        metric=[objective_column(o) for o in objectives],
        mode=[OBJECTIVES[o] for o in objectives],
        sampler=make_sampler(settings.sampler, settings.trials, settings.seed, space=space,
                             objectives=objectives, limits=settings.limits, cost_table_cache=cost_table_cache),
        points_to_evaluate=warm_start_params(space, settings, cost_table_cache) or None,
        **storage,
    )
    limited = ConcurrencyLimiter(searcher, max_concurrent=ray_settings.max_concurrent)
    return TrialBudget(limited, settings.trials, progress)


def check_private(experiment: Path, run: RunDir) -> None:
    """Refuse to restore an experiment whose pickles another user could have written, as ssh refuses keys
    that others can write: restoring unpickles Ray Tune's ``tuner.pkl`` and searcher states, and a pickle
    runs whatever code it names. The run directory, the experiment folder and every pickle in it must
    belong to this user and be writable by no one else.

    Raises:
        ConfigError: naming the first path that fails, its owner and mode, and what to do.
    """
    if not experiment.is_dir():
        return
    uid = os.getuid()
    paths = [run.path, run.search_dir, experiment]
    paths += sorted(p for p in experiment.rglob("*.pkl") if not p.is_symlink())
    paths += sorted(p for p in experiment.rglob("*.pkl") if p.is_symlink())
    for path in paths:
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if path.is_symlink():
            problem = "is a symbolic link"
        elif info.st_uid != uid:
            problem = f"belongs to uid {info.st_uid}, not to you (uid {uid})"
        elif info.st_mode & 0o022:
            problem = f"is writable by other users (mode {stat.S_IMODE(info.st_mode):o})"
        else:
            continue
        raise ConfigError(
            f"{path}: {problem}; restoring the Ray search would unpickle files others could have written (a "
            f"pickle can run code): fix the ownership and permissions (chmod go-w) or search in a new run directory"
        )


def check_experiment(experiment: Path, settings: SearchSettings) -> None:
    """Refuse to restore an experiment that optimised other objectives (its trials would not compare).

    Args:
        experiment: the experiment directory (``RUN_DIR/search/ray``).
        settings: this run's objectives.

    Raises:
        ConfigError: the experiment optimised other objectives.
    """
    path = experiment / SETTINGS_FILE
    if not path.is_file():
        return
    stored = json.loads(path.read_text()).get("objectives")
    if stored is not None and list(stored) != list(settings.objectives):
        raise ConfigError(
            f"{experiment}: this search optimised {','.join(stored)}; --objectives {','.join(settings.objectives)} "
            f"would mix incompatible trials (use another run directory or the same objectives)"
        )


def write_experiment_settings(experiment: Path, settings: SearchSettings) -> None:
    """Record what ``check_experiment`` and ``prepare_journal`` check on a restore: the objectives, and that
    the experiment's searcher writes the run's journal."""
    atomic_write_text(experiment / SETTINGS_FILE,
                      json.dumps({"objectives": list(settings.objectives), "journal": True}))


def prepare_journal(run: RunDir, settings: SearchSettings) -> None:
    """Make sure the run's journal holds the study this Ray search continues or starts, before Ray starts.

    A new experiment gets a new study (``create_run_study``); a restored one continues its own. An experiment
    from before searchers wrote the journal gets an empty study, which its restored searcher fills
    (``ConstrainedOptunaSearch.reopen``). A study with no finished trial and no experiment to restore (a
    start stopped before Tune saved anything) is replaced.

    Raises:
        ConfigError: the journal holds a study of the Optuna backend or for other objectives, trials of a
            Ray experiment that is gone, or no study for an experiment that wrote one.
    """
    experiment = run.ray_dir
    restorable = tune.Tuner.can_restore(str(experiment))
    storage = journal_storage(run.journal)
    study = load_run_study(storage)
    if (study is not None and study.user_attrs.get(BACKEND) == "ray" and not restorable
            and not any(t.state.is_finished() for t in study.get_trials(deepcopy=False))):
        optuna.delete_study(study_name=STUDY_NAME, storage=storage)
        study = None
    if study is not None:
        check_study(study, settings, "ray", run.journal)
        if not restorable:
            raise ConfigError(
                f"{run.journal}: holds the trials of a Ray search whose experiment ({experiment}) is gone; "
                f"remove {run.search_dir} and the trial table to search again from the start, or search "
                f"in another run directory"
            )
    elif restorable and (experiment / SETTINGS_FILE).is_file() and json.loads(
            (experiment / SETTINGS_FILE).read_text()).get("journal"):
        raise ConfigError(
            f"{run.journal}: missing, but the Ray search in {experiment} wrote its trials there; restore the "
            f"file, or remove {run.search_dir} and the trial table to search again from the start"
        )
    if study is None:
        create_run_study(storage, settings, "ray")
        if restorable:  # an experiment from before the journal: its searcher moves its trials there
            write_experiment_settings(experiment, settings)


def results_table(results: Any, limits: Limits) -> pd.DataFrame:
    """The trial table (``TRIAL_COLUMNS``) of a Ray Tune ``ResultGrid``, in the order trials were created.

    Args:
        results: Tune's results (each with ``config``, ``metrics`` and ``error``).
        limits: decide ``feasible`` for complete trials.
    """
    rows = []
    for result in results:
        config, metrics = result.config or {}, result.metrics or {}
        arch = ArchConfig.from_dict(json.loads(config["arch"])) if "arch" in config else None
        number = int(config.get("number", -1))
        if result.error is not None:
            rows.append(trial_record(number, "FAIL", arch, None, False, failure_reason(result.error), "ray"))
        elif FAILED not in metrics:  # created but not finished (the driver stopped); a restore runs it
            rows.append(trial_record(number, "RUNNING", arch, None, False, "", "ray"))
        elif metrics[FAILED]:
            rows.append(trial_record(number, "FAIL", arch, None, False, metrics.get("failure_reason", ""), "ray"))
        else:
            rows.append(trial_record(number, "COMPLETE", arch, metrics, limits.feasible(metrics), "", "ray"))
    rows.sort(key=lambda r: r["number"])
    return pd.DataFrame(rows, columns=TRIAL_COLUMNS)


def lost_worker(error: BaseException) -> bool:
    """Whether a trial failed because its worker process or node died, not because its candidate did.

    A failing candidate is reported, never raised (``evaluate_candidate``); an exception raised in the
    trainable arrives as a ``RayTaskError`` and is not the infrastructure's.
    """
    from ray import exceptions

    infrastructure = (exceptions.RayActorError, exceptions.NodeDiedError, exceptions.WorkerCrashedError,
                      exceptions.LocalRayletDiedError, exceptions.ObjectLostError)
    return isinstance(error, infrastructure) and not isinstance(error, exceptions.RayTaskError)


def _fit(
    trainable: Any, param_space: dict[str, Any], space: SearchSpace, settings: SearchSettings,
    ray_settings: RaySettings, run: RunDir, progress: bool,
) -> Any:
    """Create the experiment (``RUN_DIR/search/ray``) or restore it (errored trials run again), and run it to
    its trial budget."""
    experiment = run.ray_dir
    if tune.Tuner.can_restore(str(experiment)):  # its seals were verified before (_run_ray_search)
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True,
                                   param_space=param_space)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=make_search(space, settings, ray_settings, progress, cost_table_cache=run.cost_table,
                                       journal=run.journal),
                num_samples=settings.trials,
                reuse_actors=True, trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT_NAME, storage_path=str(run.search_dir), verbose=0,
                # A trial whose worker or node dies runs again (elsewhere); a failing candidate
                # reports its failure instead of raising, so it is not retried.
                failure_config=tune.FailureConfig(max_failures=TRIAL_MAX_FAILURES),
            ),
        )
        write_experiment_settings(experiment, settings)
    seal.seal_folder(experiment, experiment / seal.SEAL_LOG, skip=[SETTINGS_FILE])  # tuner.pkl, as Tune wrote it
    with _quiet_tune():
        results = tuner.fit()
    return results


def run_ray_search(
    run_dir: RunDir | str | Path, settings: SearchSettings, evaluation: EvalSettings, ray_settings: RaySettings,
    progress: bool = True,
) -> pd.DataFrame:
    """Run (or restore and continue) the search on Ray Tune until ``settings.trials`` trials exist.

    Args:
        run_dir: a supernet run directory (a ``RunDir`` or its path); the experiment goes to
            ``RUN_DIR/search/ray`` and the trial table to ``RUN_DIR/trials.parquet`` (and ``.csv``).
        settings: objectives, sampler, limits, seed, total trials and whether to score the references.
        evaluation: how candidates are scored (in the workers, and the references in this process).
        ray_settings: the cluster address and the resources and concurrency of trials.
        progress: show a progress bar.

    Returns:
        The trial table (``TRIAL_COLUMNS``): the searched trials by number, then the references.

    Raises:
        KeyboardInterrupt: the search was interrupted (Tune saved it; the trial table is written).
        CheckpointError: ``run_dir`` holds no trained supernet.
        ConfigError: the restored experiment optimised other objectives or scored candidates with other
            settings, or a local Ray instance cannot give a trial the resources it asks for.
    """
    run = RunDir.of(run_dir)
    with drive(run, "search --backend ray"):
        return _run_ray_search(run.resolved(), settings, evaluation, ray_settings, progress)


def _run_ray_search(
    run: RunDir, settings: SearchSettings, evaluation: EvalSettings, ray_settings: RaySettings, progress: bool,
) -> pd.DataFrame:
    """``run_ray_search`` with the lock held; ``run`` is named by its absolute path (the workers open it)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = read_space(run)
    if not run.weights.is_file():
        raise CheckpointError(f"{run.weights}: missing; train the supernet first (mixnas supernet train)")
    experiment = run.ray_dir
    check_experiment(experiment, settings)
    check_private(experiment, run)
    if tune.Tuner.can_restore(str(experiment)):
        seal.verify(experiment, skip=[SETTINGS_FILE])
    prepare_journal(run, settings)
    # As the Optuna runner: a search scores all its candidates alike, with the same weights.
    check_settings(run, evaluation, run.weights_digest())

    started = start_ray(ray_settings, say=print if progress else None)
    try:
        trainable = make_trainable(run, settings, evaluation, ray_settings)
        param_space = {RUN_KEY: {"trials": settings.trials, "progress": progress,
                                 "max_concurrent": ray_settings.max_concurrent, "journal": str(run.journal),
                                 "experiment": str(experiment)}}
        results = _fit(trainable, param_space, space, settings, ray_settings, run, progress)
        for _ in range(LOST_TRIAL_ROUNDS):
            lost = sum(1 for r in results if r.error is not None and lost_worker(r.error))
            interrupted = any(r.error is None and FAILED not in (r.metrics or {}) for r in results)
            if not lost or interrupted:
                break
            # Tune gives a trial up when its worker dies twice before it restarts (a node taken down
            # with a trial queued on its reused actor); restoring runs exactly the errored trials again.
            message = f"search: {lost} trial(s) lost their worker or node; running them again"
            if progress:
                print(message)
            else:
                logging.getLogger(__name__).warning(message)
            seal.verify(experiment, skip=[SETTINGS_FILE])  # the restore reads what Tune has just saved
            results = _fit(trainable, param_space, space, settings, ray_settings, run, progress)
    finally:
        if started:
            stop_ray()

    table = results_table(results, settings.limits)
    save_trials(table, run)
    if (table["state"] == "RUNNING").any():
        # Tune stops on the first Ctrl-C, saves the experiment and returns; stop here as the Optuna runner does.
        raise KeyboardInterrupt("the Ray Tune search was interrupted; running it again restores it")
    if settings.references:
        evaluator = CandidateEvaluator(run, evaluation)
        references = reference_rows(space, evaluator.evaluate, settings.limits, "ray", progress)
        table = pd.concat([table, pd.DataFrame(references, columns=TRIAL_COLUMNS)], ignore_index=True)
        save_trials(table, run)
    return table
