"""Standalone training of one architecture: ``mixnas train ARCH.yaml --data DATA --epochs N --out DIR``.

The network is ``build_model(arch)``, trained from scratch or from weights that ``mixnas export --weights``
wrote (``init_weights``), with label-smoothed cross-entropy (plus DGE's budget loss when the architecture
uses DGE), through ``fit``: AdamW and warm-up + cosine decay from timm's factories, bf16 autocast on a GPU,
resumable epoch by epoch. The validation top-1 is measured after every epoch in eval mode; exported
weights carry BatchNorm statistics calibrated for their subnet, and training updates them, so no
recalibration is needed.

Raising ``epochs`` trains further; any other change of settings is refused. Output directory: see
``mixnas.run_dir.RunDir`` (``kind="training"``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.loss import LabelSmoothingCrossEntropy
from torch import Tensor, nn

from mixnas.device import resolve_device
from mixnas.errors import CheckpointError, ConfigError
from mixnas.lock import drive
from mixnas.run_dir import RunDir, changed_setting
from mixnas.search_space import ArchConfig
from mixnas.supernet import build_model
from mixnas.supernet.checkpoint import load_weights
from mixnas.supernet.mixers import budget_loss
from mixnas.training._loop import (
    CLIP_GRAD,
    LABEL_SMOOTHING,
    WARMUP_EPOCHS,
    WEIGHT_DECAY,
    FitHooks,
    Schedule,
    StepInfo,
    StepResult,
    fit,
)
from mixnas.training.batchnorm import evaluate_accuracy

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_acc", "lr", "images_per_s", "epoch_seconds"]


@dataclass(frozen=True)
class StandaloneConfig:
    """Standalone training settings (saved in the output directory; a resumed run must use the same).

    Args:
        data: dataset spec (``digits``, ``cifar:PATH``, ``imagefolder:PATH``).
        epochs: total epochs (may be raised on a later run to train further).
        batch_size: images per step.
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay (not applied to norms, biases, position tables).
        warmup_epochs: linear warm-up before the cosine decay (rounded up to whole epochs).
        label_smoothing: of the cross-entropy (0 for plain cross-entropy).
        clip_grad: gradient-norm clip (0 disables).
        seed: seeds the initial weights and every random choice of the run (data order, augmentation,
            drop-path, DGE's Gumbel noise).
        data_seed: fixes the dataset itself: for ``digits`` its renders and its train / val split (files on
            disk do not depend on it). Kept apart from ``seed`` so that trainings differing only in seed
            are measured on the same held-out images; ``mixnas rank-check`` passes the supernet's.
        steps_per_epoch: cap on steps per epoch (0 = a full pass over the training set).
        workers: DataLoader worker processes.
        init_weights: safetensors of ``build_model(arch)`` (``mixnas export --weights``) to start from,
            or None to start from random weights; read only before the first epoch.
    """

    data: str = "digits"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = WEIGHT_DECAY
    warmup_epochs: float = WARMUP_EPOCHS
    label_smoothing: float = LABEL_SMOOTHING
    clip_grad: float = CLIP_GRAD
    seed: int = 0
    data_seed: int = 0
    steps_per_epoch: int = 0
    workers: int = 0
    init_weights: str | None = None

    def differs_from(self, other: StandaloneConfig) -> str | None:
        """The first setting (other than epochs) that differs, or None."""
        return changed_setting(self, other, "the output directory")

    def schedule(self) -> Schedule:
        return Schedule(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
            warmup_epochs=self.warmup_epochs, clip_grad=self.clip_grad, seed=self.seed,
            steps_per_epoch=self.steps_per_epoch, workers=self.workers,
        )


def _first_difference(stored: Any, given: Any, path: str = "") -> str | None:
    """``stages[1].mixer.kernel_size: 3 in the output directory, 7 now`` for the first differing field."""
    if isinstance(stored, dict) and isinstance(given, dict):
        for key in list(stored) + [k for k in given if k not in stored]:
            diff = _first_difference(stored.get(key), given.get(key), f"{path}.{key}" if path else key)
            if diff is not None:
                return diff
        return None
    if isinstance(stored, list) and isinstance(given, list):
        if len(stored) == len(given):
            for i, (a, b) in enumerate(zip(stored, given)):
                diff = _first_difference(a, b, f"{path}[{i}]")
                if diff is not None:
                    return diff
            return None
        if any(isinstance(v, dict) for v in stored + given):  # stages: a count reads better than their dicts
            return f"{path}: {len(stored)} entries in the output directory, {len(given)} now"
    if stored != given:
        return f"{path or 'architecture'}: {stored!r} in the output directory, {given!r} now"
    return None


def read_config(out_dir: RunDir | str | Path) -> StandaloneConfig:
    """The settings an output directory was trained with."""
    return RunDir.of(out_dir, "training").read_settings(StandaloneConfig)


def check_out_dir(out_dir: RunDir | str | Path, arch: ArchConfig, config: StandaloneConfig) -> None:
    """Refuse an existing output directory trained on another architecture or with other settings.

    Raises:
        CheckpointError: naming the file and the first field that differs.
    """
    run = RunDir.of(out_dir, "training")
    if not run.arch_file.exists():
        if run.checkpoint.exists():
            raise CheckpointError(
                f"{run.checkpoint}: not a standalone training directory (no {RunDir.ARCH}); use another --out"
            )
        return
    try:
        stored = ArchConfig.from_yaml(run.arch_file)
    except ConfigError as e:
        raise CheckpointError(f"corrupt architecture in the output directory: {e}") from None
    diff = _first_difference(stored.to_dict(with_name=False), arch.to_dict(with_name=False))
    if diff is not None:
        raise CheckpointError(
            f"{run.arch_file}: this output directory trained a different architecture ({diff}); "
            f"use another --out or the same ARCH"
        )
    run.check_settings(config)


def train_architecture(
    arch: ArchConfig, out_dir: RunDir | str | Path, config: StandaloneConfig, device: str = "auto",
    progress: bool = True, stop_after_epoch: int | None = None,
) -> list[dict[str, Any]]:
    """Train (or resume training) ``build_model(arch)`` into ``out_dir``; returns the per-epoch metrics.

    Everything is checked (the output directory, the dataset's classes, the initial weights) before any
    file is written, so a refused command leaves no half-made directory.

    Args:
        arch: the architecture.
        out_dir: where the architecture, config, checkpoint, weights and metrics live (a ``RunDir`` of kind
            ``training``, or its path).
        config: the training settings.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: show a progress bar and a line per epoch.
        stop_after_epoch: stop once this epoch is done (tests use it to simulate an interruption).

    Raises:
        CheckpointError: the output directory holds another architecture or settings, a file in it is
            corrupt, or ``config.init_weights`` does not fit the architecture.
        ConfigError: the dataset's class count differs from ``arch.num_classes``, or the batch is larger
            than the training set.
    """
    from mixnas.data import load_dataset, make_loader

    run = RunDir.of(out_dir, "training")
    arch.validate()
    dev = resolve_device(device)
    check_out_dir(run, arch, config)
    bundle = load_dataset(config.data, arch.input_size, seed=config.data_seed)
    if bundle.num_classes != arch.num_classes:
        raise ConfigError(
            f"num_classes: the architecture has {arch.num_classes} classes but {config.data} has "
            f"{bundle.num_classes}; set num_classes: {bundle.num_classes} in the architecture"
        )
    torch.manual_seed(config.seed)
    model = build_model(arch)
    if not run.checkpoint.exists() and config.init_weights is not None:
        load_weights(model, config.init_weights)  # names the file and the first tensor that does not fit
    model.to(dev)
    loss_fn: nn.Module = (
        LabelSmoothingCrossEntropy(config.label_smoothing) if config.label_smoothing > 0 else nn.CrossEntropyLoss()
    )
    val_loader = make_loader(bundle.val, 256, shuffle=False)

    def step(x: Tensor, y: Tensor, info: StepInfo) -> StepResult:
        logits, costs = model.forward_with_costs(x)
        loss = loss_fn(logits, y)
        budget = budget_loss(costs)
        total = loss if budget is None else loss + budget
        return StepResult(total, loss.detach(), int((logits.detach().argmax(-1) == y).sum()))

    lock = contextlib.ExitStack()

    def prepare() -> None:
        run.path.mkdir(parents=True, exist_ok=True)
        lock.enter_context(drive(run, "train"))  # refuses while another process trains here
        if not run.arch_file.exists():  # with its data's preprocessing, so the trained model loads in timm
            arch.with_preprocessing(bundle.preprocessing).to_yaml(run.arch_file)
        run.write_settings(config)

    def describe(row: dict[str, Any]) -> str:
        return (f"epoch {row['epoch']}/{config.epochs}: loss {row['train_loss']:.3f}, train top-1 "
                f"{row['train_acc']:.2f}%, val top-1 {row['val_acc']:.2f}%, {row['images_per_s']:.0f} img/s "
                f"({row['epoch_seconds']:.0f}s)")

    hooks = FitHooks(
        prepare=prepare, end_of_epoch=lambda epoch: {"val_acc": round(evaluate_accuracy(model, val_loader, dev), 3)},
        describe=describe, columns=METRIC_COLUMNS, stop_after_epoch=stop_after_epoch,
        weights_metadata=lambda epoch: {"epoch": str(epoch), "arch_id": arch.arch_id},
    )
    with lock:
        return fit(model, step, bundle.train, config.schedule(), dev, run=run, hooks=hooks, data=config.data,
                   progress=progress, desc=arch.name or "train")


__all__ = ["METRIC_COLUMNS", "StandaloneConfig", "check_out_dir", "read_config", "train_architecture"]
