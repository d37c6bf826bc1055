"""Latency as deployed: the forward pass that a latency measurement times, for each backend.

- ``eager``: the model itself, in PyTorch eager mode (every measurement before backends were offered).
- ``compile``: ``torch.compile(model)``, in the default mode on the CPU and ``mode="reduce-overhead"`` on
  CUDA (the compiled graphs are replayed as CUDA graphs). One call on the example input compiles it before
  the warm-up, so compilation is never timed. A failure to compile is one line (``DeployError``).
  Dynamo's compiled code is dropped (``torch.compiler.reset``) when the measurement ends: a search compiles
  one network per candidate, and each is a recompilation of the same ``forward``, which dynamo would stop
  compiling (falling back to eager, silently) once its recompile limit is reached.
- ``onnxruntime``: the model exported to ONNX (``mixnas.supernet.deploy.export_onnx``, the network's export
  form) in a temporary directory, removed as soon as ONNX Runtime has loaded the file, then
  ``session.run`` on the CPU execution provider with torch's intra-op thread count. CPU only. DGE's export
  form computes every granularity of every region and selects (static shapes), so its ONNX Runtime latency
  is that form's: sum(g^2) queries per region whatever the router picks. Needs mixnas's ``deploy`` extra
  (onnx, onnxscript, onnxruntime); a missing package is one line naming it.

The backends give the same logits (a test checks 1e-4), so a search may rank by any of them; what changes is
which network is fastest (``docs/benchmarks/latency_backends.md``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from mixnas.errors import ConfigError, DeployError
from mixnas.supernet.deploy import export_onnx, onnx_run, onnx_session, require

BACKENDS = ("eager", "compile", "onnxruntime")

Forward = Callable[[Tensor], Tensor]


def check_backend(backend: str, device: str | torch.device = "cpu", amp_dtype: torch.dtype | None = None,
                  option: str = "--latency-backend", installed: bool = True) -> None:
    """Refuse a backend that cannot run here, before anything is built or measured.

    Args:
        backend: one of ``BACKENDS``.
        device: where latency is measured ("cpu", "cuda[:N]" or a torch.device).
        amp_dtype: the autocast dtype asked for (None: the model's own).
        option: the option named in the message.
        installed: also check that the packages the backend needs are installed.

    Raises:
        ConfigError: an unknown backend, onnxruntime on a GPU or under autocast.
        DeployError: onnxruntime without the ``deploy`` extra installed.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"{option}: unknown latency backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend != "onnxruntime":
        return
    kind = torch.device(device).type
    if kind != "cpu":
        raise ConfigError(f"{option}: onnxruntime latency is measured on the CPU only (its CPU execution provider); "
                          f"use --device cpu, or the eager or compile backend on {kind}")
    if amp_dtype is not None:
        raise ConfigError(f"{option}: onnxruntime runs the exported float32 network; autocast to "
                          f"{str(amp_dtype).removeprefix('torch.')} applies to eager and compile only")
    if installed:
        require("onnx", "onnxscript", "onnxruntime")


@contextmanager
def deployed_forward(model: nn.Module, backend: str, example: Tensor) -> Iterator[Forward]:
    """The forward pass of ``model`` as ``backend`` runs it, ready to be timed (module docstring).

    Call it in eval mode, under ``torch.no_grad`` (and the autocast, if any) that the timing uses: compile
    specialises on them. ``eager`` returns the model itself and calls nothing; ``compile`` and
    ``onnxruntime`` run ``example`` once to compile or load it.

    Args:
        model: the network, on ``example``'s device.
        backend: one of ``BACKENDS`` (``check_backend`` first).
        example: an input of the shape that will be timed, e.g. (B, C, H, W).

    Yields:
        ``run(x) -> logits``.
    """
    if backend == "eager":
        yield model
    elif backend == "compile":
        with _compiled(model, example) as run:
            yield run
    elif backend == "onnxruntime":
        yield _onnxruntime(model, example)
    else:
        raise ConfigError(f"--latency-backend: unknown latency backend {backend!r}; choose from {', '.join(BACKENDS)}")


@contextmanager
def _compiled(model: nn.Module, example: Tensor) -> Iterator[Forward]:
    cuda = example.is_cuda
    compiled = torch.compile(model, mode="reduce-overhead" if cuda else None)

    def run(x: Tensor) -> Tensor:
        if cuda:  # a new replay of the CUDA graphs: the previous call's outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        return compiled(x)

    try:
        try:
            with _quiet("torch._dynamo", "torch._inductor", "torch.utils.cpp_extension"):
                run(example)
        except Exception as e:  # dynamo and inductor errors carry pages of graph; one line names the cause
            raise DeployError(f"--latency-backend compile: torch.compile failed ({_first_line(e)})") from e
        yield run
    finally:
        torch.compiler.reset()


@contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Only errors from these loggers, and no Python warnings: a graph break (DGE's routed gather has
    data-dependent shapes) is logged with pages of advice on how to avoid it, and the break is what the
    deployed network does; the timed network's outputs equal eager's (a test checks every backend)."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def _onnxruntime(model: nn.Module, example: Tensor) -> Forward:
    # The batch dimension is exported dynamic, and torch.export specialises a dynamic dimension seen at
    # size 1: export at batch 2, run at the batch asked for.
    x = example if example.shape[0] > 1 else torch.cat([example, example])
    with tempfile.TemporaryDirectory(prefix="mixnas-latency-") as tmp:
        path = export_onnx(model, os.path.join(tmp, "model.onnx"), x.cpu())
        session = onnx_session(path)  # reads the whole file: the directory can go

    def run(x: Tensor) -> Tensor:
        return onnx_run(session, x)

    run(example)
    return run


def _first_line(error: BaseException) -> str:
    """``Type: first line`` of the innermost cause of ``error``, at most 200 characters."""
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    first = (str(cause).strip().splitlines() or [""])[0][:200]
    return f"{type(cause).__name__}: {first}" if first else type(cause).__name__


__all__ = ["BACKENDS", "Forward", "check_backend", "deployed_forward"]
