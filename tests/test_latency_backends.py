"""Latency as deployed (mixnas.search.latency_backends): every backend times the network it was given (the same
logits as eager), reaches the CLI, the lookup tables and the search's settings, and fails in one line. Which
backend is faster is the benchmark's business (bench/latency_backends.py), never asserted here."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from mixnas.cli import format_profile_table, main
from mixnas.errors import ConfigError, DeployError, LUTError
from mixnas.run_dir import RunDir
from mixnas.search import EvalSettings
from mixnas.search.latency_backends import check_backend
from mixnas.search.latency_lut import LatencyTable, build_latency_table
from mixnas.search.profiler import latency_runner, measure_latency
from mixnas.search_space import ArchConfig, SearchSpace
from mixnas.supernet import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

# Two stages, 4x4 and 2x2 tokens: shifted windows and a local FFN, then a conv mixer.
SMALL = {
    "name": "small", "input_size": 16, "num_classes": 5, "patch_size": 4, "layout": "hierarchical",
    "stages": [
        {"depth": 2, "dim": 16, "heads": 2, "mlp_ratio": 2.0, "ffn": "local",
         "mixer": {"type": "window_attn", "window_size": 2}},
        {"depth": 1, "dim": 32, "heads": 2, "mlp_ratio": 2.0, "ffn": "mlp",
         "mixer": {"type": "dwconv", "kernel_size": 3}},
    ],
}
# One block choice per stage: a table of a few components, cheap to build with any backend.
ONE_CHOICE_SPACE = {
    "name": "one-choice", "input_size": 16, "num_classes": 5, "patch_size": 4, "layout": "hierarchical",
    "stages": [
        {"depth": [1], "dim": [16], "heads": [2], "mlp_ratio": [2.0], "ffn": ["mlp"],
         "mixers": {"dwconv": {"kernel_size": [3]}}},
        {"depth": [1], "dim": [32], "heads": [2], "mlp_ratio": [2.0], "ffn": ["mlp"],
         "mixers": {"dwconv": {"kernel_size": [3]}}},
    ],
}
# The search test's supernet: one stage with an input-dependent mixer (DGE) beside a static one.
TINY_SPACE = {
    "name": "tiny", "input_size": 16, "num_classes": 10, "patch_size": 4, "layout": "hierarchical",
    "stages": [
        {"depth": [1], "dim": [16], "heads": [2], "mlp_ratio": [2.0], "ffn": ["mlp"],
         "mixers": {"dwconv": {"kernel_size": [3]}, "dge": {"granularities": [[1, 2]]}}},
    ],
}


def small_model() -> tuple[ArchConfig, torch.nn.Module]:
    arch = ArchConfig.from_dict(SMALL)
    torch.manual_seed(0)
    return arch, build_model(arch).eval()


# ------------------------------------------------------------------------------------ each backend
# compile takes 5 s with inductor's kernel cache warm, 30 s on a fresh machine
@pytest.mark.parametrize("backend", ["eager", pytest.param("compile", marks=pytest.mark.slow), "onnxruntime"])
def test_backend_times_the_network_it_was_given(backend: str, tmp_path: Path, monkeypatch) -> None:
    """A positive, finite latency, and the timed forward pass gives eager's logits (1e-4); the export's
    temporary directory is gone afterwards."""
    if backend == "onnxruntime":  # (not for compile: inductor keeps its cache of compiled kernels there)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    arch, model = small_model()
    model.train()
    with latency_runner(model, (1, 3, arch.input_size, arch.input_size), backend=backend) as runner:
        stats = runner.measure(runs=3, warmup=1)
        with torch.no_grad():
            deployed, eager = runner.run(runner.inputs), model(runner.inputs)
    assert math.isfinite(stats.median_ms) and 0 < stats.median_ms <= stats.p90_ms
    assert stats.backend == backend and stats.runs == 3 and stats.batch_size == 1
    assert deployed.shape == eager.shape == (1, 5)
    assert torch.allclose(deployed, eager, atol=1e-4, rtol=0), (deployed - eager).abs().max()
    assert os.listdir(tmp_path) == []  # the exported file's directory was removed
    assert model.training  # timed in eval mode, its own mode restored afterwards
    assert model.eval()(torch.randn(2, 3, 16, 16)).shape == (2, 5)  # and still usable


def test_measure_latency_keeps_its_signature_and_eager_default() -> None:
    _, model = small_model()
    stats = measure_latency(model, 16, runs=3, warmup=0)
    assert stats.backend == "eager" and stats.warmup == 0 and stats.runs == 3


def test_compile_runs_once_before_the_warm_up(monkeypatch) -> None:
    """The compiling call happens when the runner is made; measure() then makes exactly warm-up + runs calls."""
    calls = []

    def fake_compile(model, mode=None):
        calls.append(mode)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    arch, model = small_model()
    seen = []
    model.register_forward_hook(lambda *a: seen.append(1))
    with latency_runner(model, (1, 3, 16, 16), backend="compile") as runner:
        assert len(seen) == 1 and calls == [None]  # default mode on the CPU
        runner.measure(runs=4, warmup=2)
    assert len(seen) == 1 + 2 + 4


def test_compile_failure_is_one_line(monkeypatch) -> None:
    def broken(model, mode=None):
        def run(x):
            raise RuntimeError("inductor could not lower aten::foo\n" + "  graph line\n" * 50)
        return run

    monkeypatch.setattr(torch, "compile", broken)
    _, model = small_model()
    with pytest.raises(DeployError) as err:
        measure_latency(model, 16, runs=2, warmup=0, backend="compile")
    text = str(err.value)
    assert "torch.compile failed" in text and "aten::foo" in text and "\n" not in text


def test_missing_onnxruntime_is_one_line(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    _, model = small_model()
    with pytest.raises(DeployError) as err:
        measure_latency(model, 16, runs=2, warmup=0, backend="onnxruntime")
    text = str(err.value)
    assert "onnxruntime is not installed" in text and "mixnas[deploy]" in text and "\n" not in text
    measure_latency(model, 16, runs=2, warmup=0)  # eager needs none of it


def test_bad_backend_choices_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown latency backend 'tvm'; choose from eager, compile, onnxruntime"):
        check_backend("tvm")
    with pytest.raises(ConfigError, match="onnxruntime latency is measured on the CPU only"):
        check_backend("onnxruntime", "cuda")
    with pytest.raises(ConfigError, match="autocast"):
        check_backend("onnxruntime", "cpu", torch.bfloat16)
    check_backend("compile", "cuda")  # compile runs anywhere (CUDA graphs on a GPU)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compile_on_cuda_replays_cuda_graphs() -> None:
    arch, model = small_model()
    with latency_runner(model, (4, 3, 16, 16), device="cuda", backend="compile") as runner:
        stats = runner.measure(runs=5, warmup=2)
        with torch.no_grad():
            deployed = runner.run(runner.inputs).clone()
            eager = model(runner.inputs)
    assert stats.median_ms > 0 and stats.backend == "compile"
    assert torch.allclose(deployed, eager, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------- the CLI
def test_profile_with_onnxruntime(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL))
    argv = ["profile", str(path), "--json", "--runs", "3", "--warmup", "1", "--latency-backend", "onnxruntime"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["latency_ms"]["backend"] == "onnxruntime" and out["latency_ms"]["median"] > 0
    assert "batch 1, onnxruntime;" in format_profile_table([out])


def test_profile_refuses_onnxruntime_without_the_extra(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL))
    assert main(["profile", str(path), "--latency-backend", "onnxruntime"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mixnas[deploy]" in err


# --------------------------------------------------------------------------------------- lookup tables
def test_a_table_is_refused_for_another_backend(tmp_path: Path) -> None:
    space = SearchSpace.from_dict(ONE_CHOICE_SPACE)
    table = build_latency_table(space, runs=2, warmup=0, calibration_archs=1, progress=False)
    assert table.backend == "eager"
    table.save(tmp_path / "eager.json")
    loaded = LatencyTable.load(tmp_path / "eager.json")
    assert loaded.backend == "eager" and json.loads((tmp_path / "eager.json").read_text())["backend"] == "eager"
    loaded.check_backend("eager")
    with pytest.raises(LUTError) as err:
        loaded.check_backend("onnxruntime")
    text = str(err.value)
    assert "measured with the eager latency backend" in text and "--latency-backend onnxruntime" in text


def test_a_table_from_before_backends_reads_as_eager(tmp_path: Path) -> None:
    table = LatencyTable(entries={"stem/res4/c16": 0.1}, device="cpu: x (1 threads)", batch_size=1,
                         calibration={"scale": 1.0, "offset_ms": 0.0})
    data = table.to_dict()
    del data["backend"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert LatencyTable.load(tmp_path / "old.json").backend == "eager"
    data["backend"] = "tvm"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(LUTError, match="corrupt latency table.*backend is 'tvm'"):
        LatencyTable.load(tmp_path / "bad.json")


@pytest.mark.slow
def test_build_lut_with_onnxruntime(tmp_path: Path, capsys) -> None:
    """Every component exported with its input as the graph's input; the table predicts positive latencies."""
    out = tmp_path / "ort.json"
    (tmp_path / "space.json").write_text(json.dumps(ONE_CHOICE_SPACE))
    argv = ["latency", "build-lut", "--space", str(tmp_path / "space.json"), "--out", str(out), "--runs", "3",
            "--warmup", "1", "--calibration-archs", "1", "--quiet", "--latency-backend", "onnxruntime"]
    assert main(argv) == 0
    table = LatencyTable.load(out)
    assert table.backend == "onnxruntime" and "onnxruntime" in table.source
    assert all(ms > 0 for ms in table.entries.values())
    assert table.predict(SearchSpace.from_dict(ONE_CHOICE_SPACE).largest()) > 0


# -------------------------------------------------------------------------------------------- search
def test_eval_settings_without_a_backend_load_as_eager_and_keep_their_cache_key(tmp_path: Path) -> None:
    """Runs searched before the option existed: their settings load, their cached scores stay valid, and a
    resumed search asking for another backend is refused like any other changed latency setting."""
    from mixnas.search.optuna_runner import check_settings

    run = RunDir(tmp_path / "run")
    run.search_dir.mkdir(parents=True)
    old = asdict(EvalSettings())
    old.pop("latency_backend")
    run.eval_settings_file.write_text(json.dumps(old))
    loaded = run.read_settings(EvalSettings, run.eval_settings_file)
    assert loaded.latency_backend == "eager"
    assert "latency_backend" not in json.loads(loaded.cache_key())  # the key cached results were stored under
    check_settings(run.path, EvalSettings())  # same settings: fine
    with pytest.raises(ConfigError, match="latency_backend"):
        check_settings(run.path, EvalSettings(latency_backend="compile"))
    unmeasured = EvalSettings(latency="none", latency_backend="compile")
    assert unmeasured.cache_key() == EvalSettings(latency="none").cache_key()


@pytest.fixture(scope="module")
def trained(trained_run) -> Path:  # tests/conftest.py: trained once per session
    return trained_run(TINY_SPACE, epochs=1, steps_per_epoch=2, batch_size=16, calib_batches=1)


def test_search_scores_latency_with_the_backend_and_refuses_a_foreign_table(trained: Path, tmp_path: Path) -> None:
    from mixnas.search import CandidateEvaluator

    settings = EvalSettings(latency_runs=3, latency_max_seconds=0.2, calib_batches=1, val_limit=32, flops_images=2,
                            latency_backend="onnxruntime")
    evaluator = CandidateEvaluator(trained, settings)
    space = SearchSpace.from_dict(TINY_SPACE)
    for mixer in space.mixer_types():  # a static mixer and DGE (its export form)
        result = evaluator.evaluate(space.largest(mixer))
        assert result["latency_ms"] > 0 and result["latency_source"].endswith(", onnxruntime")

    table = LatencyTable(entries={"x": 1.0}, device="cpu: x (1 threads)", batch_size=1,
                         calibration={"scale": 1.0, "offset_ms": 0.0}, backend="compile")
    table.save(tmp_path / "compiled.json")
    lut = EvalSettings(latency="lut", latency_lut=str(tmp_path / "compiled.json"))
    with pytest.raises(LUTError, match="measured with the compile latency backend, but eager latency was asked"):
        CandidateEvaluator(trained, lut)
