"""The guided search and what it stands on: genomes, the exact cost table, the accuracy predictor, the warm
start, robust latency, the space-derived reference point and the comparison with the references."""

from __future__ import annotations

import json as _json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from torch import nn

from mixnas import SearchSpace, build_model
from mixnas.packaged import SPACES_DIR, packaged_path
from mixnas.results.reference_point import space_reference_point
from mixnas.results.table import versus_references
from mixnas.search import cost_table as cost_table_module
from mixnas.search._shared import Limits, trial_record
from mixnas.search.cost import model_gflops
from mixnas.search.cost_table import CostTable, count_components, ffn_key, mix_key
from mixnas.search.encoding import ArchCodec
from mixnas.search.evaluator import CandidateEvaluator
from mixnas.search.guided import GuidedSampler
from mixnas.search.latency_lut import _block_builder, _Call, block_key
from mixnas.search.optuna_runner import SearchSettings, open_study, run_optuna_search, warm_start_archs
from mixnas.search.predictor import AccuracyPredictor, kendall_tau
from mixnas.search.profiler import count_flops, count_params
from mixnas.search.robust_latency import RobustLatency
from mixnas.search_space import StageConfig
from mixnas.search_space.registry import get_mixer, register_mixer
from mixnas.supernet import Supernet
from mixnas.supernet.checkpoint import save_weights
from mixnas.training import TrainConfig
from mixnas.trials import TRIAL_COLUMNS
from tests.test_search import FAST, FakeEvaluator
from tests.tiny import TINY_SPACE


@pytest.fixture(scope="module")
def demo_space() -> SearchSpace:
    return SearchSpace.from_yaml(packaged_path(SPACES_DIR, "demo")).with_num_classes(10)


@pytest.fixture(scope="module")
def demo_table(demo_space: SearchSpace) -> CostTable:
    torch.set_num_threads(1)
    return CostTable(demo_space)


# ------------------------------------------------------------------------------------------- genomes
def test_genomes_round_trip_and_variation_stays_in_the_space(demo_space: SearchSpace) -> None:
    codec = ArchCodec(demo_space)
    rng = np.random.default_rng(0)
    parents = codec.random(20, rng)
    for g in np.concatenate([parents, codec.mutate(parents, 200, 0.3, rng), codec.crossover(parents, 200, rng)]):
        arch = codec.decode(g)
        assert demo_space.contains(arch), demo_space.why_not(arch)
        assert (codec.encode(arch) == g).all()
        params = demo_space.params_of(arch)
        assert demo_space.suggest(optuna.trial.FixedTrial(params)) == arch
    children = codec.mutate(parents[:1], 50, 0.0, rng)
    assert all((c != parents[0]).any() for c in children)  # at least one gene changes


# ---------------------------------------------------------------------------------------- cost table
def test_the_cost_table_equals_fvcore_on_whole_networks(demo_space: SearchSpace, demo_table: CostTable) -> None:
    """Static and DGE networks as built (the DGE router as initialised sends every region to the finest
    granularity, which is what the table counts)."""
    codec = ArchCodec(demo_space)
    for g in codec.random(10, np.random.default_rng(1)):
        arch = codec.decode(g)
        model = build_model(arch).eval()
        gflops, _, _ = model_gflops(model, arch)
        assert demo_table.arch_cost(arch) == (pytest.approx(gflops, rel=1e-12), count_params(model))


def test_a_blocks_two_halves_add_up_to_the_whole_block(demo_space: SearchSpace) -> None:
    """The table counts a block whose mixer does not wrap it as its mixing half plus its FFN half: for every
    mixer option of the demo space's first stage, with each FFN it pairs with, in both parities if it shifts, the two
    halves' FLOPs and parameters add up to fvcore's count of the whole block (DGE's block is counted whole)."""
    counts = count_components(demo_space)
    st, res = demo_space.stages[0], demo_space.largest().resolutions[0]
    checked = 0
    for m in st.mixers:
        for opt in m.options():
            for ffn in st.ffns_for(m.type):
                stage = StageConfig(1, st.dims[-1], st.heads[-1], st.mlp_ratios[-1], ffn, opt)
                for parity in (0, 1) if opt.spec.shifted(opt, res, 1) else (0,):  # else both are the same
                    torch.manual_seed(0)
                    module, call = _block_builder(demo_space, stage, res, parity)()
                    whole = (count_flops(_Call(module.eval(), call), torch.randn(1, res, res, stage.dim)),
                             count_params(module))
                    if opt.spec.wraps_block:
                        assert counts[block_key(0, res, stage, parity)] == whole
                        continue
                    mix, ffn_half = counts[mix_key(0, res, stage, parity)], counts[ffn_key(0, res, stage)]
                    assert (mix[0] + ffn_half[0], mix[1] + ffn_half[1]) == whole, (stage, parity)
                    assert min(mix + ffn_half) > 0
                    checked += 1
    assert checked >= 15


def test_the_costliest_architecture_is_found_exactly() -> None:
    space = SearchSpace.from_dict(TINY_SPACE)
    table = CostTable(space)
    codec = ArchCodec(space)
    every = np.unique(codec.random(5000, np.random.default_rng(2)).reshape(5000, -1), axis=0)
    assert len(every) == space.size()  # the sample covers the whole (tiny) space
    costs = table.costs(every.reshape(len(every), codec.num_stages, -1))
    gflops, params = table.max_cost()
    assert gflops == pytest.approx(costs[:, 0].max()) and params == int(costs[:, 1].max())


def test_a_cached_table_is_reused_and_a_damaged_one_recounted(tmp_path: Path) -> None:
    space = SearchSpace.from_dict(TINY_SPACE)
    path = tmp_path / "cost_table.json"
    first = CostTable.for_space(space, path)
    assert CostTable.for_space(space, path).counts == first.counts
    path.write_text("{not json")
    assert CostTable.for_space(space, path).counts == first.counts


def test_a_process_counts_a_space_once_and_leaves_the_callers_random_state(monkeypatch: pytest.MonkeyPatch) -> None:
    space = SearchSpace.from_dict(TINY_SPACE)
    monkeypatch.setattr(cost_table_module, "_counted", {})  # nothing kept from earlier tests
    traced: list[int] = []
    real = cost_table_module.count_flops
    monkeypatch.setattr(cost_table_module, "count_flops", lambda *a: traced.append(1) or real(*a))

    def count() -> tuple[dict[str, tuple[int, int]], int]:
        torch.manual_seed(123)
        state = torch.random.get_rng_state()
        before = len(traced)
        counts = count_components(space)
        assert torch.equal(torch.random.get_rng_state(), state)  # counted or kept, the caller's stream goes on
        return counts, len(traced) - before

    first, n = count()
    assert n == len(first) > 0  # counted: one trace per component
    again, n = count()
    assert n == 0 and again == first and again is not count_components(space)  # kept; each caller its own dict
    # A mixer registered again (a plug-in reloaded, say) may count differently: its spaces are counted again.
    mixer = space.stages[0].mixers[0].type
    original = get_mixer(mixer)
    register_mixer(type(original)(), replace=True)
    try:
        recounted, n = count()
    finally:
        register_mixer(original, replace=True)
    assert n == len(first) and recounted == first


# ----------------------------------------------------------------------------------------- predictor
def test_the_predictor_learns_an_additive_effect(demo_space: SearchSpace) -> None:
    codec = ArchCodec(demo_space)
    rng = np.random.default_rng(3)
    g = codec.random(60, rng)
    depth = g[:, :, 0].sum(1)  # index of each stage's depth
    y = 50 + 8 * depth + rng.normal(0, 0.5, len(g))
    model = AccuracyPredictor(seed=0).fit(codec.features(g[:40]), y[:40])
    mean, std = model.predict(codec.features(g[40:]))
    assert kendall_tau(mean, y[40:]) > 0.7
    assert (std >= 0).all() and std.mean() < 5


def _dwconv_first(space: SearchSpace) -> tuple[str, str]:
    kinds = [m.type for m in space.stages[0].mixers]
    return kinds[1], kinds[0]  # the second listed (dwconv) and the first (window attention)


def test_the_guided_sampler_proposes_what_the_predictor_says_is_better(tmp_path: Path) -> None:
    """A constructed case: one choice (the first stage's mixer being the second listed) is worth 30 points
    at no cost. Once the predictor has seen it, the guided proposals take it far more often than the 1 in 3
    that uniform sampling gives."""
    space = SearchSpace.from_dict(TINY_SPACE)
    good, _ = _dwconv_first(space)

    class Rigged(FakeEvaluator):
        def evaluate(self, arch):
            out = dict(super().evaluate(arch))
            out["accuracy"] = out["accuracy"] + (30.0 if arch.stages[0].mixer.type == good else 0.0)
            return out

    settings = SearchSettings(trials=24, objectives=("accuracy", "gflops"), references=False, warm_start=False)
    table = run_optuna_search(tmp_path, settings, Rigged(space), progress=False)
    guided = table.iloc[8:]  # after the sampler's 8 uniform samples
    share = np.mean([a.startswith(("dw", "ddw")) for a in guided["summary"]])
    assert share >= 0.7, guided["summary"].tolist()


# --------------------------------------------------------------------------------------- warm start
def test_the_warm_start_queues_the_extremes_and_each_mixers_largest(tmp_path: Path) -> None:
    space = SearchSpace.from_dict(TINY_SPACE)
    warm = warm_start_archs(space)
    expected = {a.with_name(None).arch_id for a in
                [space.largest(), space.smallest()] + [space.largest(m) for m in space.mixer_types()]}
    assert {a.arch_id for a in warm} == expected
    table = run_optuna_search(tmp_path, SearchSettings(trials=8, references=True), FakeEvaluator(space),
                              progress=False)
    searched = table[~table["is_reference"]]
    assert list(searched["arch_id"].iloc[:len(warm)]) == [a.arch_id for a in warm]
    assert len(searched) == 8 and not searched["is_reference"].any()  # searched trials, never references
    refs = table[table["is_reference"]]
    assert set(refs["arch_id"]) <= set(searched["arch_id"])  # the references' networks, scored as trials
    # Off, and under a limit the table puts a warm architecture over, it is not queued.
    run_optuna_search(tmp_path / "off", SearchSettings(trials=3, references=False, warm_start=False),
                      FakeEvaluator(space), progress=False)
    study = open_study(tmp_path / "off", SearchSettings(trials=3, sampler="random"))
    assert not any(t.user_attrs.get("warm_start") for t in study.trials)
    cap = CostTable(space).arch_cost(space.smallest())[0] * 1.01
    assert [a.arch_id for a in warm_start_archs(space, Limits(max_gflops=cap))] == \
        [space.smallest().with_name(None).arch_id]


def test_a_guided_search_on_ray_style_concurrency_never_proposes_a_pending_architecture() -> None:
    space = SearchSpace.from_dict(TINY_SPACE)
    sampler = GuidedSampler(space, ["accuracy", "gflops"], seed=0, min_observations=4)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    evaluator = FakeEvaluator(space)
    for _ in range(6):
        trial = study.ask()
        arch = space.suggest(trial)
        r = evaluator.evaluate(arch)
        study.tell(trial, [r["accuracy"], r["gflops"]])
    pending = [study.ask() for _ in range(5)]  # asked before any is told, as concurrent workers are
    archs = [space.suggest(t).arch_id for t in pending]
    scored = {space.suggest(optuna.trial.FixedTrial(t.params)).arch_id for t in study.trials if t.values}
    assert len(set(archs)) == 5 and not set(archs) & scored


# ------------------------------------------------------------------------------------ robust latency
class Scripted(nn.Module):
    """Sleeps a scripted time per forward call: ``slow(call_index) -> seconds``."""

    def __init__(self, delay) -> None:
        super().__init__()
        self.delay = delay
        self.calls = 0
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay(self.calls))
        self.calls += 1
        return x


def test_a_reading_that_disagrees_with_its_repeats_is_measured_again() -> None:
    """First attempt: the second round runs 20x slower (a burst of load); the re-measurement is clean."""
    per_round = 4
    # Sleeps of 5 ms against 100 ms and a tolerance of 4x: a loaded test machine's jitter stays far inside.
    timer = RobustLatency(runs=3 * per_round, repeats=3, max_seconds=None, retries=2, pause_s=0.0, use_probe=False,
                          tolerance=4.0)
    first_attempt_calls = 3 + 3 * per_round + 2  # warm-up of the first round, then rounds (1 warm-up each later)
    model = Scripted(lambda i: 0.1 if per_round + 3 <= i < 2 * per_round + 4 else 0.005)
    reading = timer.measure(model, 8, in_chans=1, warmup=3)
    assert model.calls > first_attempt_calls  # measured again
    assert reading.attempts >= 2 and not reading.unstable
    assert reading.median_ms < 50  # the burst is not the reading


def test_a_reading_that_stays_unstable_is_flagged_not_trusted() -> None:
    timer = RobustLatency(runs=6, repeats=3, max_seconds=None, retries=1, pause_s=0.0, use_probe=False,
                          tolerance=4.0)
    model = Scripted(lambda i: 0.005 * (1 + 19 * ((i // 3) % 2)))  # every other round 20x slower, always
    reading = timer.measure(model, 8, in_chans=1, warmup=1)
    assert reading.unstable and reading.attempts == 2 and reading.spread > 4
    row = trial_record(0, "COMPLETE", None, {"accuracy": 50.0, "latency_ms": reading.median_ms,
                                             "latency_unstable": reading.unstable}, True, "", "optuna")
    assert row["latency_unstable"] is True


def test_a_busy_machine_seen_by_the_probe_makes_a_steady_reading_measured_again(monkeypatch) -> None:
    """Every round slowed alike (the rounds agree) still counts as disturbed when the probe beside them ran
    slow: the reading is taken again once the load has passed."""
    timer = RobustLatency(runs=6, repeats=3, max_seconds=None, retries=2, pause_s=0.0, tolerance=4.0)
    loads = iter([1.0, 10.0, 10.0, 10.0] + [1.0] * 20)  # the first attempt's probes see a busy machine
    monkeypatch.setattr(timer, "probe", lambda: next(loads))
    reading = timer.measure(Scripted(lambda i: 0.005), 8, in_chans=1, warmup=1)
    assert reading.attempts >= 2 and not reading.unstable and reading.load == 1.0


# ------------------------------------------------------------------- reference point and references
def _row(number: int, arch_id: str, acc: float, gflops: float, latency: float, *, ref: bool = False,
         unstable: bool = False, label: str = "") -> dict[str, Any]:
    return {**{c: "" for c in TRIAL_COLUMNS}, "number": number, "state": "COMPLETE", "arch_id": arch_id,
            "accuracy": acc, "gflops": gflops, "gflops_min": gflops, "gflops_max": gflops, "params": 1000,
            "latency_ms": latency, "latency_p90_ms": latency, "latency_unstable": unstable, "eval_seconds": 1.0,
            "feasible": True, "is_reference": ref, "label": label, "worker": ""}


def test_the_reference_point_comes_from_the_space_not_the_worst_reading() -> None:
    space = SearchSpace.from_dict(TINY_SPACE)
    rows = [_row(0, "a", 60, 0.001, 2.0), _row(1, "b", 70, 0.002, 3.0),
            _row(-1, "r", 80, 0.003, 5.0, ref=True, label="all x")]
    calm = pd.DataFrame(rows)
    stormy = pd.DataFrame(rows + [_row(2, "c", 65, 0.0015, 206.0, unstable=True)])
    objectives = ["accuracy", "gflops", "latency"]
    ref_calm, note = space_reference_point(space, calm, objectives)
    ref_stormy, _ = space_reference_point(space, stormy, objectives)
    assert ref_calm == ref_stormy  # one bad reading moves nothing
    assert ref_calm["accuracy"] == 0 and ref_calm["gflops"] == pytest.approx(1.1 * CostTable(space).max_cost()[0])
    assert ref_calm["latency"] == pytest.approx(5.5) and "reference" in note


def test_versus_references_finds_the_best_cheaper_other_architecture() -> None:
    df = pd.DataFrame([
        _row(-1, "ref", 80.0, 0.010, 5.0, ref=True, label="all x"),
        _row(0, "ref", 80.0, 0.010, 5.0),  # the reference's own network, searched: not a rival
        _row(1, "a", 79.8, 0.008, 6.0),
        _row(2, "b", 81.0, 0.009, 4.0),
        _row(3, "c", 90.0, 0.020, 1.0, unstable=True),  # faster by an unstable reading: not counted
        _row(4, "d", 95.0, 0.030, 9.0),  # more accurate but costlier
    ])
    by_gflops = versus_references(df, "gflops").iloc[0]
    assert by_gflops["number"] == 2 and by_gflops["difference"] == pytest.approx(1.0) and by_gflops["beats"]
    by_latency = versus_references(df, "latency").iloc[0]
    assert by_latency["number"] == 2 and by_latency["beats"]
    without_b = versus_references(df[df["number"] != 2], "gflops").iloc[0]
    assert without_b["number"] == 1 and without_b["difference"] == pytest.approx(-0.2) and not without_b["beats"]
    nothing = versus_references(df[df["number"].isin([-1, 0, 4])], "gflops").iloc[0]
    assert nothing["number"] == -1 and math.isnan(nothing["difference"])


def test_a_search_killed_while_the_sampler_proposes_resumes_cleanly(tmp_path: Path, monkeypatch) -> None:
    """A kill between Optuna creating the trial and the sampler choosing its architecture leaves a trial
    without parameters: the resumed search drops it and asks afresh, and the table ends complete."""
    space = SearchSpace.from_dict(TINY_SPACE)
    settings = SearchSettings(trials=12, objectives=("accuracy", "gflops"), references=False)
    calls = {"n": 0}
    original = GuidedSampler.propose

    def dying(self, study, exclude=-1):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, study, exclude)

    monkeypatch.setattr(GuidedSampler, "propose", dying)
    evaluator = FakeEvaluator(space)
    with pytest.raises(KeyboardInterrupt):
        run_optuna_search(tmp_path, settings, evaluator, progress=False)
    monkeypatch.setattr(GuidedSampler, "propose", original)
    table = run_optuna_search(tmp_path, settings, FakeEvaluator(space, cache=dict(evaluator.cache)), progress=False)
    assert list(table["number"]) == list(range(12)) and (table["state"] == "COMPLETE").all()
    assert table["arch_id"].is_unique


@pytest.mark.parametrize("forged", [
    "[1, 2, 3]", '{"settings": 1}', "not json", '{"arch": {}, "settings": "%s", "result": {"accuracy": "high"}}',
    '{"arch": "%s", "settings": "%s", "result": {"accuracy": 1e999}}',
])
def test_a_damaged_or_forged_cache_entry_is_scored_again(tmp_path: Path, forged: str) -> None:
    """The evaluator's cache lives in a run directory other users may write: an entry it cannot trust is
    recomputed, never a traceback and never a number taken on faith."""
    run = tmp_path / "run"
    run.mkdir()
    space = SearchSpace.from_dict(TINY_SPACE)
    (run / "space.yaml").write_text(space.to_yaml())
    (run / "train_config.json").write_text(_json.dumps(asdict(TrainConfig(data="digits", epochs=1))))
    save_weights(Supernet(space), run / "supernet.safetensors")
    evaluator = CandidateEvaluator(run, FAST)
    arch = space.sample(0)
    key = evaluator.settings.cache_key().replace('"', '\\"')
    text = forged.replace("%s", key, 1) if forged.count("%s") == 1 else forged
    if forged.count("%s") == 2:
        text = forged % (_json.dumps(arch.to_dict()).replace('"', '\\"'), key)
    path = evaluator._cache_path(arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    result = evaluator.evaluate(arch)
    assert result["cached"] is False and 0 <= result["accuracy"] <= 100
    assert CandidateEvaluator(run, FAST).evaluate(arch)["cached"] is True  # the rewritten entry is trusted


def test_the_random_baseline_resumes_and_redoes_rows_of_other_draws(tmp_path: Path) -> None:
    from mixnas.run_dir import RunDir
    from mixnas.search.baseline import load_baseline, random_baseline
    from mixnas.trials import save_trials

    space = SearchSpace.from_dict(TINY_SPACE)
    objectives = ["accuracy", "gflops"]
    straight = random_baseline(tmp_path / "a", FakeEvaluator(space), 6, objectives, progress=False)
    assert len(straight) == 6 and straight["arch_id"].is_unique and list(straight["number"]) == list(range(6))
    assert load_baseline(tmp_path / "a")["arch_id"].tolist() == straight["arch_id"].tolist()
    # Killed after three: the rerun scores only the other three and ends with the same table.
    dying = FakeEvaluator(space, stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        random_baseline(tmp_path / "b", dying, 6, objectives, progress=False)
    second = FakeEvaluator(space)
    resumed = random_baseline(tmp_path / "b", second, 6, objectives, progress=False)
    assert resumed["arch_id"].tolist() == straight["arch_id"].tolist() and len(second.computed) == 3
    # A table whose third row is another architecture keeps the first two and scores the rest again.
    forged = straight.copy()
    forged.loc[2, "arch_id"] = "0" * 12
    (tmp_path / "c" / "search").mkdir(parents=True)
    save_trials(forged, tmp_path / "c")
    (tmp_path / "c" / "trials.csv").rename(RunDir(tmp_path / "c").random_baseline)
    third = FakeEvaluator(space)
    again = random_baseline(tmp_path / "c", third, 6, objectives, progress=False)
    assert again["arch_id"].tolist() == straight["arch_id"].tolist() and len(third.computed) == 4
