"""Deployment formats: a standalone network as ONNX or as a saved ``torch.export`` program.

Every mixer exports, in its export form (``mixnas.supernet.mixers.ExportForm``): the same outputs as eager
evaluation (ONNX Runtime within 1e-4, a test over every shipped reference and random architectures of
every shipped space), with operations the exporters take. One difference in cost: DGE's export form
computes every granularity of every region and selects by the router's choice (static shapes), so an
exported DGE block costs sum(g^2) queries per region (21 for {1, 2, 4}) whatever the router picks, where
mixnas's FLOPs count the routed queries. The batch dimension is dynamic; the image size is the
architecture's.

ONNX export needs the optional ``deploy`` extra (``pip install 'mixnas[deploy]'``: onnx, onnxscript,
onnxruntime); a missing package gets one line naming the extra. ``torch-export`` needs torch alone.
"""

from __future__ import annotations

import importlib
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.fx.config as fx_config
from torch import Tensor, nn

from mixnas.atomic import atomic_write, atomic_write_bytes
from mixnas.errors import DeployError
from mixnas.supernet.mixers import export_form_of

FORMATS = ("onnx", "torch-export")
SUFFIXES = {"onnx": ".onnx", "torch-export": ".pt2"}
OPSET = 18
MAX_BATCH = 4096


@contextmanager
def _without_stack_traces() -> Iterator[None]:
    """Trace without recording each operation's Python stack trace (``torch.fx.config``): the exporters would
    otherwise write the exporting machine's file paths into every node's metadata
    (``pkg.torch.onnx.stack_trace``, a fifth of the file), and recording them is about a tenth of an export's time
    (``docs/benchmarks/export_stack_traces.md``)."""
    saved = fx_config.do_not_emit_stack_traces
    fx_config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        fx_config.do_not_emit_stack_traces = saved


def require(*modules: str) -> None:
    """Raise DeployError, naming the ``deploy`` extra, unless every module imports."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise DeployError(f"{name} is not installed: ONNX export and the onnxruntime latency backend need "
                              f"mixnas's deploy extra (pip install 'mixnas[deploy]')") from None


def example_input(model: nn.Module, batch: int = 2) -> Tensor:
    """A (batch, C, H, W) input at the size the model's ``pretrained_cfg`` states."""
    c, h, w = model.pretrained_cfg["input_size"]
    param = next(model.parameters())
    return torch.randn(batch, c, h, w, dtype=param.dtype, device=param.device)


def export_program(model: nn.Module, example: Tensor | None = None) -> torch.export.ExportedProgram:
    """``torch.export`` of the model in its export form (eval mode), batch dimension dynamic."""
    model = model.eval()
    x = example if example is not None else example_input(model)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with export_form_of(model), torch.no_grad(), _without_stack_traces():
        return torch.export.export(model, (x,), dynamic_shapes=({0: batch},), strict=False)


def export_onnx(model: nn.Module, path: str | Path, example: Tensor | None = None, opset: int = OPSET,
                optimize: bool = True) -> Path:
    """Write the model as ONNX (input ``images`` (B, C, H, W), output ``logits``; B dynamic), atomically.
    ``optimize``: run the exporter's graph optimizer (constant folding, redundant shape operations
    removed; about half the export time); ONNX Runtime optimizes the graph again when it loads it."""
    require("onnx", "onnxscript")
    model = model.eval()
    x = example if example is not None else example_input(model)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    path = Path(path)

    def write(tmp: str) -> None:
        with export_form_of(model), torch.no_grad(), _without_stack_traces(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=({0: batch},),
                                        input_names=["images"], output_names=["logits"], opset_version=opset,
                                        optimize=optimize, verbose=False)
        if program is None:
            raise DeployError(f"{path}: torch.onnx.export returned no program")
        program.save(tmp)

    try:
        atomic_write(path, write)
    except DeployError:
        raise
    except Exception as e:  # the exporter's own failures carry pages of graph; one line names the cause
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]
        raise DeployError(f"{path}: ONNX export failed ({type(cause).__name__}: {first})") from e
    return path


def save_program(model: nn.Module, path: str | Path, example: Tensor | None = None) -> Path:
    """Write the model's ``torch.export`` program (``torch.export.save``; load with ``torch.export.load``)."""
    program = export_program(model, example)
    buffer = io.BytesIO()  # torch.export.save wants a .pt2 name or a buffer, not the temporary's name
    torch.export.save(program, buffer)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_format(model: nn.Module, path_stem: str | Path, fmt: str) -> Path:
    """Write ``model`` beside its other files as ``<path_stem><suffix of fmt>``; returns the path."""
    if fmt not in FORMATS:
        raise DeployError(f"--format: unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    path = Path(str(path_stem) + SUFFIXES[fmt])
    return export_onnx(model, path) if fmt == "onnx" else save_program(model, path)


def onnx_session(path: str | Path, threads: int | None = None):  # -> onnxruntime.InferenceSession
    """An ONNX Runtime CPU session of an exported file (``threads`` intra-op threads; None: torch's count)."""
    require("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_run(session, x: Tensor) -> Tensor:  # session: onnxruntime.InferenceSession
    """Run a session made by ``onnx_session`` on a CPU batch; returns the logits as a tensor."""
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])


__all__ = ["FORMATS", "OPSET", "SUFFIXES", "DeployError", "example_input", "export_onnx", "export_program",
           "onnx_run", "onnx_session", "require", "save_program", "write_format"]
