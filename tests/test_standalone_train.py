"""Standalone training (`mixnas train`): the output directory, resuming to the same weights, starting from
exported weights, refusing mismatched directories, weights and datasets, DGE's budget loss, and the CLI.

The architectures are tiny (32x32 inputs, patch 4: 8x8 then 4x4 tokens, widths 16-32) and runs are a few
steps long, so the file runs in well under a minute on the 2-core machine. ``DW`` has dwconv (BatchNorm) and
window attention; ``DGE`` has a DGE stage.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import mixnas.data
import mixnas.training.standalone as standalone
from mixnas.cli import add_train_parser, main
from mixnas.errors import CheckpointError
from mixnas.run_dir import RunDir
from mixnas.search_space import ArchConfig, ConfigError
from mixnas.supernet import build_model
from mixnas.supernet.checkpoint import load_weights, save_weights
from mixnas.training import StandaloneConfig, train_architecture
from mixnas.training.standalone import METRIC_COLUMNS

ARCH_FILE, CHECKPOINT_FILE, CONFIG_FILE = RunDir.ARCH, RunDir.CHECKPOINT, RunDir.TRAIN_CONFIG
METRICS_FILE, WEIGHTS_FILE = RunDir.METRICS, RunDir.MODEL_WEIGHTS

DW = ArchConfig.from_dict({
    "name": "tiny_dw",
    "input_size": 32,
    "num_classes": 10,
    "patch_size": 4,
    "layout": "hierarchical",
    "drop_path_rate": 0.1,
    "stages": [
        {"depth": 1, "dim": 16, "heads": 2, "mlp_ratio": 2.0, "mixer": {"type": "dwconv", "kernel_size": 3}},
        {"depth": 1, "dim": 32, "heads": 2, "mlp_ratio": 2.0, "mixer": {"type": "window_attn", "window_size": 4}},
    ],
})
DGE = ArchConfig.from_dict({
    "name": "tiny_dge",
    "input_size": 32,
    "num_classes": 10,
    "patch_size": 4,
    "layout": "hierarchical",
    "stages": [
        {"depth": 1, "dim": 16, "heads": 2, "mlp_ratio": 2.0, "mixer": {"type": "dge", "granularities": [1, 2]}},
    ],
})
CONFIG = StandaloneConfig(data="digits", epochs=2, batch_size=16, steps_per_epoch=3, seed=0)
TIMING_COLUMNS = {"images_per_s", "epoch_seconds"}


def cli_args(arch_yaml: Path, out: Path, config: StandaloneConfig = CONFIG) -> list[str]:
    """`mixnas train` arguments that give ``config`` (the others are StandaloneConfig's defaults)."""
    args = [
        "train", str(arch_yaml), "--out", str(out), "--data", config.data, "--epochs", str(config.epochs),
        "--batch-size", str(config.batch_size), "--seed", str(config.seed),
        "--steps-per-epoch", str(config.steps_per_epoch), "--lr", str(config.lr), "--device", "cpu",
    ]
    return args + (["--init-weights", config.init_weights] if config.init_weights else [])


def run_parsed(argv: list[str]) -> int:
    """Parse with a fresh parser holding only ``add_train_parser``'s subcommand and run it."""
    parser = argparse.ArgumentParser(prog="mixnas")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def read_metrics(out_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(out_dir / METRICS_FILE, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def untimed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / WEIGHTS_FILE), load_file(b / WEIGHTS_FILE)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# ------------------------------------------------------------------------------------------------ fixtures
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(autouse=True, scope="module")
def rendered_once() -> Iterator[None]:
    """Render the digits once per module (each load takes seconds here); the datasets are stateless."""
    original = mixnas.data.load_dataset
    mixnas.data.load_dataset = functools.lru_cache(maxsize=4)(original)
    yield
    mixnas.data.load_dataset = original


@pytest.fixture(scope="module")
def dw_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("arch") / "tiny_dw.yaml"
    DW.to_yaml(path)
    return path


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """DW trained for CONFIG without interruption; tests copy it rather than change it."""
    out = tmp_path_factory.mktemp("straight") / "run"
    history = train_architecture(DW, out, CONFIG, device="cpu", progress=False)
    return out, history


# ------------------------------------------------------------------------------------------ output directory
def test_out_dir_holds_arch_config_checkpoint_weights_and_metrics(
    dw_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert run_parsed(cli_args(dw_yaml, out)) == 0  # not --quiet: the progress bar and epoch lines are shown
    printed, err = capsys.readouterr()
    assert "tiny_dw epoch 2/2" in err and "loss=" in err and "img_s=" in err  # tqdm's bar and its postfix
    assert "epoch 1/2: loss" in printed and "val top-1" in printed and "img/s" in printed
    assert f"weights in {out / WEIGHTS_FILE}" in printed

    assert ArchConfig.from_yaml(out / ARCH_FILE) == DW
    assert StandaloneConfig(**json.loads((out / CONFIG_FILE).read_text())) == CONFIG
    assert not list(out.glob(".*.tmp")), "a temporary file of an atomic write was left behind"

    state = torch.load(out / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and {"model", "optimizer", "history"} <= state.keys()
    model = load_weights(build_model(DW), out / WEIGHTS_FILE)  # checks every key and shape
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["model"][k]), k

    columns, rows = read_metrics(out)
    assert columns == METRIC_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert 0 <= float(r["train_acc"]) <= 100 and 0 <= float(r["val_acc"]) <= 100
        assert float(r["train_loss"]) > 0 and float(r["images_per_s"]) > 0 and float(r["epoch_seconds"]) > 0
    assert float(rows[1]["lr"]) == pytest.approx(CONFIG.lr * 0.01)  # the cosine ends at min_lr
    assert [{k: str(v) for k, v in r.items()} for r in state["history"]] == rows


def test_the_validation_accuracy_is_the_saved_models_in_eval_mode(straight_run: tuple[Path, list[dict]]) -> None:
    from mixnas.data import load_dataset, make_loader
    from mixnas.training import evaluate_accuracy

    out, history = straight_run
    model = load_weights(build_model(DW), out / WEIGHTS_FILE)
    val = make_loader(load_dataset("digits", 32, seed=0).val, 256, shuffle=False)
    assert evaluate_accuracy(model, val) == pytest.approx(history[-1]["val_acc"], abs=1e-3)


# ------------------------------------------------------------------------------------------------ resuming
def test_a_stopped_and_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(
    straight_run: tuple[Path, list[dict]], tmp_path: Path
) -> None:
    straight, history = straight_run
    out = tmp_path / "run"
    first = train_architecture(DW, out, CONFIG, device="cpu", progress=False, stop_after_epoch=1)
    assert len(first) == 1 and read_metrics(out)[1][0]["epoch"] == "1"
    resumed = train_architecture(DW, out, CONFIG, device="cpu", progress=False)
    assert untimed(resumed) == untimed(history)
    assert_same_weights(out, straight)


def test_running_a_finished_run_again_changes_nothing(
    straight_run: tuple[Path, list[dict]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    shutil.copytree(straight_run[0], out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert train_architecture(DW, out, CONFIG, device="cpu") == straight_run[1]
    assert "already trained for 2 epochs" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_raising_epochs_trains_further(straight_run: tuple[Path, list[dict]], tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(straight_run[0], out)
    history = train_architecture(DW, out, replace(CONFIG, epochs=3), device="cpu", progress=False)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert untimed(history[:2]) == untimed(straight_run[1])
    assert json.loads((out / CONFIG_FILE).read_text())["epochs"] == 3


# ------------------------------------------------------------------------------------------- initial weights
def perturbed_weights(path: Path) -> dict[str, torch.Tensor]:
    """Save a DW model whose parameters are far from any fresh initialisation; returns its state."""
    torch.manual_seed(123)
    model = build_model(DW)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    save_weights(model, path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_training_starts_from_the_init_weights_and_resuming_ignores_them(tmp_path: Path) -> None:
    init = tmp_path / "exported.safetensors"
    expected = perturbed_weights(init)
    config = replace(CONFIG, lr=1e-9, steps_per_epoch=1, init_weights=str(init))
    out = tmp_path / "run"
    train_architecture(DW, out, config, device="cpu", progress=False, stop_after_epoch=1)
    trained = load_file(out / WEIGHTS_FILE)
    params = dict(build_model(DW).named_parameters()).keys()
    for k in params:  # a step at lr 1e-9 leaves the parameters where the file put them
        torch.testing.assert_close(trained[k], expected[k], atol=1e-6, rtol=0, msg=k)
    scratch = build_model(DW).state_dict()
    assert any((trained[k] - scratch[k]).abs().max() > 0.1 for k in params)

    init.unlink()  # the checkpoint holds later weights: a resumed run does not read the file
    history = train_architecture(DW, out, config, device="cpu", progress=False)
    assert [r["epoch"] for r in history] == [1, 2]


def test_init_weights_of_another_architecture_are_refused_naming_the_file_and_tensor(tmp_path: Path) -> None:
    wrong = tmp_path / "other.safetensors"
    save_weights(build_model(replace(DW, stages=(replace(DW.stages[0], dim=24), DW.stages[1]))), wrong)
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match=r"other\.safetensors: does not fit this network: 'patch_embed"):
        train_architecture(DW, out, replace(CONFIG, init_weights=str(wrong)), device="cpu", progress=False)
    assert not out.exists(), "a refused command must not leave a half-made output directory"


# ------------------------------------------------------------------------------------------- refusals
def test_another_architecture_or_other_settings_in_the_out_dir_are_refused(
    straight_run: tuple[Path, list[dict]], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(straight_run[0], out)
    other = replace(DW, stages=(DW.stages[0], replace(DW.stages[1], heads=4)))
    with pytest.raises(CheckpointError, match=r"arch\.yaml: .*architecture \(stages\[1\]\.heads: 2 .*, 4 now"):
        train_architecture(other, out, CONFIG, device="cpu", progress=False)
    with pytest.raises(CheckpointError, match=r"train_config\.json: .*other settings \(lr: 0\.001 .*, 0\.002 now"):
        train_architecture(DW, out, replace(CONFIG, lr=2e-3), device="cpu", progress=False)
    assert json.loads((out / CONFIG_FILE).read_text()) == asdict(CONFIG)


def test_a_dataset_with_another_class_count_is_refused(tmp_path: Path) -> None:
    arch = replace(DW, num_classes=7)
    with pytest.raises(ConfigError, match=r"^num_classes: the architecture has 7 classes but digits has 10"):
        train_architecture(arch, tmp_path / "run", CONFIG, device="cpu", progress=False)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------- DGE
def test_dge_adds_its_budget_loss_with_weight_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grads: list[torch.Tensor] = []
    original = standalone.budget_loss

    def spied(costs: Any) -> torch.Tensor | None:
        budget = original(costs)
        if budget is not None and budget.requires_grad:
            budget.register_hook(grads.append)  # fires only if the budget is part of the loss backpropagated
        return budget

    monkeypatch.setattr(standalone, "budget_loss", spied)
    history = train_architecture(DGE, tmp_path / "run", replace(CONFIG, epochs=1), device="cpu", progress=False)
    assert len(grads) == CONFIG.steps_per_epoch
    assert all(float(g) == 1.0 for g in grads)
    assert history[0]["train_loss"] > 0
    load_weights(build_model(DGE), tmp_path / "run" / WEIGHTS_FILE)


# ---------------------------------------------------------------------------------------------------- CLI
def test_mixnas_train_reports_refusals_as_one_line(
    dw_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "other.safetensors"
    save_weights(build_model(DGE), wrong)
    config = replace(CONFIG, init_weights=str(wrong))
    assert main(cli_args(dw_yaml, tmp_path / "run", config) + ["--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixnas: error: ") and str(wrong) in err and "\n" not in err

    seven = tmp_path / "seven.yaml"
    replace(DW, num_classes=7).to_yaml(seven)
    assert main(cli_args(seven, tmp_path / "run") + ["--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixnas: error: num_classes:") and "\n" not in err


# ---------------------------------------------------------------------------------------------- seeds
def test_the_training_seed_leaves_the_dataset_alone_and_data_seed_picks_it(
    dw_yaml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two trainings that differ only in --seed are measured on the same held-out images: the dataset (for
    digits, its renders and train/val split) follows --data-seed, not --seed."""
    asked: list[int] = []
    original = mixnas.data.load_dataset

    def spied(spec: str, input_size: int, seed: int = 0, augment: bool = True) -> Any:
        asked.append(seed)
        return original(spec, input_size, seed=seed, augment=augment)

    monkeypatch.setattr(mixnas.data, "load_dataset", spied)
    quick = replace(CONFIG, epochs=1, steps_per_epoch=1)
    train_architecture(DW, tmp_path / "a", replace(quick, seed=3), device="cpu", progress=False)
    assert asked == [0]
    assert run_parsed(cli_args(dw_yaml, tmp_path / "b", replace(quick, seed=3)) + ["--data-seed", "2", "--quiet"]) == 0
    assert asked == [0, 2]
    stored = json.loads((tmp_path / "b" / CONFIG_FILE).read_text())
    assert stored["seed"] == 3 and stored["data_seed"] == 2
