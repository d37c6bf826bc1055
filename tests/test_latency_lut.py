"""Tests of mixnas.search.latency_lut: component keys, building a table for a tiny space, JSON round trip,
clear errors, and the ``latency build-lut`` command. Timing accuracy is the benchmark's business
(bench/latency_lut.py), not asserted here."""

from __future__ import annotations

import argparse
import dataclasses
import json
import random

import pytest
import torch
import yaml

from mixnas.cli import add_lut_parser, main
from mixnas.search.latency_lut import (
    LatencyTable,
    LUTError,
    arch_components,
    build_latency_table,
    fit_calibration,
    space_components,
)
from mixnas.search_space import ArchConfig, SearchSpace
from mixnas.supernet import build_model

# Two stages at 4x4 and 2x2 tokens: a shifted window (2 < 4) and a conv in the first, a conv and DGE in the second.
TINY_SPACE = {
    "name": "tiny",
    "input_size": 16,
    "num_classes": 5,
    "patch_size": 4,
    "layout": "hierarchical",
    "stages": [
        {"depth": [1, 2], "dim": [8, 16], "heads": [2], "mlp_ratio": [2.0], "ffn": ["mlp"],
         "mixers": {"window_attn": {"window_size": [2]}, "dwconv": {"kernel_size": [3]}}},
        {"depth": [1, 2], "dim": [16], "heads": [2], "mlp_ratio": [2.0], "ffn": ["mlp"],
         "mixers": {"dwconv": {"kernel_size": [3]}, "dge": {"granularities": [[1, 2]]}}},
    ],
}


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.from_dict(TINY_SPACE)


@pytest.fixture(scope="module")
def table(space: SearchSpace) -> LatencyTable:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_latency_table(space, runs=3, warmup=1, calibration_archs=2, progress=False)
    finally:
        torch.set_num_threads(threads)


def with_stage(arch: ArchConfig, index: int, **changes) -> ArchConfig:
    stages = list(arch.stages)
    stages[index] = dataclasses.replace(stages[index], **changes)
    return dataclasses.replace(arch, stages=tuple(stages))


# ------------------------------------------------------------------------------------------- keys (no timing)
def test_components_cover_every_choice_once(space: SearchSpace) -> None:
    keys = [c.key for c in space_components(space)]
    assert len(keys) == len(set(keys))
    kinds = [k.split("/")[0] for k in keys]
    # stem per first dim (2); merging 2 x 1; stage 0: 2 dims x (window even + odd, dwconv); stage 1: dwconv, dge
    assert (kinds.count("stem"), kinds.count("merge"), kinds.count("block"), kinds.count("head")) == (2, 2, 8, 1)
    rng = random.Random(0)
    for _ in range(50):
        assert set(arch_components(space.sample(rng))) <= set(keys)


def test_shifted_windows_keyed_by_parity_only_when_they_shift(space: SearchSpace) -> None:
    arch = with_stage(space.largest(), 0, depth=2)  # window_attn w=2 at 4x4: odd blocks shift
    counts = arch_components(arch)
    stage0 = sorted(k for k in counts if k.startswith("block/s0/"))
    assert len(stage0) == 2 and stage0[1] == stage0[0] + "/shifted"
    assert all(counts[k] == 1 for k in stage0)
    # Heads change attention but not a depth-wise conv: only the attention key names them.
    assert "/h2/" in stage0[0]
    conv = with_stage(arch, 0, mixer=space.stages[0].mixer("dwconv").options()[0])
    conv_keys = [k for k in arch_components(conv) if k.startswith("block/s0/")]
    assert conv_keys == [k for k in conv_keys if "/h" not in k and "shifted" not in k]
    assert sum(arch_components(conv).values()) == sum(counts.values())
    # A window covering the map is global attention: no shift, keyed as the resolution.
    wide = with_stage(arch, 0, mixer=arch.stages[0].mixer.with_params(window_size=4))
    assert not any("shifted" in k for k in arch_components(wide))


def test_components_are_built_at_the_network_sizes(space: SearchSpace) -> None:
    """Each component holds exactly the parameters of its part of build_model(arch): it is that part."""
    built = {c.key: c for c in space_components(space)}
    rng = random.Random(3)
    for arch in [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(6)]:
        total = 0
        for key, count in arch_components(arch).items():
            module, _ = built[key].build()
            total += count * sum(p.numel() for p in module.parameters())
        assert total == sum(p.numel() for p in build_model(arch).parameters()), arch.summary()


def test_prediction_is_calibrated_sum() -> None:
    arch = ArchConfig.from_dict({**TINY_SPACE, "stages": [
        {"depth": 2, "dim": 8, "heads": 2, "mlp_ratio": 2.0, "mixer": {"type": "dwconv", "kernel_size": 3}},
        {"depth": 1, "dim": 16, "heads": 2, "mlp_ratio": 2.0, "mixer": {"type": "dwconv", "kernel_size": 3}},
    ]})
    entries = {key: float(i + 1) for i, key in enumerate(sorted(arch_components(arch)))}
    t = LatencyTable(entries=entries, device="cpu: test", batch_size=1, calibration={"scale": 2.0, "offset_ms": 0.5})
    expected = sum(n * entries[k] for k, n in arch_components(arch).items())
    assert t.component_sum(arch) == pytest.approx(expected)
    assert t.predict(arch) == pytest.approx(2.0 * expected + 0.5)


def test_calibration_fit_recovers_a_line_and_stays_positive() -> None:
    fit = fit_calibration([1.0, 2.0, 4.0], [3.0, 5.0, 9.0], floor_sum=1.0)
    assert fit["scale"] == pytest.approx(2.0) and fit["offset_ms"] == pytest.approx(1.0)
    assert fit["fit"] == "least-squares" and fit["mape_pct"] == pytest.approx(0.0, abs=1e-9)
    # Noise that would give a very negative offset: pinned so that the smallest network stays positive.
    fit = fit_calibration([2.0, 3.0], [0.1, 10.0], floor_sum=2.0)
    assert fit["scale"] > 0 and fit["scale"] * 2.0 + fit["offset_ms"] > 0
    # A falling line (noise) falls back to a fit through the origin.
    fit = fit_calibration([1.0, 2.0], [5.0, 1.0], floor_sum=1.0)
    assert fit["scale"] > 0 and fit["offset_ms"] == 0.0


# --------------------------------------------------------------------------------------- a measured table
def test_every_sampled_arch_gets_a_positive_prediction(space: SearchSpace, table: LatencyTable) -> None:
    assert set(table.entries) == {c.key for c in space_components(space)}
    assert all(ms > 0 for ms in table.entries.values())
    assert table.calibration["scale"] > 0 and len(table.calibration["points"]) == 4
    rng = random.Random(1)
    for _ in range(30):
        ms = table.predict(space.sample(rng))
        assert ms > 0 and ms == ms  # positive and not NaN
    assert table.device.startswith("cpu: ") and table.batch_size == 1


def test_deeper_stage_predicts_more(space: SearchSpace, table: LatencyTable) -> None:
    shallow = space.smallest()
    for stage in range(2):
        deeper = with_stage(shallow, stage, depth=2)
        assert table.predict(deeper) > table.predict(shallow)


def test_json_round_trip(table: LatencyTable, space: SearchSpace, tmp_path) -> None:
    path = tmp_path / "lut.json"
    table.save(path)
    loaded = LatencyTable.load(path)
    assert loaded.entries == table.entries
    assert loaded.calibration == table.calibration
    assert (loaded.device, loaded.batch_size, loaded.geometry) == (table.device, table.batch_size, table.geometry)
    rng = random.Random(2)
    for _ in range(10):
        arch = space.sample(rng)
        assert loaded.predict(arch) == pytest.approx(table.predict(arch))
    assert loaded.source == f"predicted: {path} ({table.device}, batch 1)"
    assert json.loads(path.read_text())["version"] == 1


def test_choice_outside_the_table_names_the_component(space: SearchSpace, table: LatencyTable, tmp_path) -> None:
    table.save(tmp_path / "lut.json")
    loaded = LatencyTable.load(tmp_path / "lut.json")
    wider = with_stage(space.smallest(), 1, dim=24, heads=2)
    with pytest.raises(LUTError, match=r"no entry for component 'merge/s1/res4/c8->c24'") as err:
        loaded.predict(wider)
    assert str(tmp_path / "lut.json") in str(err.value) and "\n" not in str(err.value)
    refiner = with_stage(space.smallest(), 0, mixer=ArchConfig.from_dict({**TINY_SPACE, "stages": [
        {"depth": 1, "dim": 8, "heads": 2, "mixer": {"type": "refiner", "window_size": 2}}]}).stages[0].mixer)
    with pytest.raises(LUTError, match=r"'block/s0/res4/refiner\(window_size=2,"):
        loaded.predict(refiner)
    with pytest.raises(LUTError, match="built for input_size 16, the architecture has 32"):
        loaded.predict(dataclasses.replace(space.smallest(), input_size=32))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such latency table"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a mixnas latency table"),
        (json.dumps({"format": "mixnas-latency-lut", "version": 99}), "version 99, this mixnas reads version 1"),
        (json.dumps({"format": "mixnas-latency-lut", "version": 1, "entries": {"a": 1.0}}), "corrupt latency table"),
        (json.dumps({"format": "mixnas-latency-lut", "version": 1, "device": "cpu", "batch_size": 1,
                     "calibration": {"scale": 1.0, "offset_ms": 0.0}, "entries": {"a": "fast"}}), "entry 'a'"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, content: str | None, message: str) -> None:
    path = tmp_path / "lut.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(LUTError) as err:
        LatencyTable.load(path)
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text
    assert isinstance(err.value, ValueError)


# ------------------------------------------------------------------------------------------------ command
def test_build_lut_command_writes_a_table(tmp_path, capsys) -> None:
    space_path, out = tmp_path / "tiny.yaml", tmp_path / "out" / "lut.json"
    space_path.write_text(yaml.safe_dump(TINY_SPACE))
    parser = argparse.ArgumentParser(prog="mixnas")
    add_lut_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([
        "latency", "build-lut", "--space", str(space_path), "--out", str(out), "--runs", "2", "--warmup", "0",
        "--calibration-archs", "1", "--quiet",
    ])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert args.func(args) == 0
    finally:
        torch.set_num_threads(threads)
    table = LatencyTable.load(out)
    assert table.space_name == "tiny" and table.meta["runs"] == 2
    assert table.predict(SearchSpace.from_yaml(space_path).largest()) > 0
    assert f"wrote {out}" in capsys.readouterr().out


def test_build_lut_command_rejects_missing_cuda(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["latency", "build-lut", "--space", "x.yaml", "--out", str(tmp_path / "l.json"), "--device", "cuda"]
    assert main(argv) == 2  # mixnas.device.resolve_device, the one CUDA check, raises a one-line ConfigError
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and err.count("\n") == 1
    assert not (tmp_path / "l.json").exists()
