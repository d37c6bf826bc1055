"""The one place that turns a device name into a ``torch.device``."""

from __future__ import annotations

import torch

from mixnas.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device = "auto", option: str = "--device") -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N`` as a torch.device.

    Args:
        device: the name, or a torch.device (checked the same way).
        option: how the caller names the setting in the one-line error.

    Raises:
        ConfigError: an unknown name, CUDA asked for where there is none, or a GPU index out of range.
    """
    if isinstance(device, str) and device.strip() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{option} {device!r}: device must be 'cpu' or 'cuda[:N]' (or 'auto')") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"{option} {device!r}: device must be 'cpu' or 'cuda[:N]' (or 'auto')")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{option} {device}: CUDA is not available on this machine; use {option} cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{option} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
