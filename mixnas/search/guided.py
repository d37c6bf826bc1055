"""The guided sampler: evolution screened by an accuracy predictor, as an Optuna sampler.

One-shot NAS systems that reach a good front within a small budget (once-for-all, NASViT, HAT) let a
cheap model screen many candidates between supernet evaluations. ``GuidedSampler`` does that inside
Optuna, so the Optuna and Ray Tune runners, the journal, resume and constraints work as with any sampler.
For each new trial it:

1. reads the study: the scored candidates (their objective values and constraints), the ones being scored
   or queued (their architectures, so they are not proposed again) and the failed ones;
2. fits ``AccuracyPredictor`` on the scored candidates (and, when latency is an objective, a second one on
   log latency);
3. makes a pool of ``pool_size`` candidates (by default 10^4): mutations and crossovers of the current
   Pareto front and of the most accurate candidates, plus uniform samples; drops those already seen;
4. gives each its exact GFLOPs and parameters (``CostTable``) and its predicted accuracy, optimistic by
   ``kappa`` standard deviations of the ensemble, and predicted latency; drops those over a limit;
5. proposes the candidate whose predicted point adds the most hypervolume to the front of the scored
   candidates, where candidates still being scored count at their predicted (not optimistic) point, so
   that concurrent Ray trials spread along the front instead of piling onto one spot;
6. except every ``anchor_every``-th proposal, which goes to a warm-start architecture that no scored
   architecture yet matches in accuracy at no more cost, each up to ``anchor_tries`` times (the
   hand-designed references' networks are among them): the candidate with the highest optimistic
   accuracy at no more predicted cost, from a pool that also holds that architecture's neighbours one
   and two genes away. A front that holds, at each
   reference's cost, a network at least as accurate is what tells a user the search beat hand design;
   the hypervolume alone spends few evaluations near the most accurate, costliest end.

Until ``min_observations`` candidates are scored it proposes uniform samples (within the GFLOPs and
parameter limits, by the cost table). Trials queued with fixed parameters (the warm start's
``enqueue_trial``) are left alone. Every draw comes from a generator seeded by
the sampler's seed and the number of trials in the study, so a search killed and resumed proposes what an
uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from mixnas.search.cost_table import CostTable
from mixnas.search.encoding import ArchCodec
from mixnas.search.hypervolume import hypervolume, non_dominated_rank
from mixnas.search.predictor import AccuracyPredictor
from mixnas.search_space import SearchSpace
from mixnas.trials import OBJECTIVES

_PLAN = "mixnas:guided_plan"
_ANCHOR = "mixnas:guided_anchor"  # the trial number of the warm-start architecture a proposal went after


@dataclass
class _History:
    """A study as the sampler reads it.

    Attributes:
        scored: genomes of the complete trials; ``values`` their objective values, ``feasible`` whether
            they met every limit.
        pending: genomes being scored or queued; ``failed``: genomes of failed trials.
        anchor_rows: rows of ``scored`` the warm start queued; ``anchor_numbers`` their trial numbers.
        anchor_tries: warm-start trial number -> proposals that went after it.
    """

    scored: list[np.ndarray]
    values: list[list[float]]
    feasible: list[bool]
    pending: list[np.ndarray]
    failed: list[np.ndarray]
    anchor_rows: list[int]
    anchor_numbers: list[int]
    anchor_tries: dict[int, int]


def _dominated_by_any(candidates: np.ndarray, front: np.ndarray) -> np.ndarray:
    """(n,) True where a candidate (loss) is weakly dominated by a front point."""
    if len(front) == 0:
        return np.zeros(len(candidates), dtype=bool)
    out = np.zeros(len(candidates), dtype=bool)
    for start in range(0, len(candidates), 4096):
        c = candidates[start:start + 4096, None, :]
        out[start:start + 4096] = (front[None] <= c).all(-1).any(-1)
    return out


class GuidedSampler(optuna.samplers.BaseSampler):
    """Predictor-screened evolution over a mixnas space (module docstring).

    Args:
        space: the search space (class count resolved).
        objectives: canonical objective names in the study's order (accuracy, gflops, params, latency).
        seed: seeds every draw (with the study's trial count).
        limits: (max_gflops, max_params, max_latency_ms), None where unlimited.
        cost_table: the space's ``CostTable`` (counted on first use when None).
        cost_table_cache: a file to keep the counted table in (the run directory's).
        pool_size: candidates screened per proposal.
        kappa: optimism, in ensemble standard deviations added to the predicted accuracy.
        min_observations: scored candidates before the predictor is used (uniform samples until then).
        anchor_every: every this many proposals, try to beat a warm-start architecture at its own cost
            (step 6 of the module docstring); 0 never.
        anchor_tries: proposals spent on one warm-start architecture at most (None: until it is beaten;
            capping it at 2 or 4 lost references and no hypervolume on the demo).
    """

    def __init__(
        self, space: SearchSpace, objectives: Sequence[str], seed: int = 0,
        limits: tuple[float | None, float | None, float | None] = (None, None, None),
        cost_table: CostTable | None = None, cost_table_cache: str | None = None,
        pool_size: int = 10_000, kappa: float = 0.5, min_observations: int = 8, anchor_every: int = 2,
        anchor_tries: int | None = None,
    ) -> None:
        unknown = [o for o in objectives if o not in OBJECTIVES]
        if unknown or "accuracy" not in objectives:
            raise ValueError(f"guided sampler: objectives {list(objectives)} must include accuracy and be among "
                             f"{list(OBJECTIVES)}")
        self.space = space
        self.objectives = list(objectives)
        self.seed = seed
        self.limits = limits
        self.codec = ArchCodec(space)
        self._cost_table = cost_table
        self._cost_table_cache = cost_table_cache
        self.pool_size = pool_size
        self.kappa = kappa
        self.min_observations = min_observations
        self.anchor_every = anchor_every
        self.anchor_tries = anchor_tries
        self._fallback = optuna.samplers.RandomSampler(seed=seed)
        self._genomes: dict[str, np.ndarray] = {}  # params json -> genome
        self.last_proposal: dict[str, Any] = {}  # what the last proposal was based on (for tests and logs)

    @property
    def cost_table(self) -> CostTable:
        if self._cost_table is None:
            self._cost_table = CostTable.for_space(self.space, self._cost_table_cache)
        return self._cost_table

    # ------------------------------------------------------------------------------- Optuna's interface
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.params or "fixed_params" in trial.system_attrs or _PLAN in trial.system_attrs:
            return  # queued with fixed parameters (warm start), or resumed: nothing to propose
        genome = self.propose(study, exclude=trial.number)
        params = self.space.params_of(self.codec.decode(genome))
        study._storage.set_trial_system_attr(trial._trial_id, _PLAN, params)
        if "anchor" in self.last_proposal:
            study._storage.set_trial_system_attr(trial._trial_id, _ANCHOR, self.last_proposal["anchor"])

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        plan = trial.system_attrs.get(_PLAN)
        if plan is None:  # the Trial object caches system attributes from before the plan was set
            plan = study._storage.get_trial(trial._trial_id).system_attrs.get(_PLAN, {})
        value = plan.get(param_name)
        if value is not None and param_distribution._contains(param_distribution.to_internal_repr(value)):
            return value
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    # ---------------------------------------------------------------------------------------- history
    def _genome(self, params: dict[str, Any]) -> np.ndarray | None:
        key = repr(sorted(params.items()))
        if key not in self._genomes:
            try:
                arch = self.space.suggest(optuna.trial.FixedTrial(params))
                self._genomes[key] = self.codec.encode(arch)
            except (ValueError, KeyError):
                return None  # a trial of another space or a partial one: ignored
        return self._genomes[key]

    def _history(self, study: optuna.Study, exclude: int) -> _History:
        """What the study holds, every trial but ``exclude`` (the one being proposed for)."""
        h = _History([], [], [], [], [], [], [], {})
        for t in study.get_trials(deepcopy=False):
            if t.number == exclude:
                continue
            params = t.params or t.system_attrs.get("fixed_params") or t.system_attrs.get(_PLAN)
            if not params:
                continue
            g = self._genome(params)
            if g is None:
                continue
            if _ANCHOR in t.system_attrs:
                a = int(t.system_attrs[_ANCHOR])
                h.anchor_tries[a] = h.anchor_tries.get(a, 0) + 1
            if t.state == TrialState.COMPLETE and t.values is not None and np.all(np.isfinite(t.values)):
                if "fixed_params" in t.system_attrs:  # queued by the warm start: an anchor
                    h.anchor_rows.append(len(h.scored))
                    h.anchor_numbers.append(t.number)
                h.scored.append(g)
                h.values.append(list(t.values))
                constraints = t.constraints or {}
                named = constraints.values() if isinstance(constraints, dict) else constraints
                h.feasible.append(all(float(c) <= 0 for c in named))
            elif t.state in (TrialState.RUNNING, TrialState.WAITING):
                h.pending.append(g)
            else:
                h.failed.append(g)
        return h

    # --------------------------------------------------------------------------------------- proposal
    def _pool(self, parents: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = self.pool_size
        n_mut, n_cx = n * 6 // 10, n * 2 // 10
        crossed = self.codec.crossover(parents, n_cx, rng)
        crossed = self.codec.mutate(crossed, n_cx, 0.05, rng)  # a crossover of identical parents still moves
        return np.concatenate([
            self.codec.mutate(parents, n_mut // 2, 1.0 / parents[0].size, rng),
            self.codec.mutate(parents, n_mut - n_mut // 2, 3.0 / parents[0].size, rng),
            crossed,
            self.codec.random(n - n_mut - n_cx, rng),
        ])

    def propose(self, study: optuna.Study, exclude: int = -1) -> np.ndarray:
        """The genome of the next candidate (module docstring)."""
        slot = len(study.get_trials(deepcopy=False))
        rng = np.random.default_rng([self.seed, slot, 0x6D69786E])
        history = self._history(study, exclude)
        scored, pending = history.scored, history.pending
        values = np.array(history.values, dtype=float).reshape(len(scored), len(self.objectives))
        everything = scored + pending + history.failed
        seen = set(ArchCodec.keys(np.array(everything))) if everything else set()
        if len(scored) < self.min_observations:
            self.last_proposal = {"kind": "uniform", "scored": len(scored)}
            return self._unseen(self.codec.random(256, rng), seen)
        x_scored = np.array(scored)
        feas = np.array(history.feasible, dtype=bool)
        acc_col = self.objectives.index("accuracy")
        table = self.cost_table
        features = lambda g: self._features(g, table)  # noqa: E731
        f_scored = features(x_scored)
        acc_model = AccuracyPredictor(seed=self.seed).fit(f_scored, values[:, acc_col])
        lat_model = None
        if "latency" in self.objectives:
            lat_col = self.objectives.index("latency")
            lat_model = AccuracyPredictor(seed=self.seed).fit(f_scored, np.log(np.maximum(values[:, lat_col], 1e-6)))

        # Parents: the feasible front and the most accurate scored candidates.
        loss = self._loss(values)
        parents_idx = set(np.flatnonzero(feas)[non_dominated_rank(loss[feas], ["min"] * loss.shape[1]) == 0]
                          if feas.any() else [])
        parents_idx |= set(np.argsort(-values[:, acc_col], kind="stable")[: max(4, len(scored) // 5)])
        parents = x_scored[sorted(parents_idx)]
        anchor = self._unbeaten_anchor(history, values, feas, slot)
        pool = self._pool(parents, rng)
        if anchor is not None:  # its whole neighbourhood, one and two genes away
            near = x_scored[anchor][None]
            pool = np.concatenate([pool, self.codec.mutate(near, 1000, 1.0 / near[0].size, rng),
                                   self.codec.mutate(near, 1000, 2.0 / near[0].size, rng)])
        keys = ArchCodec.keys(pool)
        keep, fresh = [], set()
        for i, k in enumerate(keys):
            if k not in seen and k not in fresh:
                fresh.add(k)
                keep.append(i)
        if not keep:
            self.last_proposal = {"kind": "uniform (pool exhausted)", "scored": len(scored)}
            return self._unseen(self.codec.random(256, rng), seen)
        pool = pool[keep]
        f_pool = features(pool)
        costs = table.costs(pool)
        mean, std = acc_model.predict(f_pool)
        optimistic = self._predicted(pool, costs, mean + self.kappa * std, lat_model, f_pool)
        ok = self._within_limits(costs, optimistic)
        if not ok.any():
            ok[:] = True  # every candidate breaks a limit by the table: let the constraints rank them
        pool, f_pool, costs, mean, std, optimistic = (a[ok] for a in (pool, f_pool, costs, mean, std, optimistic))

        if anchor is not None:
            cheaper = self._no_costlier(optimistic, values[anchor])
            if cheaper.any():
                idx = np.flatnonzero(cheaper)
                best = int(idx[np.argmax((mean + self.kappa * std)[idx])])
                self.last_proposal = {
                    "kind": "beat a warm-start architecture at its cost",
                    "anchor": history.anchor_numbers[history.anchor_rows.index(anchor)],
                    "anchor_accuracy": float(values[anchor, acc_col]),
                    "scored": len(scored), "pool": len(pool), "predicted_accuracy": float(mean[best]),
                    "std": float(std[best]), "gflops": float(costs[best, 0]),
                }
                return pool[best]

        # The front the proposal should extend: scored feasible points, and pending ones at their prediction.
        front = loss[feas] if feas.any() else np.zeros((0, loss.shape[1]))
        if pending:
            pg = np.array(pending)
            fp = features(pg)
            pm, _ = acc_model.predict(fp)
            front = np.vstack([front, self._loss(self._predicted(pg, table.costs(pg), pm, lat_model, fp))])
        ref = self._reference(loss, front)
        cand_loss = self._loss(optimistic)
        open_ = np.flatnonzero(~_dominated_by_any(cand_loss, front))
        if open_.size == 0:  # nothing is predicted to extend the front: take the most promising accuracy
            best = int(np.argmax(mean + self.kappa * std))
            self.last_proposal = {"kind": "max optimistic accuracy", "scored": len(scored), "pool": len(pool)}
            return pool[best]
        if open_.size > 256:  # keep the predicted non-dominated ones, then a seeded subset
            sub = cand_loss[open_]
            open_ = open_[non_dominated_rank(sub, ["min"] * sub.shape[1]) == 0]
            if open_.size > 256:
                open_ = np.sort(rng.choice(open_, 256, replace=False))
        minimised = ["min"] * len(ref)  # losses: every objective minimised
        base = hypervolume(front, minimised, ref)
        gains = np.array([hypervolume(np.vstack([front, cand_loss[i][None]]), minimised, ref) - base for i in open_])
        best = int(open_[int(np.argmax(gains))])
        self.last_proposal = {
            "kind": "predicted hypervolume gain", "scored": len(scored), "pool": len(pool),
            "gain": float(gains.max()), "predicted_accuracy": float(mean[best]), "std": float(std[best]),
            "gflops": float(costs[best, 0]),
        }
        return pool[best]

    # ----------------------------------------------------------------------------------------- helpers
    def _no_costlier(self, predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
        """(n,) True where a predicted point costs no more than ``target`` in every minimised objective."""
        ok = np.ones(len(predicted), dtype=bool)
        for j, o in enumerate(self.objectives):
            if OBJECTIVES[o] == "min":
                ok &= predicted[:, j] <= target[j]
        return ok

    def _unbeaten_anchor(self, history: _History, values: np.ndarray, feasible: np.ndarray, slot: int) -> int | None:
        """Every ``anchor_every``-th proposal: the row (in ``values``) of a warm-start architecture (a
        hand-designed reference's, or an extreme of the space) that no other scored architecture matches in
        accuracy at no more cost, in turn; None otherwise."""
        if self.anchor_every <= 0 or slot % self.anchor_every != self.anchor_every - 1 or not history.anchor_rows:
            return None
        acc_col = self.objectives.index("accuracy")
        unbeaten = []
        for a, number in zip(history.anchor_rows, history.anchor_numbers):
            tried = history.anchor_tries.get(number, 0)
            if not feasible[a] or (self.anchor_tries is not None and tried >= self.anchor_tries):
                continue
            others = np.ones(len(values), dtype=bool)
            others[a] = False
            rivals = others & self._no_costlier(values, values[a]) & (values[:, acc_col] >= values[a, acc_col])
            if not rivals.any():
                unbeaten.append(a)
        if not unbeaten:
            return None
        return unbeaten[(slot // self.anchor_every) % len(unbeaten)]

    def _features(self, genomes: np.ndarray, table: CostTable) -> np.ndarray:
        costs = table.costs(genomes)
        return np.hstack([self.codec.features(genomes), np.log(costs)])

    def _predicted(self, genomes: np.ndarray, costs: np.ndarray, accuracy: np.ndarray,
                   lat_model: AccuracyPredictor | None, features: np.ndarray) -> np.ndarray:
        """(n, objectives) predicted values in the study's order."""
        cols = []
        for o in self.objectives:
            if o == "accuracy":
                cols.append(accuracy)
            elif o == "gflops":
                cols.append(costs[:, 0])
            elif o == "params":
                cols.append(costs[:, 1])
            else:
                cols.append(np.exp(lat_model.predict(features)[0]))
        return np.column_stack(cols)

    def _loss(self, values: np.ndarray) -> np.ndarray:
        sign = np.array([-1.0 if OBJECTIVES[o] == "max" else 1.0 for o in self.objectives])
        return np.asarray(values, dtype=float) * sign

    def _within_limits(self, costs: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        max_gflops, max_params, max_latency = self.limits
        ok = np.ones(len(costs), dtype=bool)
        if max_gflops is not None:
            ok &= costs[:, 0] <= max_gflops
        if max_params is not None:
            ok &= costs[:, 1] <= max_params
        if max_latency is not None and "latency" in self.objectives:
            ok &= predicted[:, self.objectives.index("latency")] <= max_latency
        return ok

    def _reference(self, scored_loss: np.ndarray, front: np.ndarray) -> np.ndarray:
        """The proposal's hypervolume reference point: 0% accuracy, 1.1x the space's costliest GFLOPs and
        parameters, 1.1x the slowest latency seen."""
        max_gflops, max_params = self.cost_table.max_cost()
        ref = []
        for j, o in enumerate(self.objectives):
            if o == "accuracy":
                ref.append(0.0)
            elif o == "gflops":
                ref.append(1.1 * max_gflops)
            elif o == "params":
                ref.append(1.1 * max_params)
            else:
                worst = np.concatenate([scored_loss[:, j], front[:, j]]) if len(front) else scored_loss[:, j]
                ref.append(1.1 * float(np.max(worst)))
        return np.array(ref)

    def _unseen(self, genomes: np.ndarray, seen: set[bytes]) -> np.ndarray:
        """The first of ``genomes`` not seen yet and within the GFLOPs and parameter limits (by the cost
        table), else the first unseen one, else the first."""
        if self.limits[0] is not None or self.limits[1] is not None:
            costs = self.cost_table.costs(genomes)
            ok = self._within_limits(costs, np.zeros((len(genomes), len(self.objectives))))
        else:
            ok = np.ones(len(genomes), dtype=bool)
        keys = ArchCodec.keys(genomes)
        for want_ok in (True, False):
            for g, k, fits in zip(genomes, keys, ok):
                if k not in seen and (fits or not want_ok):
                    return g
        return genomes[0]


__all__ = ["GuidedSampler"]
