"""Standalone training of one architecture: ``mixnas train ARCH.yaml --data DATA --epochs N --out DIR``.

The network is ``build_model(arch)``, trained from scratch or from weights that ``mixnas export --weights``
wrote (``--init-weights``), with label-smoothed cross-entropy (plus DGE's budget loss when the architecture
uses DGE), AdamW and warm-up + cosine decay from timm's factories, bf16 autocast on a GPU. The validation
top-1 is measured after every epoch in eval mode; exported weights carry BatchNorm statistics calibrated for
their subnet, and training updates them, so no recalibration is needed.

Resuming works as in supernet training: everything random in an epoch (data order, augmentation, drop-path,
Gumbel noise) is seeded from (seed, epoch) and a checkpoint is written atomically after each epoch, so
running the same command again continues after the last finished epoch and ends with the same weights as an
uninterrupted run. Raising ``--epochs`` trains further; any other change of settings is refused.

Output directory: ``arch.yaml`` (the architecture, every field written out), ``train_config.json``,
``checkpoint.pt`` (weights, optimizer, epoch, history), ``model.safetensors`` (weights after the last
finished epoch, loadable with ``load_weights(build_model(arch), path)``), ``metrics.csv``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from tqdm.auto import tqdm

from mixnas.atomic import atomic_write_text
from mixnas.search_space import ArchConfig, ConfigError
from mixnas.supernet.backbone import build_model
from mixnas.supernet.checkpoint import (
    CheckpointError,
    check_state_fits,
    load_state,
    load_weights,
    save_state,
    save_weights,
)
from mixnas.supernet.training import (
    changed_setting,
    evaluate_accuracy,
    limit_batches,
    resolve_device,
    write_metrics_csv,
)

ARCH_FILE = "arch.yaml"
CONFIG_FILE = "train_config.json"
CHECKPOINT_FILE = "checkpoint.pt"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.csv"
METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_acc", "lr", "images_per_s", "epoch_seconds"]


@dataclass(frozen=True)
class StandaloneConfig:
    """Standalone training settings (saved in the output directory; a resumed run must use the same).

    Args:
        data: dataset spec (``digits``, ``cifar:PATH``, ``imagefolder:PATH``).
        epochs: total epochs (may be raised on a later run to train further).
        batch_size: images per step.
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay (not applied to norms and biases).
        warmup_epochs: linear warm-up before the cosine decay (rounded up to whole epochs).
        label_smoothing: of the cross-entropy (0 for plain cross-entropy).
        clip_grad: gradient-norm clip (0 disables).
        seed: seeds the initial weights and every random choice of the run.
        steps_per_epoch: cap on steps per epoch (0 = a full pass over the training set).
        workers: DataLoader worker processes.
        init_weights: safetensors of ``build_model(arch)`` (``mixnas export --weights``) to start from,
            or None to start from random weights; read only before the first epoch.
    """

    data: str = "digits"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    clip_grad: float = 5.0
    seed: int = 0
    steps_per_epoch: int = 0
    workers: int = 0
    init_weights: str | None = None

    def differs_from(self, other: StandaloneConfig) -> str | None:
        """The first setting (other than epochs) that differs, or None."""
        return changed_setting(self, other, "the output directory")


# ---------------------------------------------------------------------------------------- run files
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


def read_config(out_dir: Path) -> StandaloneConfig:
    """The settings an output directory was trained with."""
    path = out_dir / CONFIG_FILE
    try:
        return StandaloneConfig(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; the output directory is incomplete") from None
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{path}: corrupt ({e.__class__.__name__}: {str(e)[:100]})") from None


def check_out_dir(out_dir: Path, arch: ArchConfig, config: StandaloneConfig) -> None:
    """Refuse an existing output directory trained on another architecture or with other settings.

    Args:
        out_dir: the output directory (need not exist).
        arch: the architecture to train.
        config: the settings; only ``epochs`` may differ from the stored ones.

    Raises:
        CheckpointError: naming the file and the first field that differs.
    """
    arch_path = out_dir / ARCH_FILE
    if not arch_path.exists():
        if (out_dir / CHECKPOINT_FILE).exists():
            raise CheckpointError(
                f"{out_dir / CHECKPOINT_FILE}: not a standalone training directory (no {ARCH_FILE}); "
                f"use another --out"
            )
        return
    try:
        stored = ArchConfig.from_yaml(arch_path)
    except ConfigError as e:
        raise CheckpointError(f"corrupt architecture in the output directory: {e}") from None
    diff = _first_difference(stored.to_dict(with_name=False), arch.to_dict(with_name=False))
    if diff is not None:
        raise CheckpointError(
            f"{arch_path}: this output directory trained a different architecture ({diff}); "
            f"use another --out or the same ARCH"
        )
    diff = config.differs_from(read_config(out_dir))
    if diff is not None:
        raise CheckpointError(f"{out_dir / CONFIG_FILE}: this run used other settings ({diff})")


def write_metrics(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Atomically (re)write ``metrics.csv``, one row per finished epoch."""
    write_metrics_csv(out_dir / METRICS_FILE, METRIC_COLUMNS, rows)


# -------------------------------------------------------------------------------------- the trainer
def train_architecture(
    arch: ArchConfig, out_dir: str | Path, config: StandaloneConfig, device: str = "auto", progress: bool = True,
    stop_after_epoch: int | None = None,
) -> list[dict[str, Any]]:
    """Train (or resume training) ``build_model(arch)`` into ``out_dir``; returns the per-epoch metrics.

    Everything is checked (the output directory, the dataset's classes, the initial weights) before any
    file is written, so a refused command leaves no half-made directory.

    Args:
        arch: the architecture.
        out_dir: where the architecture, config, checkpoint, weights and metrics live.
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

    out_dir = Path(out_dir)
    arch.validate()
    dev = resolve_device(device)
    check_out_dir(out_dir, arch, config)

    bundle = load_dataset(config.data, arch.input_size, seed=config.seed)
    if bundle.num_classes != arch.num_classes:
        raise ConfigError(
            f"num_classes: the architecture has {arch.num_classes} classes but {config.data} has "
            f"{bundle.num_classes}; set num_classes: {bundle.num_classes} in the architecture"
        )
    probe = make_loader(bundle.train, config.batch_size, shuffle=True, seed=config.seed, drop_last=True)
    steps = len(probe) if not config.steps_per_epoch else min(len(probe), config.steps_per_epoch)
    if steps == 0:
        raise ConfigError(f"batch_size: {config.batch_size} is larger than the training set of {config.data}")

    torch.manual_seed(config.seed)
    model = build_model(arch)
    ckpt_path = out_dir / CHECKPOINT_FILE
    state = load_state(ckpt_path) if ckpt_path.exists() else None
    if state is None and config.init_weights is not None:
        load_weights(model, config.init_weights)  # names the file and the first tensor that does not fit
    model.to(dev)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=config.lr, weight_decay=config.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=config.epochs, warmup_epochs=math.ceil(config.warmup_epochs),
        warmup_lr=config.lr * 0.01, min_lr=config.lr * 0.01, step_on_epochs=False, updates_per_epoch=steps,
    )

    start_epoch, history = 0, []
    if state is not None:
        try:
            check_state_fits(model, state["model"], ckpt_path)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, history = int(state["epoch"]), list(state["history"])
        except KeyError as e:
            raise CheckpointError(f"{ckpt_path}: not a mixnas training checkpoint (no {e.args[0]!r})") from None

    if start_epoch >= config.epochs:
        if progress:
            print(f"{out_dir}: already trained for {start_epoch} epochs (asked for {config.epochs}); nothing to do")
        return history
    if not (out_dir / ARCH_FILE).exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        arch.to_yaml(out_dir / ARCH_FILE)
    atomic_write_text(out_dir / CONFIG_FILE, json.dumps(asdict(config), indent=2) + "\n")

    loss_fn: nn.Module = (
        LabelSmoothingCrossEntropy(config.label_smoothing) if config.label_smoothing > 0 else nn.CrossEntropyLoss()
    )
    val_loader = make_loader(bundle.val, 256, shuffle=False)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
    label = arch.name or "train"
    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(config.seed * 100_003 + epoch)
        loader = make_loader(
            bundle.train, config.batch_size, shuffle=True, seed=config.seed * 100_003 + epoch,
            num_workers=config.workers, drop_last=True,
        )
        model.train()
        t0, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
        bar = tqdm(total=steps, desc=f"{label} epoch {epoch + 1}/{config.epochs}", unit="step",
                   disable=not progress, leave=False, dynamic_ncols=True)
        for step, (x, y) in enumerate(limit_batches(loader, steps)):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with autocast:
                logits = model(x)
                loss = loss_fn(logits, y)
                budget = model.dge_budget_loss()
                total = loss if budget is None else loss + budget
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if config.clip_grad > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            optimizer.step()
            scheduler.step_update(epoch * steps + step + 1)
            seen += x.shape[0]
            correct += int((logits.detach().argmax(-1) == y).sum())
            loss_sum += float(loss.detach())
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss_sum / (step + 1):.3f}", img_s=f"{rate:.0f}")
            bar.update()
        bar.close()
        seconds = time.perf_counter() - t0
        val_acc = evaluate_accuracy(model, val_loader, dev)
        row: dict[str, Any] = {
            "epoch": epoch + 1, "train_loss": round(loss_sum / steps, 5), "train_acc": round(100.0 * correct / seen, 3),
            "val_acc": round(val_acc, 3), "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": round(seen / seconds, 1), "epoch_seconds": round(seconds, 2),
        }
        history.append(row)
        save_state(ckpt_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "epoch": epoch + 1, "history": history})
        save_weights(model, out_dir / WEIGHTS_FILE, {"epoch": str(epoch + 1), "arch_id": arch.arch_id})
        write_metrics(out_dir, history)
        if progress:
            print(
                f"epoch {epoch + 1}/{config.epochs}: loss {row['train_loss']:.3f}, train top-1 "
                f"{row['train_acc']:.2f}%, val top-1 {row['val_acc']:.2f}%, {row['images_per_s']:.0f} img/s "
                f"({seconds:.0f}s)",
                flush=True,
            )
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    return history


# ------------------------------------------------------------------------------------------- the CLI
def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand to the ``mixnas`` command's subparsers.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers`` returned.
    """
    # Imported here: mixnas.cli imports this module to build its parser.
    from mixnas.cli import positive_float, positive_int

    d = StandaloneConfig()
    p = subparsers.add_parser("train", help="train one architecture from scratch or from exported weights "
                                            "(resumable)")
    p.add_argument("arch", metavar="ARCH", help="ArchConfig YAML or JSON file")
    p.add_argument("--data", default=d.data, help="digits (embedded), cifar:PATH or imagefolder:PATH")
    p.add_argument("--epochs", type=positive_int, default=d.epochs, metavar="N",
                   help="total epochs (raise it to train further)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="output directory (created; resumed when it exists)")
    p.add_argument("--init-weights", default=None, metavar="FILE",
                   help="start from these weights (a .safetensors of mixnas export --weights for this ARCH)")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="images per step")
    p.add_argument("--lr", type=positive_float, default=d.lr, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="linear warm-up epochs")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing,
                   help="label smoothing of the cross-entropy")
    p.add_argument("--clip-grad", type=float, default=d.clip_grad, help="gradient-norm clip (0 disables)")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds initial weights, data order and augmentation")
    p.add_argument("--steps-per-epoch", type=int, default=d.steps_per_epoch,
                   help="cap on steps per epoch (0: whole training set)")
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda when available")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.set_defaults(func=cmd_train)


def config_from_args(args: argparse.Namespace) -> StandaloneConfig:
    """The StandaloneConfig that ``mixnas train``'s arguments describe."""
    return StandaloneConfig(
        data=args.data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, clip_grad=args.clip_grad,
        seed=args.seed, steps_per_epoch=args.steps_per_epoch, workers=args.workers,
        init_weights=args.init_weights,
    )


def cmd_train(args: argparse.Namespace) -> int:
    """``mixnas train``: train the architecture into ``--out``; prints where the weights are."""
    arch = ArchConfig.load(args.arch)
    history = train_architecture(arch, args.out, config_from_args(args), device=args.device,
                                 progress=not args.quiet)
    if history and not args.quiet:
        last = history[-1]
        print(f"{args.out}: {last['epoch']} epochs, val top-1 {float(last['val_acc']):.2f}%; "
              f"weights in {Path(args.out) / WEIGHTS_FILE}")
    return 0
