"""BatchNorm recalibration of subnets and top-1 evaluation."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from mixnas.search_space import ArchConfig


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


def subnet_accuracy(supernet: nn.Module, arch: ArchConfig, calib: Iterable, val: Iterable,
                    device: torch.device, calib_batches: int) -> float:
    """Extract ``arch``, recalibrate its BatchNorm, and measure its validation top-1 (%)."""
    model = supernet.extract(arch).to(device)
    recalibrate_batchnorm(model, calib, calib_batches)
    return evaluate_accuracy(model, val, device)
