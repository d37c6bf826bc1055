"""Supernet training: the sandwich rule with in-place distillation, DGE's budget loss, DDP under torchrun.

Each step trains the space's largest architecture on the labels (label-smoothed cross-entropy), then the
smallest and ``num_random`` random architectures on the largest's soft predictions (in-place
distillation), plus DGE's budget loss for architectures that use it. All of a step's architectures run
in one forward of ``SandwichLoss`` so that one backward, and under ``torchrun`` one DistributedDataParallel
all-reduce, covers them. The loop itself (optimiser, schedule, resume, checkpoints) is ``fit``.

Run directory: see ``mixnas.run_dir.RunDir``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import Tensor, nn

from mixnas.atomic import atomic_write_text
from mixnas.device import resolve_device
from mixnas.errors import CheckpointError, ConfigError
from mixnas.lock import drive
from mixnas.run_dir import RunDir, changed_setting
from mixnas.search_space import ArchConfig, Preprocessing, SearchSpace
from mixnas.supernet import Supernet, budget_loss
from mixnas.supernet.checkpoint import load_weights
from mixnas.training._loop import (
    CLIP_GRAD,
    LABEL_SMOOTHING,
    WARMUP_EPOCHS,
    WEIGHT_DECAY,
    DistributedContext,
    FitHooks,
    Schedule,
    StepInfo,
    StepResult,
    epoch_seed,
    fit,
)
from mixnas.training.batchnorm import subnet_accuracy

METRIC_COLUMNS = [
    "epoch", "train_loss", "images_per_s", "lr", "val_acc_largest", "val_acc_smallest", "epoch_seconds",
]


@dataclass(frozen=True)
class TrainConfig:
    """Supernet training settings (saved in the run directory; a resumed run must use the same).

    Args:
        data: dataset spec (``digits``, ``cifar:PATH``, ``imagefolder:PATH``).
        epochs: total epochs (may be raised on a later run to train further).
        batch_size: images per step (per process under torchrun).
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay (not applied to norms, biases, position tables).
        warmup_epochs: linear warm-up before the cosine decay.
        label_smoothing: for the largest architecture's cross-entropy.
        num_random: random architectures per step besides the largest and the smallest.
        distill: smaller architectures learn from the largest's soft predictions (else from labels).
        distill_min_teacher_acc: distil only from a teacher at least this accurate (%) on the step's batch;
            below it (early in training, when the teacher is at chance) every architecture learns from the
            labels. 0 distils from the first step.
        rotate_mixers: the sandwich's largest and smallest take each common mixer in turn, step by step.
        fair: the random architectures of a step are a FairNAS set: each stage offers its every mixer once
            among them (as many architectures as the stage with most mixers offers), replacing
            ``num_random`` samples.
        budget_weight: weight of DGE's budget loss.
        clip_grad: gradient-norm clip (0 disables).
        seed: seeds every random choice of the run.
        steps_per_epoch: cap on steps per epoch (0 = a full pass over the training set).
        calib_batches: training batches used to recalibrate BatchNorm before each validation.
        workers: DataLoader worker processes.
    """

    data: str = "digits"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = WEIGHT_DECAY
    warmup_epochs: float = WARMUP_EPOCHS
    label_smoothing: float = LABEL_SMOOTHING
    num_random: int = 2
    distill: bool = True
    distill_min_teacher_acc: float = 0.0
    rotate_mixers: bool = False
    fair: bool = False
    budget_weight: float = 1.0
    clip_grad: float = CLIP_GRAD
    seed: int = 0
    steps_per_epoch: int = 0
    calib_batches: int = 10
    workers: int = 0

    def differs_from(self, other: TrainConfig) -> str | None:
        """The first setting (other than epochs) that differs, or None."""
        return changed_setting(self, other, "the run directory")

    def schedule(self) -> Schedule:
        return Schedule(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
            warmup_epochs=self.warmup_epochs, clip_grad=self.clip_grad, seed=self.seed,
            steps_per_epoch=self.steps_per_epoch, workers=self.workers,
        )


# --------------------------------------------------------------------------------------- distributed
def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group that torchrun describes in the environment (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


@contextlib.contextmanager
def distributed_session(device: torch.device) -> Iterator[DistributedContext]:
    """``init_distributed`` for the span of a ``with``; a process group it created is destroyed on the way out.

    A gloo group left for the interpreter's finalisation can abort the process (SIGABRT, "terminate called
    without an active exception") after training has finished: its worker threads outlive Python.
    """
    already = dist.is_initialized()
    ctx = init_distributed(device)
    try:
        yield ctx
    finally:
        if not already and dist.is_initialized():
            dist.destroy_process_group()


def parameter_checksum(model: nn.Module) -> float:
    """A float that differs when any parameter differs (for checking ranks agree)."""
    with torch.no_grad():
        return float(sum((p.double() * (i + 1)).sum() for i, p in enumerate(model.parameters())))


def check_ranks_in_sync(model: nn.Module, run: RunDir, ctx: DistributedContext) -> None:
    """After DDP training every rank must hold the same weights; rank 0 records that it checked."""
    mine = torch.tensor([parameter_checksum(model)], dtype=torch.float64)
    gathered = [torch.zeros_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, mine)
    values = [float(t) for t in gathered]
    in_sync = max(values) - min(values) <= 1e-6 * max(1.0, abs(values[0]))
    if ctx.is_main:
        atomic_write_text(
            run.distributed_report,
            json.dumps({"world_size": ctx.world_size, "checksums": values, "ranks_in_sync": in_sync}, indent=2),
        )
    if not in_sync:
        raise RuntimeError(f"ranks ended with different weights: {values}")


# ------------------------------------------------------------------------------------------ the step
class SandwichLoss(nn.Module):
    """The sandwich step's total loss over several architectures in one forward.

    Args:
        supernet: the network being trained.
        label_smoothing: for the largest architecture's cross-entropy.
        distill: smaller architectures learn from the largest's soft predictions.
        budget_weight: weight of DGE's budget loss.
    """

    def __init__(self, supernet: Supernet, label_smoothing: float, distill: bool, budget_weight: float,
                 distill_min_teacher_acc: float = 0.0) -> None:
        super().__init__()
        self.supernet = supernet
        self.hard = LabelSmoothingCrossEntropy(label_smoothing) if label_smoothing > 0 else nn.CrossEntropyLoss()
        self.soft = SoftTargetCrossEntropy()
        self.distill, self.budget_weight = distill, budget_weight
        self.min_teacher_acc = distill_min_teacher_acc

    def forward(self, x: Tensor, y: Tensor, archs: list[ArchConfig]) -> tuple[Tensor, Tensor]:
        """Returns (sum of the architectures' losses, the largest's loss), archs[0] being the largest."""
        total = x.new_zeros(())
        teacher = None
        first = x.new_zeros(())
        distill = self.distill
        for i, arch in enumerate(archs):
            logits, costs = self.supernet.forward_with_costs(x, arch)
            loss = self.hard(logits, y) if i == 0 or not distill else self.soft(logits, teacher)
            if i == 0:
                teacher = F.softmax(logits.detach().float(), dim=-1)
                first = loss.detach()
                if distill and self.min_teacher_acc > 0:  # a teacher at chance teaches noise: labels until it is not
                    accuracy = 100.0 * float((teacher.argmax(-1) == y).float().mean())
                    distill = accuracy >= self.min_teacher_acc
            budget = budget_loss(costs)
            if budget is not None:
                loss = loss + self.budget_weight * budget
            total = total + loss
        return total, first


def sandwich_archs(space: SearchSpace, rng: random.Random, config: TrainConfig, step: int) -> list[ArchConfig]:
    """The step's architectures: the largest (the teacher), the smallest, and ``num_random`` samples.

    With ``rotate_mixers`` the largest and smallest use, step by step in turn, each mixer offered in every
    stage, so that every mixer is trained at its extremes and distilled from a teacher of its own kind;
    otherwise each stage's first-listed mixer.
    """
    kinds = space.mixer_types() if config.rotate_mixers else []
    mixer = kinds[step % len(kinds)] if kinds else None
    extremes = [space.largest(mixer), space.smallest(mixer)]
    if config.fair:
        return extremes + fair_archs(space, rng)
    return extremes + [space.sample(rng) for _ in range(config.num_random)]


def fair_archs(space: SearchSpace, rng: random.Random) -> list[ArchConfig]:
    """A FairNAS set: n random architectures, n the most mixers a stage offers, in which every stage uses
    each of its mixers once (a stage offering fewer cycles through a shuffled order of them)."""
    n = max(len(st.mixers) for st in space.stages)
    orders = []
    for st in space.stages:
        kinds = [m.type for m in st.mixers]
        rng.shuffle(kinds)
        orders.append([kinds[j % len(kinds)] for j in range(n)])
    return [space.sample(rng, mixers=[order[j] for order in orders]) for j in range(n)]


# ---------------------------------------------------------------------------------------- run files
def read_space(run_dir: RunDir | str | Path) -> SearchSpace:
    """The search space a run directory was trained on."""
    run = RunDir.of(run_dir)
    if not run.space_file.is_file():
        raise CheckpointError(f"{run.path}: not a supernet run directory (no {RunDir.SPACE}); train one first")
    return SearchSpace.from_yaml(run.space_file)


def read_config(run_dir: RunDir | str | Path) -> TrainConfig:
    return RunDir.of(run_dir).read_settings(TrainConfig)


def check_run_dir(run: RunDir, space: SearchSpace, config: TrainConfig) -> None:
    """Refuse an existing run directory started with another space or other settings (writes nothing)."""
    if run.space_file.exists():
        if read_space(run).to_dict() != space.to_dict():
            raise CheckpointError(
                f"{run.space_file}: this run was trained on a different search space; "
                f"use another --out or the same --space"
            )
        run.check_settings(config)


def prepare_run_dir(run_dir: RunDir | str | Path, space: SearchSpace, config: TrainConfig,
                    preprocessing: Preprocessing | None = None) -> None:
    """Create a run directory, or check that an existing one was started with the same space and config;
    records the data's ``preprocessing`` (exported architectures carry it)."""
    run = RunDir.of(run_dir)
    check_run_dir(run, space, config)
    run.path.mkdir(parents=True, exist_ok=True)
    if not run.space_file.exists():
        space.to_yaml(run.space_file)
    run.write_settings(config)
    if preprocessing is not None:
        atomic_write_text(run.preprocessing_file, json.dumps(preprocessing.to_dict(), indent=2) + "\n")


def read_preprocessing(run_dir: RunDir | str | Path) -> Preprocessing:
    """The preprocessing of the data a supernet run trained on: its record, or (a run from before records
    were kept) the dataset's, which loading the dataset recomputes."""
    from mixnas.data import load_dataset

    run = RunDir.of(run_dir)
    path = run.preprocessing_file
    if path.is_file():
        try:
            return Preprocessing.from_dict(json.loads(path.read_text()), str(path))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise CheckpointError(f"{path}: corrupt; delete it and mixnas recomputes it from the dataset") from None
    config = read_config(run)
    bundle = load_dataset(config.data, read_space(run).input_size, seed=config.seed)
    assert bundle.preprocessing is not None
    return bundle.preprocessing


def resolve_num_classes(space: SearchSpace, num_classes: int, data: str, override: int | None = None,
                        say: Any = None) -> SearchSpace:
    """The space with its head sized for the data: ``auto`` takes the dataset's count (one line says so),
    ``override`` (``--num-classes``) wins, and an explicit count that mismatches the data is refused."""
    if override is not None:
        if override != num_classes:
            raise ConfigError(f"--num-classes: {override}, but {data} has {num_classes} classes")
        return space.with_num_classes(override)
    if space.num_classes is None:
        if say is not None:
            say(f"num_classes: auto -> {num_classes} (the classes of {data})")
        return space.with_num_classes(num_classes)
    if space.num_classes != num_classes:
        raise ConfigError(
            f"num_classes: the space has {space.num_classes} classes but {data} has {num_classes}; "
            f"set num_classes: auto (or {num_classes}) in the space"
        )
    return space


# -------------------------------------------------------------------------------------- the trainer
def train_supernet(
    space: SearchSpace, run_dir: RunDir | str | Path, config: TrainConfig, device: str = "auto", progress: bool = True,
    stop_after_epoch: int | None = None, num_classes: int | None = None, init_weights: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Train (or resume training) a supernet into ``run_dir``; returns the per-epoch metrics.

    Everything is checked (the dataset, the run directory, the checkpoint) before a file is written, so a
    refused command leaves no half-made directory.

    Args:
        space: the search space (``num_classes: auto`` takes the dataset's class count).
        run_dir: where the space, config, checkpoints and metrics live (a ``RunDir`` or its path).
        config: the training settings.
        device: ``auto``, ``cpu`` or ``cuda`` (the local GPU under torchrun).
        progress: show a progress bar and a line per epoch.
        stop_after_epoch: stop once this epoch is done (tests use it to simulate an interruption).
        num_classes: override the space's class count (it must match the dataset's).
        init_weights: a supernet weights file (or a run directory holding one) to start from instead of a
            random initialisation: every tensor of this supernet must be in it, with the same shape (a
            supernet over a narrower space, such as a few-shot split's, starts from its parent's). Ignored
            once this run has a checkpoint: a resumed run continues from its own.
    """
    run = RunDir.of(run_dir)
    dev = resolve_device(device)
    with distributed_session(dev) as ctx:
        return _train_supernet(ctx, dev, space, run, config, progress, stop_after_epoch, num_classes,
                               init_weights)


def _train_supernet(
    ctx: DistributedContext, dev: torch.device, space: SearchSpace, run: RunDir, config: TrainConfig,
    progress: bool, stop_after_epoch: int | None, num_classes: int | None, init_weights: str | Path | None,
) -> list[dict[str, Any]]:
    from mixnas.data import load_dataset, make_loader

    if dev.type == "cuda" and ctx.world_size > 1:
        dev = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(dev)
    say = print if (progress and ctx.is_main) else None
    bundle = load_dataset(config.data, space.input_size, seed=config.seed)
    space = resolve_num_classes(space, bundle.num_classes, config.data, num_classes, say)
    check_run_dir(run, space, config)

    torch.manual_seed(config.seed)
    supernet = Supernet(space)
    if init_weights is not None and not run.checkpoint.exists():
        source = Path(init_weights)
        load_weights(supernet, RunDir.of(source).weights if source.is_dir() else source, subset=True)
    supernet = supernet.to(dev)
    sandwich = SandwichLoss(supernet, config.label_smoothing, config.distill, config.budget_weight,
                            config.distill_min_teacher_acc)
    step_module: nn.Module = sandwich
    if ctx.world_size > 1:  # fit gives each rank its share of the training set
        step_module = nn.parallel.DistributedDataParallel(
            sandwich, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=True
        )
    val_loader = make_loader(bundle.val, 256, shuffle=False)

    def step(x: Tensor, y: Tensor, info: StepInfo) -> StepResult:
        total, largest = step_module(x, y, sandwich_archs(space, info.rng, config, info.index))
        return StepResult(total, largest)

    def end_of_epoch(epoch: int) -> dict[str, Any]:
        supernet.eval()
        row = {}
        for key, arch in (("val_acc_largest", space.largest()), ("val_acc_smallest", space.smallest())):
            # Seeded by the epoch (not one loader for the whole call) so a resumed run recalibrates on the
            # same batches as an uninterrupted one; both architectures see the same batches.
            calib = make_loader(bundle.calib, config.batch_size, shuffle=True, seed=epoch_seed(config.seed, epoch))
            row[key] = round(subnet_accuracy(supernet, arch, calib, val_loader, dev, config.calib_batches), 3)
        return row

    lock = contextlib.ExitStack()

    def prepare() -> None:
        if ctx.is_main:
            run.path.mkdir(parents=True, exist_ok=True)
            lock.enter_context(drive(run, "supernet train"))  # refuses while another process trains here
            prepare_run_dir(run, space, config, bundle.preprocessing)
        if ctx.world_size > 1:
            dist.barrier()

    def describe(row: dict[str, Any]) -> str:
        return (f"epoch {row['epoch']}/{config.epochs}: loss {row['train_loss']:.3f}, {row['images_per_s']:.0f} img/s, "
                f"val top-1 largest {row['val_acc_largest']:.2f}%, smallest {row['val_acc_smallest']:.2f}% "
                f"({row['epoch_seconds']:.0f}s)")

    hooks = FitHooks(prepare=prepare, end_of_epoch=end_of_epoch, describe=describe, columns=METRIC_COLUMNS,
                     stop_after_epoch=stop_after_epoch)
    with lock:
        history = fit(supernet, step, bundle.train, config.schedule(), dev, run=run, hooks=hooks, data=config.data,
                      progress=progress, desc="supernet", distributed=ctx)
    if ctx.world_size > 1:
        check_ranks_in_sync(supernet, run, ctx)
    return history


__all__ = [
    "METRIC_COLUMNS", "SandwichLoss", "TrainConfig", "check_run_dir", "distributed_session", "init_distributed",
    "prepare_run_dir", "read_config", "read_preprocessing",
    "read_space", "resolve_num_classes", "sandwich_archs", "train_supernet",
]
