"""Supernet training (sandwich rule, in-place distillation), BatchNorm recalibration and evaluation.

Each step trains the space's largest architecture on the labels (label-smoothed cross-entropy), then the
smallest and ``num_random`` random architectures on the largest's soft predictions (in-place
distillation), plus DGE's budget loss for architectures that use it. All of a step's architectures run
in one forward of ``SandwichLoss`` so that one backward, and under ``torchrun`` one DistributedDataParallel
all-reduce, covers them. AdamW, warm-up + cosine decay and the losses come from timm's factories.

Resuming: everything random in an epoch (data order, augmentation, architecture samples, drop-path,
Gumbel noise) is seeded from (seed, epoch), and a checkpoint is written atomically after each epoch;
running the same command again continues after the last finished epoch and ends with the same weights
as an uninterrupted run.

Run directory: ``space.yaml``, ``train_config.json``, ``checkpoint.pt`` (full training state),
``supernet.safetensors`` (weights only, for search and export), ``metrics.csv``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import Tensor, nn
from tqdm.auto import tqdm

from mixnas.atomic import atomic_write_text
from mixnas.search_space import ArchConfig, ConfigError, SearchSpace
from mixnas.supernet.checkpoint import CheckpointError, check_state_fits, load_state, save_state, save_weights
from mixnas.supernet.supernet import Supernet

SPACE_FILE = "space.yaml"
CONFIG_FILE = "train_config.json"
CHECKPOINT_FILE = "checkpoint.pt"
WEIGHTS_FILE = "supernet.safetensors"
METRICS_FILE = "metrics.csv"
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
        weight_decay: AdamW weight decay (not applied to norms and biases).
        warmup_epochs: linear warm-up before the cosine decay.
        label_smoothing: for the largest architecture's cross-entropy.
        num_random: random architectures per step besides the largest and the smallest.
        distill: smaller architectures learn from the largest's soft predictions (else from labels).
        rotate_mixers: the sandwich's largest and smallest take each common mixer in turn, step by step
            (off by default: on the 5-epoch demo it left the supernet at chance, see the README).
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
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    num_random: int = 2
    distill: bool = True
    rotate_mixers: bool = False
    budget_weight: float = 1.0
    clip_grad: float = 5.0
    seed: int = 0
    steps_per_epoch: int = 0
    calib_batches: int = 10
    workers: int = 0

    def differs_from(self, other: TrainConfig) -> str | None:
        """The first setting (other than epochs) that differs, or None."""
        return changed_setting(self, other, "the run directory")


def changed_setting(new: Any, stored: Any, where: str) -> str | None:
    """The first field of two settings dataclasses, other than ``epochs`` (which a resumed run may raise),
    whose values differ, as ``"lr: 0.001 in <where>, 0.002 now"``; None when they agree."""
    for f in fields(new):
        if f.name != "epochs" and getattr(new, f.name) != getattr(stored, f.name):
            return f"{f.name}: {getattr(stored, f.name)!r} in {where}, {getattr(new, f.name)!r} now"
    return None


# --------------------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistributedContext:
    """Rank and world size; world size 1 without torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group that torchrun describes in the environment (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


# ------------------------------------------------------------------------------------------ the step
class SandwichLoss(nn.Module):
    """The sandwich step's total loss over several architectures in one forward.

    Args:
        supernet: the network being trained.
        label_smoothing: for the largest architecture's cross-entropy.
        distill: smaller architectures learn from the largest's soft predictions.
        budget_weight: weight of DGE's budget loss.
    """

    def __init__(self, supernet: Supernet, label_smoothing: float, distill: bool, budget_weight: float) -> None:
        super().__init__()
        self.supernet = supernet
        self.hard = LabelSmoothingCrossEntropy(label_smoothing) if label_smoothing > 0 else nn.CrossEntropyLoss()
        self.soft = SoftTargetCrossEntropy()
        self.distill, self.budget_weight = distill, budget_weight

    def forward(self, x: Tensor, y: Tensor, archs: list[ArchConfig]) -> tuple[Tensor, Tensor]:
        """Returns (sum of the architectures' losses, the largest's loss), archs[0] being the largest."""
        total = x.new_zeros(())
        teacher = None
        first = x.new_zeros(())
        for i, arch in enumerate(archs):
            logits = self.supernet(x, arch)
            loss = self.hard(logits, y) if i == 0 or not self.distill else self.soft(logits, teacher)
            if i == 0:
                teacher = F.softmax(logits.detach().float(), dim=-1)
                first = loss.detach()
            budget = self.supernet.dge_budget_loss(arch)
            if budget is not None:
                loss = loss + self.budget_weight * budget
            total = total + loss
        return total, first


# ------------------------------------------------------------------------------- BatchNorm and eval
def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Tensor | tuple], num_batches: int = 10) -> int:
    """Re-estimate BatchNorm statistics of a standalone model on a few training batches.

    Weight sharing leaves the held statistics a mixture over every architecture trained; a subnet's
    own statistics are recomputed as a cumulative average (momentum None) over ``num_batches``
    batches, with every other module in eval mode. Returns the number of batches used (0 without BN).
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    was_training = model.training
    model.eval()
    saved = [(bn.momentum, bn.training) for bn in layers]
    device = next(model.parameters()).device
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    used = 0
    try:
        for batch in batches:
            if used >= num_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(device))
            used += 1
    finally:
        for bn, (momentum, _) in zip(layers, saved):
            bn.momentum = momentum
        model.train(was_training)
    return used


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu",
                      arch: ArchConfig | None = None) -> float:
    """Top-1 accuracy (%) of ``model`` (or ``model(x, arch)``) over a loader."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x) if arch is None else model(x, arch)
        correct += int((logits.argmax(-1) == y).sum())
        total += int(y.numel())
    return 100.0 * correct / max(total, 1)


def subnet_accuracy(supernet: Supernet, arch: ArchConfig, calib: Iterable, val: Iterable,
                    device: torch.device, calib_batches: int) -> float:
    """Extract ``arch``, recalibrate its BatchNorm, and measure its validation top-1 (%)."""
    model = supernet.extract(arch).to(device)
    recalibrate_batchnorm(model, calib, calib_batches)
    return evaluate_accuracy(model, val, device)


# ---------------------------------------------------------------------------------------- run files
def write_metrics_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """Atomically (re)write a metrics CSV, one row per finished epoch."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in columns})
    atomic_write_text(path, buf.getvalue())


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    write_metrics_csv(run_dir / METRICS_FILE, METRIC_COLUMNS, rows)


def read_space(run_dir: Path) -> SearchSpace:
    """The search space a run directory was trained on."""
    path = run_dir / SPACE_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a supernet run directory (no {SPACE_FILE}); train one first")
    return SearchSpace.from_yaml(path)


def read_config(run_dir: Path) -> TrainConfig:
    path = run_dir / CONFIG_FILE
    try:
        raw = json.loads(path.read_text())
        return TrainConfig(**raw)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; the run directory is incomplete") from None
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{path}: corrupt ({e.__class__.__name__}: {str(e)[:100]})") from None


def prepare_run_dir(run_dir: Path, space: SearchSpace, config: TrainConfig) -> None:
    """Create a run directory, or check that an existing one was started with the same space and config."""
    space_path = run_dir / SPACE_FILE
    if space_path.exists():
        stored = read_space(run_dir)
        if stored.to_dict() != space.to_dict():
            raise CheckpointError(
                f"{space_path}: this run was trained on a different search space; "
                f"use another --out or the same --space"
            )
        previous = read_config(run_dir)
        diff = config.differs_from(previous)
        if diff is not None:
            raise CheckpointError(f"{run_dir / CONFIG_FILE}: this run used other settings ({diff})")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        space.to_yaml(space_path)
    atomic_write_text(run_dir / CONFIG_FILE, json.dumps(asdict(config), indent=2) + "\n")


def sandwich_archs(space: SearchSpace, rng: random.Random, config: TrainConfig, step: int) -> list[ArchConfig]:
    """The step's architectures: the largest (the teacher), the smallest, and ``num_random`` samples.

    With ``rotate_mixers`` the largest and smallest use, step by step in turn, each mixer offered in every
    stage, so that every mixer is trained at its extremes and distilled from a teacher of its own kind;
    otherwise each stage's first-listed mixer.
    """
    kinds = space.mixer_types() if config.rotate_mixers else []
    mixer = kinds[step % len(kinds)] if kinds else None
    return [space.largest(mixer), space.smallest(mixer)] + [space.sample(rng) for _ in range(config.num_random)]


def limit_batches(loader: Iterable, limit: int) -> Iterator:
    """The loader's batches, at most ``limit`` of them (0: all)."""
    for i, batch in enumerate(loader):
        if limit and i >= limit:
            return
        yield batch


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``; a clear error when CUDA is asked for but absent."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available on this machine; use --device cpu")
    return torch.device(device)


# -------------------------------------------------------------------------------------- the trainer
def train_supernet(
    space: SearchSpace, run_dir: str | Path, config: TrainConfig, device: str = "auto", progress: bool = True,
    stop_after_epoch: int | None = None,
) -> list[dict[str, Any]]:
    """Train (or resume training) a supernet into ``run_dir``; returns the per-epoch metrics.

    Args:
        space: the search space.
        run_dir: where the space, config, checkpoints and metrics live.
        config: the training settings.
        device: ``auto``, ``cpu`` or ``cuda`` (the local GPU under torchrun).
        progress: show a progress bar.
        stop_after_epoch: stop once this epoch is done (tests use it to simulate an interruption).
    """
    from mixnas.data import load_dataset, make_loader

    run_dir = Path(run_dir)
    dev = resolve_device(device)
    ctx = init_distributed(dev)
    if dev.type == "cuda" and ctx.world_size > 1:
        dev = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(dev)
    if ctx.is_main:
        prepare_run_dir(run_dir, space, config)
    if ctx.world_size > 1:
        dist.barrier()

    bundle = load_dataset(config.data, space.input_size, seed=config.seed)
    if bundle.num_classes != space.num_classes:
        raise ConfigError(
            f"num_classes: the space has {space.num_classes} classes but {config.data} has {bundle.num_classes}"
        )
    torch.manual_seed(config.seed)
    supernet = Supernet(space).to(dev)
    sandwich = SandwichLoss(supernet, config.label_smoothing, config.distill, config.budget_weight)
    step_module: nn.Module = sandwich
    if ctx.world_size > 1:
        step_module = nn.parallel.DistributedDataParallel(
            sandwich, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=True
        )
    optimizer = create_optimizer_v2(supernet, opt="adamw", lr=config.lr, weight_decay=config.weight_decay)
    sampler = None
    if ctx.world_size > 1:
        sampler = torch.utils.data.distributed.DistributedSampler(
            bundle.train, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed, drop_last=True
        )
    probe = make_loader(
        bundle.train, config.batch_size, shuffle=sampler is None, seed=config.seed, drop_last=True, sampler=sampler
    )
    steps = len(probe) if not config.steps_per_epoch else min(len(probe), config.steps_per_epoch)
    if steps == 0:
        raise ConfigError(f"batch_size: {config.batch_size} is larger than the training set of {config.data}")
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=config.epochs, warmup_epochs=math.ceil(config.warmup_epochs),
        warmup_lr=config.lr * 0.01, min_lr=config.lr * 0.01, step_on_epochs=False, updates_per_epoch=steps,
    )

    start_epoch, history = 0, []
    ckpt_path = run_dir / CHECKPOINT_FILE
    if ckpt_path.exists():
        state = load_state(ckpt_path)
        try:
            check_state_fits(supernet, state["model"], ckpt_path)
            supernet.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, history = int(state["epoch"]), list(state["history"])
        except KeyError as e:
            raise CheckpointError(f"{ckpt_path}: not a mixnas supernet checkpoint (no {e.args[0]!r})") from None
    if start_epoch >= config.epochs:
        if ctx.is_main and progress:
            print(f"{run_dir}: already trained for {start_epoch} epochs (asked for {config.epochs}); nothing to do")
        return history

    val_loader = make_loader(bundle.val, 256, shuffle=False)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
    )
    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(config.seed * 100_003 + epoch)
        rng = random.Random(config.seed * 100_003 + epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = make_loader(
            bundle.train, config.batch_size, shuffle=sampler is None, seed=config.seed * 100_003 + epoch,
            num_workers=config.workers, drop_last=True, sampler=sampler,
        )
        supernet.train()
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        bar = tqdm(total=steps, desc=f"supernet epoch {epoch + 1}/{config.epochs}", unit="step",
                   disable=not (progress and ctx.is_main), leave=False, dynamic_ncols=True)
        for step, (x, y) in enumerate(limit_batches(loader, steps)):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            archs = sandwich_archs(space, rng, config, epoch * steps + step)
            with autocast:
                total, largest_loss = step_module(x, y, archs)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if config.clip_grad > 0:
                nn.utils.clip_grad_norm_(supernet.parameters(), config.clip_grad)
            optimizer.step()
            scheduler.step_update(epoch * steps + step + 1)
            seen += x.shape[0] * ctx.world_size
            loss_sum += float(largest_loss)
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss_sum / (step + 1):.3f}", img_s=f"{rate:.0f}")
            bar.update()
        bar.close()
        seconds = time.perf_counter() - t0
        row: dict[str, Any] = {
            "epoch": epoch + 1, "train_loss": round(loss_sum / steps, 5), "images_per_s": round(seen / seconds, 1),
            "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": round(seconds, 2),
        }
        if ctx.is_main:
            supernet.eval()
            for key, arch in (("val_acc_largest", space.largest()), ("val_acc_smallest", space.smallest())):
                # Seeded by the epoch (not one loader for the whole call) so a resumed run recalibrates on the
                # same batches as an uninterrupted one; both architectures see the same batches.
                calib_loader = make_loader(bundle.calib, config.batch_size, shuffle=True,
                                           seed=config.seed * 100_003 + epoch)
                acc = subnet_accuracy(supernet, arch, calib_loader, val_loader, dev, config.calib_batches)
                row[key] = round(acc, 3)
            history.append(row)
            state = {"model": supernet.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                     "history": history}
            save_state(ckpt_path, state)
            save_weights(supernet, run_dir / WEIGHTS_FILE, {"epoch": str(epoch + 1)})
            write_metrics(run_dir, history)
            if progress:
                print(
                    f"epoch {epoch + 1}/{config.epochs}: loss {row['train_loss']:.3f}, "
                    f"{row['images_per_s']:.0f} img/s, val top-1 largest {row['val_acc_largest']:.2f}%, "
                    f"smallest {row['val_acc_smallest']:.2f}% ({seconds:.0f}s)",
                    flush=True,
                )
        if ctx.world_size > 1:
            dist.barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    if ctx.world_size > 1:
        _check_ranks_in_sync(supernet, run_dir, ctx)
    return history


def parameter_checksum(model: nn.Module) -> float:
    """A float that differs when any parameter differs (for checking ranks agree)."""
    with torch.no_grad():
        return float(sum((p.double() * (i + 1)).sum() for i, p in enumerate(model.parameters())))


def _check_ranks_in_sync(model: nn.Module, run_dir: Path, ctx: DistributedContext) -> None:
    """After DDP training every rank must hold the same weights; rank 0 records that it checked."""
    mine = torch.tensor([parameter_checksum(model)], dtype=torch.float64)
    gathered = [torch.zeros_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, mine)
    values = [float(t) for t in gathered]
    in_sync = max(values) - min(values) <= 1e-6 * max(1.0, abs(values[0]))
    if ctx.is_main:
        atomic_write_text(
            run_dir / "distributed.json",
            json.dumps({"world_size": ctx.world_size, "checksums": values, "ranks_in_sync": in_sync}, indent=2),
        )
    if not in_sync:
        raise RuntimeError(f"ranks ended with different weights: {values}")
