"""Supernet training: the run directory, resuming (in-process and after a killed CLI run), refusing corrupt or
mismatched checkpoints, BatchNorm recalibration of subnets, and DistributedDataParallel under torchrun.

The space is tiny (32x32 inputs, patch 8: 4x4 then 2x2 tokens, widths 16-32) and runs are a few steps long,
so the file runs in about a minute on the 2-core machine. It offers dwconv first, so the largest and smallest
architectures that training validates carry BatchNorm, plus DGE and window attention for the random ones.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import mixnas.data
import mixnas.training.batchnorm as batchnorm
from mixnas.cli import main
from mixnas.data import load_dataset, make_loader
from mixnas.errors import CheckpointError, ConfigError
from mixnas.run_dir import RunDir
from mixnas.search_space import SearchSpace
from mixnas.supernet import Supernet
from mixnas.supernet.backbone import build_model
from mixnas.training import (
    TrainConfig,
    batchnorm_layers,
    evaluate_accuracy,
    prepare_run_dir,
    recalibrate_batchnorm,
    subnet_accuracy,
    train_supernet,
)
from mixnas.training.supernet import METRIC_COLUMNS, distributed_session

CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE = RunDir.CHECKPOINT, RunDir.TRAIN_CONFIG, RunDir.METRICS
SPACE_FILE, WEIGHTS_FILE = RunDir.SPACE, RunDir.SUPERNET_WEIGHTS

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
TINY: dict[str, Any] = {
    "name": "tiny",
    "input_size": 32,
    "num_classes": 10,
    "patch_size": 8,
    "layout": "hierarchical",
    "stages": [
        {"depth": [1, 2], "dim": [16, 24], "heads": [2], "mlp_ratio": [2.0], "ffn": ["mlp"],
         "mixers": {"dwconv": {"kernel_size": [3]}, "dge": {"granularities": [[1, 2]]},
                    "window_attn": {"window_size": [2, 4]}}},
        {"depth": [1], "dim": [32], "heads": [2], "mlp_ratio": [2.0], "ffn": ["mlp"],
         "mixers": {"dwconv": {"kernel_size": [3]}, "dge": {"granularities": [[1, 2]]}}},
    ],
}
CONFIG = TrainConfig(data="digits", epochs=2, batch_size=16, steps_per_epoch=4, calib_batches=2, seed=0)
TIMING_COLUMNS = {"images_per_s", "epoch_seconds"}
# Subprocesses get one thread each: the machine has two cores shared with other jobs.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def cli_args(space: Path, out: Path, config: TrainConfig = CONFIG) -> list[str]:
    """`mixnas supernet train` arguments that give ``config`` (the CLI's other defaults are TrainConfig's)."""
    return [
        "supernet", "train", "--space", str(space), "--out", str(out), "--data", config.data,
        "--epochs", str(config.epochs), "--batch-size", str(config.batch_size), "--seed", str(config.seed),
        "--steps-per-epoch", str(config.steps_per_epoch), "--calib-batches", str(config.calib_batches),
        "--lr", str(config.lr), "--device", "cpu",
    ]


def read_metrics(run_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(run_dir / METRICS_FILE, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def untimed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / WEIGHTS_FILE), load_file(b / WEIGHTS_FILE)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    return torch.load(run_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    """Poll until ``path`` exists; fail if ``proc`` exits first or it takes longer than ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before {path.name} appeared")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path.name} did not appear within {timeout:.0f}s")
        time.sleep(0.01)


# ------------------------------------------------------------------------------------------------ fixtures
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(autouse=True, scope="module")
def rendered_once() -> Iterator[None]:
    """Render the digits once per module: every train_supernet call loads its data (~1.5 s each here).

    The datasets hold fixed uint8 images and stateless transforms, so sharing them changes nothing.
    """
    original = mixnas.data.load_dataset
    mixnas.data.load_dataset = functools.lru_cache(maxsize=4)(original)
    yield
    mixnas.data.load_dataset = original


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.from_dict(TINY)


@pytest.fixture(scope="module")
def space_yaml(space: SearchSpace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("space") / "tiny.yaml"
    space.to_yaml(path)
    return path


@pytest.fixture(scope="module")
def straight_run(space: SearchSpace, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """CONFIG trained without interruption; tests copy it rather than change it."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    history = train_supernet(space, run_dir, CONFIG, device="cpu", progress=False)
    return run_dir, history


@pytest.fixture(scope="module")
def digits() -> mixnas.data.DatasetBundle:
    return load_dataset("digits", 32, seed=0)


# ------------------------------------------------------------------------------------------ run directory
def test_run_directory_holds_space_config_checkpoints_and_metrics(
    space: SearchSpace, space_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    assert main(cli_args(space_yaml, run_dir)) == 0  # not --quiet: the progress bar and epoch lines are shown
    out, err = capsys.readouterr()
    assert "supernet epoch 2/2" in err and "loss=" in err and "img_s=" in err  # tqdm's bar and its postfix
    assert "epoch 1/2: loss" in out and "epoch 2/2: loss" in out and "img/s" in out and "val top-1 largest" in out

    assert SearchSpace.from_yaml(run_dir / SPACE_FILE).to_dict() == space.to_dict()
    assert TrainConfig(**json.loads((run_dir / CONFIG_FILE).read_text())) == CONFIG
    assert not list(run_dir.glob(".*.tmp")), "a temporary file of an atomic write was left behind"

    state = load_checkpoint(run_dir)  # weights_only=True: plain tensors and Python values only
    assert state["epoch"] == 2
    assert {"model", "optimizer", "history"} <= state.keys()
    weights = load_file(run_dir / WEIGHTS_FILE)
    reference = Supernet(space).state_dict()
    assert weights.keys() == reference.keys() == state["model"].keys()
    for k, v in reference.items():
        assert weights[k].shape == v.shape, k
        assert torch.equal(weights[k], state["model"][k]), k

    columns, rows = read_metrics(run_dir)
    assert columns == METRIC_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        for key in ("val_acc_largest", "val_acc_smallest"):
            assert 0.0 <= float(r[key]) <= 100.0
        assert float(r["images_per_s"]) > 0 and float(r["epoch_seconds"]) > 0
        assert math.isfinite(float(r["train_loss"])) and float(r["train_loss"]) > 0
        assert float(r["lr"]) > 0
    # After the 1-epoch warm-up the cosine decays to min_lr = lr / 100 by the last step.
    assert float(rows[1]["lr"]) == pytest.approx(CONFIG.lr * 0.01)
    assert [{k: str(v) for k, v in r.items()} for r in state["history"]] == rows


# ------------------------------------------------------------------------------------------------ resuming
def test_resumed_run_ends_with_the_same_weights_and_metrics(
    space: SearchSpace, straight_run: tuple[Path, list[dict]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    straight_dir, straight_history = straight_run
    run_dir = tmp_path / "run"
    first = train_supernet(space, run_dir, CONFIG, device="cpu", progress=False, stop_after_epoch=1)
    assert [r["epoch"] for r in first] == [1]
    assert load_checkpoint(run_dir)["epoch"] == 1
    assert len(read_metrics(run_dir)[1]) == 1

    resumed = train_supernet(space, run_dir, CONFIG, device="cpu", progress=False)
    assert [r["epoch"] for r in resumed] == [1, 2]
    assert_same_weights(run_dir, straight_dir)
    ckpt, straight_ckpt = load_checkpoint(run_dir), load_checkpoint(straight_dir)
    opt, straight_opt = ckpt["optimizer"]["state"], straight_ckpt["optimizer"]["state"]
    assert opt.keys() == straight_opt.keys()
    assert all(torch.equal(opt[i]["exp_avg_sq"], straight_opt[i]["exp_avg_sq"]) for i in opt)
    # Losses, learning rates and the recalibrated validation accuracies are reproduced; only timings differ.
    assert untimed(resumed) == untimed(straight_history)
    assert untimed(read_metrics(run_dir)[1]) == untimed(read_metrics(straight_dir)[1])

    # Once finished, running again trains nothing and writes no checkpoint.
    files = {n: ((run_dir / n).read_bytes(), (run_dir / n).stat().st_mtime_ns)
             for n in (CHECKPOINT_FILE, WEIGHTS_FILE, METRICS_FILE)}
    again = train_supernet(space, run_dir, CONFIG, device="cpu", progress=True)
    assert again == resumed
    assert "already trained for 2 epochs" in capsys.readouterr().out
    for name, (data, mtime) in files.items():
        assert (run_dir / name).read_bytes() == data and (run_dir / name).stat().st_mtime_ns == mtime, name


@pytest.mark.slow
def test_cli_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(
    space: SearchSpace, space_yaml: Path, tmp_path: Path
) -> None:
    # Epochs long enough (~1 s here) that the kill lands inside epoch 2, after epoch 1's files are written.
    config = replace(CONFIG, epochs=3, steps_per_epoch=25)
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "mixnas.cli", *cli_args(space_yaml, run_dir, config), "--quiet"]
    log = tmp_path / "killed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=ENV, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(run_dir / METRICS_FILE, proc, timeout=180)  # written last in an epoch, after the checkpoint
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"training ended before it was killed: {log.read_text()[-2000:]}"

    state = load_checkpoint(run_dir)  # the atomic write leaves a whole file, never half of one
    assert state["epoch"] == 1, "the kill should land in epoch 2"
    assert [int(r["epoch"]) for r in read_metrics(run_dir)[1]] == [1]

    rerun = subprocess.run(command, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    _, rows = read_metrics(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]  # each epoch counted once
    assert load_checkpoint(run_dir)["epoch"] == 3

    # The uninterrupted run, in this process (one thread as the subprocesses), with the same settings.
    straight_dir = tmp_path / "straight"
    straight = train_supernet(space, straight_dir, config, device="cpu", progress=False)
    assert json.loads((run_dir / CONFIG_FILE).read_text()) == asdict(config)
    assert_same_weights(run_dir, straight_dir)
    assert untimed(rows) == untimed([{k: str(v) for k, v in r.items()} for r in straight])


# ------------------------------------------------------------------------------ refusing bad checkpoints
CORRUPTIONS = {
    "truncated": lambda data: data[: len(data) // 2],
    "garbage": lambda data: b"\x00not a checkpoint\xff" * 64,
    "empty": lambda data: b"",
}


@pytest.fixture
def run_copy(straight_run: tuple[Path, list[dict]], tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(straight_run[0], run_dir)
    return run_dir


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_checkpoint_is_refused_and_left_untouched(
    kind: str, space: SearchSpace, space_yaml: Path, run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = run_copy / CHECKPOINT_FILE
    ckpt.write_bytes(CORRUPTIONS[kind](ckpt.read_bytes()))
    before = ckpt.read_bytes()
    more = replace(CONFIG, epochs=3)  # asks for more training, so it would overwrite the file if it resumed
    with pytest.raises(CheckpointError, match="corrupt") as info:
        train_supernet(space, run_copy, more, device="cpu", progress=False)
    assert str(ckpt) in str(info.value)
    assert ckpt.read_bytes() == before

    assert main([*cli_args(space_yaml, run_copy, more), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixnas: error: ") and err.count("\n") == 1 and str(ckpt) in err
    assert ckpt.read_bytes() == before


def test_checkpoint_without_model_state_is_refused(space: SearchSpace, run_copy: Path) -> None:
    ckpt = run_copy / CHECKPOINT_FILE
    torch.save({"epoch": 1, "weights": torch.zeros(3)}, ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(CheckpointError, match="not a mixnas supernet checkpoint.*'model'"):
        train_supernet(space, run_copy, CONFIG, device="cpu", progress=False)
    assert ckpt.read_bytes() == before


def wider(space: SearchSpace) -> SearchSpace:
    d = space.to_dict()
    d["stages"][1]["dim"] = [48]
    return SearchSpace.from_dict(d)


def test_checkpoint_of_another_space_is_refused(
    space: SearchSpace, straight_run: tuple[Path, list[dict]], tmp_path: Path
) -> None:
    other = wider(space)
    run_dir = tmp_path / "other"
    prepare_run_dir(run_dir, other, CONFIG)
    shutil.copy(straight_run[0] / CHECKPOINT_FILE, run_dir / CHECKPOINT_FILE)
    before = (run_dir / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(CheckpointError, match="does not fit this network") as info:
        train_supernet(other, run_dir, CONFIG, device="cpu", progress=False)
    assert str(run_dir / CHECKPOINT_FILE) in str(info.value)
    assert (run_dir / CHECKPOINT_FILE).read_bytes() == before


def test_other_space_or_settings_for_a_run_directory_are_refused(
    space: SearchSpace, run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {n: (run_copy / n).read_bytes() for n in (SPACE_FILE, CONFIG_FILE, CHECKPOINT_FILE, WEIGHTS_FILE)}
    with pytest.raises(CheckpointError, match="different search space") as info:
        train_supernet(wider(space), run_copy, CONFIG, device="cpu", progress=False)
    assert SPACE_FILE in str(info.value)
    with pytest.raises(CheckpointError, match=r"other settings \(lr: 0.002 in the run directory, 0.001 now\)"):
        train_supernet(space, run_copy, replace(CONFIG, lr=1e-3), device="cpu", progress=False)
    with pytest.raises(CheckpointError, match="seed"):
        train_supernet(space, run_copy, replace(CONFIG, seed=1), device="cpu", progress=False)

    other_yaml = tmp_path / "wider.yaml"
    wider(space).to_yaml(other_yaml)
    space_yaml = tmp_path / "same.yaml"
    space.to_yaml(space_yaml)
    for args, needle in (
        (cli_args(other_yaml, run_copy), "different search space"),
        (cli_args(space_yaml, run_copy, replace(CONFIG, lr=1e-3)), "lr: 0.002"),
    ):
        assert main([*args, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mixnas: error: ") and err.count("\n") == 1 and needle in err, err
    for name, data in files.items():
        assert (run_copy / name).read_bytes() == data, f"{name} was changed by a refused run"


def test_a_few_shot_part_starts_from_its_parents_weights_and_resumes_from_its_own(
    space: SearchSpace, space_yaml: Path, straight_run: tuple[Path, list[dict]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    parent = load_file(straight_run[0] / WEIGHTS_FILE)
    part = space.with_stage_mixers(0, ["dge"])
    assert [m.type for m in part.stages[0].mixers] == ["dge"] and part.stages[1:] == space.stages[1:]
    with pytest.raises(ConfigError, match=r"stages\[0\].mixers: 'refiner' is not offered"):
        space.with_stage_mixers(0, ["refiner"])

    # Before any step: every tensor of the part is its parent's (nothing of the other stage-1 mixers is kept).
    run_dir = tmp_path / "part"
    started = []
    original = Supernet.load_state_dict

    def spy(self: Supernet, state: dict, *a: Any, **k: Any) -> Any:
        started.append({key: v.clone() for key, v in state.items()})
        return original(self, state, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Supernet, "load_state_dict", spy)
        train_supernet(part, run_dir, replace(CONFIG, epochs=1), device="cpu", progress=False,
                       init_weights=straight_run[0])
    assert len(started) == 1
    own = Supernet(part).state_dict()
    assert set(started[0]) == set(own) and len(own) < len(parent)
    assert all(torch.equal(started[0][k], parent[k]) for k in own)
    assert not any(k.startswith("stages.0.") and ".mixers.dwconv." in k for k in own)

    # Resumed for a second epoch, the part continues from its own checkpoint, not from the parent again.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Supernet, "load_state_dict", spy)
        train_supernet(part, run_dir, CONFIG, device="cpu", progress=False, init_weights=straight_run[0])
    assert len(started) == 2  # the checkpoint's state, loaded by the training loop
    assert load_checkpoint(run_dir)["epoch"] == 2

    # A parent that does not fit (another width) is refused before anything is written.
    with pytest.raises(CheckpointError, match="does not fit this network"):
        train_supernet(wider(space), tmp_path / "refused", CONFIG, device="cpu", progress=False,
                       init_weights=straight_run[0] / WEIGHTS_FILE)
    assert not (tmp_path / "refused").exists()
    missing = tmp_path / "nope.safetensors"
    assert main([*cli_args(space_yaml, tmp_path / "cli"), "--init-weights", str(missing), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixnas: error: ") and err.count("\n") == 1 and str(missing) in err, err
    assert not (tmp_path / "cli").exists()


# ------------------------------------------------------------------------------ BatchNorm recalibration
def test_recalibration_gives_the_cumulative_batch_statistics(
    space: SearchSpace, digits: mixnas.data.DatasetBundle
) -> None:
    torch.manual_seed(0)
    model = Supernet(space).extract(space.largest()).train()
    layers = batchnorm_layers(model)
    assert len(layers) >= 6  # dwconv's three and the FFN's pre-norm, per block
    for bn in layers:  # stale statistics, as weight sharing leaves them
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(50.0)
        bn.num_batches_tracked.fill_(7)
    batches = [x for x, _ in make_loader(digits.calib, 16, shuffle=True, seed=1)][:5]

    momenta = [bn.momentum for bn in layers]
    seen: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(layers))}
    modes: list[tuple[bool, bool]] = []  # (BN in train mode, the rest of the model in eval mode)

    def record(i: int, bn: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen[i].append(inputs[0].detach().clone())
        modes.append((bn.training, model.training))

    hooks = [bn.register_forward_hook(functools.partial(record, i)) for i, bn in enumerate(layers)]
    try:
        used = recalibrate_batchnorm(model, batches, num_batches=3)
    finally:
        for h in hooks:
            h.remove()

    assert used == 3
    assert all(len(v) == 3 for v in seen.values())  # only the first num_batches batches ran
    assert set(modes) == {(True, False)}
    for i, bn in enumerate(layers):
        means = torch.stack([x.mean(dim=(0, 2, 3)) for x in seen[i]])
        variances = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in seen[i]])
        torch.testing.assert_close(bn.running_mean, means.mean(0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var, variances.mean(0), rtol=1e-4, atol=1e-5)
        assert int(bn.num_batches_tracked) == 3
    assert [bn.momentum for bn in layers] == momenta  # restored after the cumulative average (momentum None)
    assert model.training  # the mode it had before

    val = make_loader(digits.val, 256, shuffle=False)
    acc = evaluate_accuracy(model, val)
    assert 0.0 <= acc <= 100.0 and evaluate_accuracy(model, val) == acc
    dge = space.largest("dge")  # without its positional conv, an all-DGE network has no BatchNorm
    no_pos = replace(dge, stages=tuple(replace(s, mixer=s.mixer.with_params(pos_conv=False)) for s in dge.stages))
    no_bn = build_model(no_pos)
    assert not batchnorm_layers(no_bn) and recalibrate_batchnorm(no_bn, batches, 3) == 0
    assert batchnorm_layers(Supernet(space).extract(dge))  # with it (the default), it has some


def test_subnet_accuracy_recalibrates_the_extracted_model(
    space: SearchSpace, straight_run: tuple[Path, list[dict]], digits: mixnas.data.DatasetBundle,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    supernet = Supernet(space)
    supernet.load_state_dict(load_file(straight_run[0] / WEIGHTS_FILE))
    arch = space.smallest()
    val = make_loader(digits.val, 256, shuffle=False)
    calib = lambda: make_loader(digits.calib, 16, shuffle=True, seed=3)  # noqa: E731

    calls: list[int] = []

    def spy(model: torch.nn.Module, batches: Any, num_batches: int = 10) -> int:
        calls.append(recalibrate_batchnorm(model, batches, num_batches))
        return calls[-1]

    monkeypatch.setattr(batchnorm, "recalibrate_batchnorm", spy)
    acc = subnet_accuracy(supernet, arch, calib(), val, torch.device("cpu"), calib_batches=2)
    assert calls == [2]
    assert subnet_accuracy(supernet, arch, calib(), val, torch.device("cpu"), calib_batches=2) == acc

    manual = supernet.extract(arch)
    recalibrate_batchnorm(manual, calib(), 2)
    assert evaluate_accuracy(manual, val) == acc

    # The supernet's held statistics do not matter: they are re-estimated for the subnet.
    stale = supernet.extract(arch).eval()
    x = next(iter(val))[0][:8]
    before = stale(x)
    for bn in batchnorm_layers(supernet):
        bn.running_mean.add_(2.0)
        bn.running_var.mul_(30.0)
    assert not torch.allclose(supernet.extract(arch).eval()(x), before)  # without recalibration they would
    assert subnet_accuracy(supernet, arch, calib(), val, torch.device("cpu"), calib_batches=2) == acc


# ----------------------------------------------------------------------------------------- distributed
def test_the_distributed_session_destroys_the_group_it_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gloo group left to the interpreter's exit can abort a finished run (SIGABRT); the session ends it."""
    import torch.distributed as dist

    store = str(tmp_path / "store")
    real_init = dist.init_process_group
    monkeypatch.setattr(dist, "init_process_group", lambda backend: real_init(
        backend, init_method=f"file://{store}", rank=0, world_size=1))
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun; the group itself has one member here
    cpu = torch.device("cpu")
    with distributed_session(cpu) as ctx:
        assert dist.is_initialized() and ctx.world_size == 1 and ctx.is_main
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="boom"), distributed_session(cpu):
        raise RuntimeError("boom")
    assert not dist.is_initialized()  # also when training fails

    real_init("gloo", init_method=f"file://{store}-outer", rank=0, world_size=1)
    try:
        with distributed_session(cpu):
            pass
        assert dist.is_initialized()  # a group the caller made is the caller's to end
    finally:
        dist.destroy_process_group()
    monkeypatch.setenv("WORLD_SIZE", "1")
    with distributed_session(cpu) as ctx:
        assert ctx.world_size == 1 and not dist.is_initialized()


@pytest.mark.slow
def test_torchrun_trains_with_ddp_on_two_cpu_processes(space_yaml: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "ddp"
    command = [
        str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "mixnas.cli", "supernet", "train",
        "--space", str(space_yaml), "--data", "digits", "--epochs", "1", "--steps-per-epoch", "3",
        "--batch-size", "8", "--calib-batches", "2", "--out", str(run_dir), "--quiet", "--device", "cpu",
    ]
    result = subprocess.run(command, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dir / "distributed.json").read_text())
    assert report["world_size"] == 2 and report["ranks_in_sync"] is True
    assert len(report["checksums"]) == 2 and report["checksums"][0] == report["checksums"][1]
    _, rows = read_metrics(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1]
    assert float(rows[0]["images_per_s"]) > 0 and 0 <= float(rows[0]["val_acc_largest"]) <= 100
    assert load_checkpoint(run_dir)["epoch"] == 1
    assert TrainConfig(**json.loads((run_dir / CONFIG_FILE).read_text())).batch_size == 8


def _torchrun(space_yaml: Path, run_dir: Path, epochs: int, *launcher: str) -> list[str]:
    return [
        str(TORCHRUN), *launcher, "-m", "mixnas.cli", "supernet", "train", "--space", str(space_yaml),
        "--data", "digits", "--epochs", str(epochs), "--steps-per-epoch", "12", "--batch-size", "8",
        "--calib-batches", "2", "--out", str(run_dir), "--quiet", "--device", "cpu",
    ]


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a launcher and every process it started (its workers run in their own sessions)."""
    pids = [proc.pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == proc.pid:
            pids.append(pid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_two_torchrun_launchers_rendezvous_train_alike_and_resume_after_a_kill(
    space_yaml: Path, tmp_path: Path
) -> None:
    """Two launchers (--nnodes 2, one process each, c10d rendezvous on 127.0.0.1) train like one launcher
    with two processes; one launcher killed in epoch 2, both started again: training resumes from epoch 1's
    checkpoint and ends with the same weights."""
    env = {**ENV, "GLOO_SOCKET_IFNAME": "lo"}
    single = tmp_path / "single"
    result = subprocess.run(_torchrun(space_yaml, single, 3, "--standalone", "--nproc_per_node", "2"), env=env,
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    run_dir = tmp_path / "two"

    def launchers(port: int) -> list[subprocess.Popen]:
        common = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                  "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", f"mixnas{port}", "--local_addr", "127.0.0.1",
                  "--max_restarts", "0"]
        return [subprocess.Popen(_torchrun(space_yaml, run_dir, 3, *common), env=env, cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]

    def free_port() -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    first = launchers(free_port())
    try:
        wait_for(run_dir / METRICS_FILE, first[0], timeout=240)  # epoch 1 written; epoch 2 under way
        _kill_tree(first[1])
        first[0].wait(timeout=240)  # the survivor's collective fails and it gives up (--max_restarts 0)
    finally:
        for proc in first:
            _kill_tree(proc)
    assert load_checkpoint(run_dir)["epoch"] == 1, "the kill should land in epoch 2"

    again = launchers(free_port())
    try:
        for proc in again:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]
    finally:
        for proc in again:
            _kill_tree(proc)
    report = json.loads((run_dir / "distributed.json").read_text())
    assert report["world_size"] == 2 and report["ranks_in_sync"] is True
    assert [int(r["epoch"]) for r in read_metrics(run_dir)[1]] == [1, 2, 3]
    assert_same_weights(run_dir, single)
