"""Checkpoints and weights on disk: atomic writes, safe reads, one-line errors.

* Training state (weights, optimizer, scheduler, progress) is ``torch.save``d to a temporary file and
  renamed into place, and read back with ``torch.load(..., weights_only=True)``: no pickle code runs.
* Weights handed to other tools (search, export) are safetensors.
A file that cannot be read, or that belongs to another network, raises ``CheckpointError`` naming the
file; it is never silently replaced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mixnas.atomic import atomic_write
from mixnas.errors import CheckpointError


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` a state made of tensors and plain Python values."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a state saved by ``save_state`` with ``weights_only=True``."""
    p = Path(path)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{p}: no such file") from None
    except Exception as e:  # torch raises many types for truncated or foreign files
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else e.__class__.__name__
        raise CheckpointError(
            f"{p}: corrupt or not a mixnas checkpoint ({reason}); move it away to start over"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{p}: not a mixnas checkpoint (found {type(state).__name__})")
    return state


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Atomically write ``model``'s state dict (parameters and buffers) as safetensors."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def load_weights(model: nn.Module, path: str | Path, subset: bool = False) -> nn.Module:
    """Load safetensors weights into ``model``; every key and shape must match.

    With ``subset`` the file may hold more tensors than ``model`` (a supernet over a wider space: a
    few-shot sub-supernet starts from its parent's weights); every tensor of ``model`` must still be there.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    try:
        state = load_file(p)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{p}: corrupt or not a safetensors file ({str(e)[:120]})") from None
    if subset:
        own = model.state_dict()
        state = {k: v for k, v in state.items() if k in own}
    check_state_fits(model, state, p)
    model.load_state_dict(state)
    return model


def check_state_fits(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Raise CheckpointError naming the first missing, unexpected or mis-shaped tensor."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointError(f"{source}: does not fit this network: {missing[0]!r} is missing")
    extra = [k for k in state if k not in own]
    if extra:
        raise CheckpointError(f"{source}: does not fit this network: unexpected {extra[0]!r}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{source}: does not fit this network: {k!r} is {tuple(state[k].shape)}, expected {tuple(v.shape)}"
            )
