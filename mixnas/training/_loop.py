"""``fit``: the one training loop behind supernet training, standalone training and candidate fine-tuning.

It owns what the three share: AdamW and warm-up + cosine decay from timm's factories, resuming from the
run directory's checkpoint, the seed rule, the epoch's data order, gradient clipping, bf16 autocast on a
GPU, the progress bar, and after each epoch an atomic checkpoint, the weights and the metrics CSV. What a
step computes (the sandwich of architectures, or one network's loss) and what an epoch reports (validation
accuracies) are the caller's, passed in as functions: the step, and the epoch's hooks (``FitHooks``).

Resuming: everything random in an epoch (data order, augmentation, architecture samples, drop-path,
Gumbel noise) is seeded from ``epoch_seed(seed, epoch)``, and the checkpoint is written atomically after
each epoch, so running the same command again continues after the last finished epoch and ends with the
same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import Tensor, nn
from torch.utils.data import Dataset, DistributedSampler, Sampler
from tqdm.auto import tqdm

from mixnas.atomic import atomic_write_text
from mixnas.errors import CheckpointError, ConfigError
from mixnas.run_dir import RunDir
from mixnas.supernet.checkpoint import check_state_fits, load_state, save_state, save_weights


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of everything random in epoch ``epoch`` (0-based) of a run seeded ``seed``."""
    return seed * 100_003 + epoch


# The optimisation defaults, written once: supernet training (TrainConfig), standalone training
# (StandaloneConfig), candidate fine-tuning and the CLI's flags all take them from here.
WEIGHT_DECAY = 0.05  # AdamW, as DeiT and Swin
WARMUP_EPOCHS = 1.0
CLIP_GRAD = 5.0
LABEL_SMOOTHING = 0.1


@dataclass(frozen=True)
class Schedule:
    """How ``fit`` optimises.

    Args:
        epochs: total epochs (a resumed run may raise it).
        batch_size: images per step (per process under torchrun).
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay (timm spares biases, 1-D tensors and ``no_weight_decay()``).
        warmup_epochs: linear warm-up before the cosine decay, rounded up to whole epochs.
        clip_grad: gradient-norm clip (0 disables).
        seed: seeds every random choice (``epoch_seed``).
        steps_per_epoch: cap on steps per epoch (0 = a full pass over the training set).
        workers: DataLoader worker processes.
        warmup_lr_ratio: the warm-up starts at lr times this.
        min_lr_ratio: the cosine ends at lr times this.
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = WEIGHT_DECAY
    warmup_epochs: float = WARMUP_EPOCHS
    clip_grad: float = CLIP_GRAD
    seed: int = 0
    steps_per_epoch: int = 0
    workers: int = 0
    warmup_lr_ratio: float = 0.01
    min_lr_ratio: float = 0.01


@dataclass(frozen=True)
class StepInfo:
    """Where a step is: its epoch, its index over the whole run, and the epoch's random generator."""

    epoch: int
    index: int
    rng: random.Random


@dataclass(frozen=True)
class StepResult:
    """What a step computed: the loss to back-propagate, the loss to report, correct predictions (or None)."""

    loss: Tensor
    reported: Tensor
    correct: int | None = None


@dataclass(frozen=True)
class DistributedContext:
    """Rank and world size; world size 1 without torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def limit_batches(loader: Iterable, limit: int) -> Iterator:
    """The loader's batches, at most ``limit`` of them (0: all)."""
    for i, batch in enumerate(loader):
        if limit and i >= limit:
            return
        yield batch


def write_metrics_csv(path: Any, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """Atomically (re)write a metrics CSV, one row per finished epoch."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in columns})
    atomic_write_text(path, buf.getvalue())


def steps_per_epoch(train_set: Dataset, schedule: Schedule, data: str, sampler: Sampler | None = None) -> int:
    """Steps in one epoch; ConfigError when not even one batch fits in the training set."""
    from mixnas.data import make_loader

    probe = make_loader(train_set, schedule.batch_size, shuffle=sampler is None, seed=schedule.seed,
                        drop_last=True, sampler=sampler)
    steps = len(probe) if not schedule.steps_per_epoch else min(len(probe), schedule.steps_per_epoch)
    if steps == 0:
        raise ConfigError(f"batch_size: {schedule.batch_size} is larger than the training set of {data}")
    return steps


@dataclass(frozen=True)
class FitHooks:
    """What a caller adds to ``fit``'s epochs; every field is optional.

    Args:
        prepare: called once, right before the first epoch this call trains: everything that can refuse
            (the batch size, the checkpoint) has been checked, so files written here are never half a run.
        end_of_epoch: metrics for the epoch's row (validation), called on the main process after training it.
        describe: the line printed after each epoch (with ``progress``).
        columns: the metrics CSV's columns (default: those of the epoch's row).
        weights_metadata: safetensors metadata of the weights saved after epoch n.
        stop_after_epoch: stop once this epoch is done (tests use it to simulate an interruption).
    """

    prepare: Callable[[], None] | None = None
    end_of_epoch: Callable[[int], dict[str, Any]] | None = None
    describe: Callable[[dict[str, Any]], str] | None = None
    columns: list[str] | None = None
    weights_metadata: Callable[[int], dict[str, str]] | None = None
    stop_after_epoch: int | None = None


def fit(
    model: nn.Module,
    step: Callable[[Tensor, Tensor, StepInfo], StepResult],
    train_set: Dataset,
    schedule: Schedule,
    device: torch.device,
    *,
    run: RunDir | None = None,
    hooks: FitHooks | None = None,
    data: str = "the dataset",
    progress: bool = True,
    desc: str = "train",
    distributed: DistributedContext | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` (or resume its training from ``run``); returns the per-epoch metrics.

    Args:
        model: the network whose parameters are optimised and saved (the supernet, or a standalone model).
        step: computes one batch's loss: ``step(x, y, info) -> StepResult`` (x, y on ``device``).
        train_set: the training images.
        schedule: optimiser, schedule, seed and loader settings.
        device: where training runs (bf16 autocast on CUDA).
        run: saves a checkpoint, the weights and the metrics CSV after each epoch, and resumes from its
            checkpoint; None trains in memory (candidate fine-tuning).
        hooks: the caller's part of each epoch (``FitHooks``); None adds nothing.
        data: the dataset's name, for errors.
        progress: a progress bar and the per-epoch lines.
        desc: the progress bar's label.
        distributed: rank and world size under torchrun; only rank 0 saves and prints, and each rank trains
            on its share of ``train_set`` (a ``DistributedSampler`` seeded by ``schedule.seed``).

    Raises:
        ConfigError: the batch is larger than the training set.
        CheckpointError: the run's checkpoint is corrupt or belongs to another network.
    """
    hooks = hooks or FitHooks()
    loop = _Loop(model, step, train_set, schedule, device, distributed or DistributedContext(), data)
    start_epoch, history = loop.resume(run)
    if start_epoch >= schedule.epochs:
        if loop.ctx.is_main and progress and run is not None:
            print(f"{run.path}: already trained for {start_epoch} epochs (asked for {schedule.epochs}); nothing to do")
        return history
    if hooks.prepare is not None:
        hooks.prepare()
    for epoch in range(start_epoch, schedule.epochs):
        row = loop.train_epoch(epoch, progress, desc)
        loop.end_epoch(epoch, row, history, run, hooks, progress)
        if hooks.stop_after_epoch is not None and epoch + 1 >= hooks.stop_after_epoch:
            break
    return history


class _Loop:
    """The state of one ``fit`` call: the model with its optimiser and learning-rate schedule, the steps of an
    epoch, and each rank's share of the data under torchrun. ``fit`` drives it epoch by epoch."""

    def __init__(self, model: nn.Module, step: Callable[[Tensor, Tensor, StepInfo], StepResult],
                 train_set: Dataset, schedule: Schedule, device: torch.device, ctx: DistributedContext,
                 data: str) -> None:
        self.model, self.step, self.train_set, self.schedule = model, step, train_set, schedule
        self.device, self.ctx = device, ctx
        self.sampler = (
            DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                               seed=schedule.seed, drop_last=True)
            if ctx.world_size > 1 else None
        )
        self.steps = steps_per_epoch(train_set, schedule, data, self.sampler)
        self.optimizer = create_optimizer_v2(model, opt="adamw", lr=schedule.lr, weight_decay=schedule.weight_decay)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched="cosine", num_epochs=schedule.epochs,
            warmup_epochs=math.ceil(schedule.warmup_epochs), warmup_lr=schedule.lr * schedule.warmup_lr_ratio,
            min_lr=schedule.lr * schedule.min_lr_ratio, step_on_epochs=False, updates_per_epoch=self.steps,
        )
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                         else contextlib.nullcontext())

    def resume(self, run: RunDir | None) -> tuple[int, list[dict[str, Any]]]:
        """The first epoch to train and the rows of those before it: from the run's checkpoint (its model and
        optimiser states loaded), or (0, []) when there is none."""
        if run is None or not run.checkpoint.exists():
            return 0, []
        state = load_state(run.checkpoint)
        try:
            check_state_fits(self.model, state["model"], run.checkpoint)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            return int(state["epoch"]), list(state["history"])
        except KeyError as e:
            raise CheckpointError(f"{run.checkpoint}: not a mixnas {run.kind} checkpoint (no {e.args[0]!r})") from None

    def train_epoch(self, epoch: int, progress: bool, desc: str) -> dict[str, Any]:
        """Train epoch ``epoch`` (0-based), everything random in it seeded by ``epoch_seed``; returns its row:
        epoch (1-based), train loss, train top-1 (%) when the step counts correct predictions, the last
        learning rate, images per second over all ranks, seconds."""
        from mixnas.data import make_loader

        schedule, steps, ctx = self.schedule, self.steps, self.ctx
        seed = epoch_seed(schedule.seed, epoch)
        torch.manual_seed(seed)
        rng = random.Random(seed)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        loader = make_loader(self.train_set, schedule.batch_size, shuffle=self.sampler is None, seed=seed,
                             num_workers=schedule.workers, drop_last=True, sampler=self.sampler)
        self.model.train()
        t0, seen, correct, counted, loss_sum = time.perf_counter(), 0, 0, 0, 0.0
        bar = tqdm(total=steps, desc=f"{desc} epoch {epoch + 1}/{schedule.epochs}", unit="step",
                   disable=not (progress and ctx.is_main), leave=False, dynamic_ncols=True)
        for i, (x, y) in enumerate(limit_batches(loader, steps)):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self.autocast:
                result = self.step(x, y, StepInfo(epoch, epoch * steps + i, rng))
            self.optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            if schedule.clip_grad > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), schedule.clip_grad)
            self.optimizer.step()
            self.scheduler.step_update(epoch * steps + i + 1)
            seen += x.shape[0] * ctx.world_size
            if result.correct is not None:
                correct, counted = correct + result.correct, counted + x.shape[0]
            loss_sum += float(result.reported)
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss_sum / (i + 1):.3f}", img_s=f"{rate:.0f}")
            bar.update()
        bar.close()
        seconds = time.perf_counter() - t0
        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": round(loss_sum / steps, 5)}
        if counted:
            row["train_acc"] = round(100.0 * correct / counted, 3)
        row.update(lr=self.optimizer.param_groups[0]["lr"], images_per_s=round(seen / seconds, 1),
                   epoch_seconds=round(seconds, 2))
        return row

    def end_epoch(self, epoch: int, row: dict[str, Any], history: list[dict[str, Any]], run: RunDir | None,
                  hooks: FitHooks, progress: bool) -> None:
        """The epoch's bookkeeping: on the main process the caller's metrics join ``row``, which joins
        ``history``, the run's files are saved and the epoch's line printed; then every rank waits for the
        others."""
        if self.ctx.is_main:
            if hooks.end_of_epoch is not None:
                row.update(hooks.end_of_epoch(epoch))
            history.append(row)
            if run is not None:
                self.save(run, epoch + 1, history, hooks)
            if progress and hooks.describe is not None:
                print(hooks.describe(row), flush=True)
        else:
            history.append(row)
        if self.ctx.world_size > 1:
            dist.barrier()

    def save(self, run: RunDir, epochs: int, history: list[dict[str, Any]], hooks: FitHooks) -> None:
        """The run's files after ``epochs`` epochs: the checkpoint, the weights, then the metrics CSV, each
        written atomically (the CSV last: once it lists an epoch, that epoch's checkpoint is whole)."""
        save_state(run.checkpoint, {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                                    "epoch": epochs, "history": history})
        meta = hooks.weights_metadata(epochs) if hooks.weights_metadata else {"epoch": str(epochs)}
        save_weights(self.model, run.weights, meta)
        write_metrics_csv(run.metrics, hooks.columns or list(history[-1]), history)


__all__ = [
    "DistributedContext", "FitHooks", "Schedule", "StepInfo", "StepResult", "epoch_seed", "fit", "limit_batches",
    "steps_per_epoch", "write_metrics_csv",
]
