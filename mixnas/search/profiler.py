"""Cost of a candidate network: parameters, FLOPs and measured latency.

Generic over any ``torch.nn.Module`` classifier that takes one image tensor (B, C, H, W).

FLOPs are multiply-adds (one fused multiply-add = 1 FLOP), counted by fvcore's ``FlopCountAnalysis``
on a JIT trace of one forward pass, as Swin, DeiT and DWNet report them (DESIGN.md section 3).
On top of fvcore's default handles this module registers:

- ``aten::scaled_dot_product_attention``: fvcore skips it, which would drop every attention matmul of a
  model that uses ``F.scaled_dot_product_attention`` (timm's ViT does). Counted as the two matmuls
  q @ k^T and attn @ v, so the fused and the explicit ``softmax(q @ k^T) @ v`` paths give the same
  count; the softmax, scale, mask and dropout are free, as they are on the explicit path.
- ``aten::baddbmm``: a batched matmul plus a free add.
- ``aten::addcmul``: one multiply-add per output element (the inhomogeneous dynamic conv accumulates its
  per-position kernels with it, offset by offset).
- ``aten::matmul``: replaces fvcore's handle, which takes the batch dimensions from the first operand
  only (it undercounts when the second operand broadcasts over more batch dimensions) and asserts on
  1-D operands; counted from the output shape instead.
- zero-FLOP handles for the element-wise, reduction and data-movement ops of our mixers (activations,
  softmax, add/mul, roll, pad, pooling, index/gather/scatter, ...), so that the list of unsupported
  ops (``unsupported_ops``) names only ops that may really cost something.
- each registered mixer's own ``MixerSpec.flop_handles`` (a plug-in's FFT, say): the spec owns the facts
  of its ops. An op that no handle counts makes ``count_flops`` (and ``flops_by_module``,
  ``flops_summary``) refuse with one line naming it, never count it as 0; ``unsupported_ops`` lists them.

Decisions:

- Norm layers keep fvcore's counting: LayerNorm/GroupNorm 5 FLOPs per element with an affine transform
  (4 without), BatchNorm in eval 2 per element (1 without affine). The published DeiT and Swin
  numbers were counted this way (LayerNorm is about 0.4% of DeiT-Ti's and Swin-T's FLOPs).
- ``aten::adaptive_avg_pool2d`` keeps fvcore's count of 1 FLOP per input element; every other pooling
  or mean (``avg_pool2d``, ``adaptive_avg_pool1d``, ``mean``) is free. Either way a global pool costs
  C*H*W, under 0.01% of any backbone here. (fvcore cannot be told to ignore an op it already has a
  handle for: ``set_op_handle(name, None)`` leaves the old handle in place.)
- ``aten::linear`` on 3-D/4-D inputs is fvcore's handle: prod(input shape) * out_features.
- Convolutions: the tracer records ``F.conv2d`` as ``aten::_convolution`` (never ``aten::conv2d``), and
  fvcore's handle counts N * Hout * Wout * Cout * (Cin / groups) * kh * kw, right for grouped and
  depth-wise convs and for computed weights (a dynamic depth-wise conv applied as
  ``F.conv2d(x.reshape(1, B*C, H, W), w, groups=B*C)``). Should a future tracer record another op,
  the count refuses it, naming it (the tests check every registered mixer).

Latency is measured on a named device (``device_name``): CUDA events on a GPU, ``time.perf_counter_ns``
on the CPU, after warm-up; median and p90 in milliseconds, batch size stated. The network runs as a
latency backend deploys it (``mixnas.search.latency_backends``: eager PyTorch, ``torch.compile`` or ONNX
Runtime); ``latency_runner`` prepares it once, so that interleaved rounds time the same compiled network.
"""

from __future__ import annotations

import logging
import math
import platform
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.jit import TracerWarning

from mixnas.device import resolve_device
from mixnas.errors import ConfigError
from mixnas.search.latency_backends import check_backend, deployed_forward
from mixnas.search_space.registry import get_mixer, mixer_names

# fvcore's import pulls in iopath/portalocker (DeprecationWarning) and runs torch.jit.script on its
# loss functions (FutureWarning on recent torch); neither concerns us, and filtering here keeps the
# filter from hiding anything else in the process.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

__all__ = [
    "LatencyRunner",
    "LatencyStats",
    "count_flops",
    "count_params",
    "device_name",
    "flops_by_module",
    "flops_summary",
    "latency_runner",
    "measure_latency",
    "unsupported_ops",
]

logger = logging.getLogger(__name__)

# The fewest timed runs kept when `max_seconds` stops a measurement early: fewer make p90 meaningless.
_MIN_TIMED_RUNS = 5


# ----------------------------------------------------------------------------------------------------
# FLOP handles. A handle gets the traced op's inputs and outputs as torch._C.Value lists and returns
# its multiply-adds; `get_shape` reads a value's static shape from the trace.


def _sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """Multiply-adds of ``aten::scaled_dot_product_attention``.

    q (..., Lq, E), k (..., Lk, E), v (..., Lk, Ev) -> out (..., Lq, Ev):
    q @ k^T costs prod(...) * Lq * Lk * E and attn @ v costs prod(...) * Lq * Lk * Ev. The leading
    dimensions are read from the output, so broadcasting and grouped-query attention (k, v with fewer
    heads than q) are counted at the size actually computed.
    """
    q_shape, k_shape = get_shape(inputs[0]), get_shape(inputs[1])
    out_shape = get_shape(outputs[0])
    lead = math.prod(out_shape[:-2])
    lq, ev = out_shape[-2], out_shape[-1]
    lk, e = k_shape[-2], q_shape[-1]
    return lead * lq * lk * e + lead * lq * lk * ev


def _matmul_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """Multiply-adds of ``aten::matmul``: prod(output shape) * contracted size, for any broadcast."""
    a_shape = get_shape(inputs[0])
    out_shape = get_shape(outputs[0])
    return math.prod(out_shape) * a_shape[-1]


def _addcmul_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """Multiply-adds of ``aten::addcmul(self, t1, t2)`` (self + t1 * t2): one per output element."""
    return math.prod(get_shape(outputs[0]))


def _baddbmm_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """Multiply-adds of ``aten::baddbmm(self, b1 (B, N, M), b2 (B, M, P))``: B*N*M*P; the add is free."""
    b, n, m = get_shape(inputs[1])
    p = get_shape(inputs[2])[-1]
    return b * n * m * p


_EXTRA_FLOP_HANDLES = {
    "aten::scaled_dot_product_attention": _sdpa_flop_jit,
    "aten::matmul": _matmul_flop_jit,
    "aten::baddbmm": _baddbmm_flop_jit,
    "aten::addcmul": _addcmul_flop_jit,
}

# Ops counted as zero FLOPs. fvcore already ignores pure shape/copy ops (view, permute, cat, roll,
# gather, ...); these are the element-wise maths, reductions and data movement it would report as
# unsupported. Names are given without the "aten::" prefix.
_FREE_OPS = (
    # activations and softmax
    "softmax", "log_softmax", "gelu", "relu6", "hardtanh", "hardtanh_", "hardswish", "hardswish_",
    "hardsigmoid", "hardsigmoid_", "sigmoid", "sigmoid_", "silu", "silu_", "tanh", "tanh_", "erf",
    "leaky_relu", "leaky_relu_", "elu", "softplus", "mish", "clamp_min", "clamp_max",
    # element-wise arithmetic
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "neg", "exp", "exp_", "log", "sqrt",
    "rsqrt", "pow", "reciprocal", "abs", "sign", "round", "ceil", "lt", "le", "gt", "ge", "eq", "ne", "logical_and",
    "logical_or", "logical_not", "bitwise_and", "where", "masked_fill_",
    # reductions
    "sum", "mean", "amax", "amin", "min", "argmax", "argmin", "cumsum", "var", "std", "norm",
    "linalg_vector_norm", "all", "any", "topk", "sort", "argsort",
    # pooling other than adaptive_avg_pool2d (see the module docstring)
    "avg_pool1d", "avg_pool2d", "max_pool1d", "max_pool2d", "adaptive_avg_pool1d", "adaptive_max_pool2d",
    # padding, copies and layout
    "pad", "reflection_pad2d", "replication_pad2d", "clone", "repeat", "repeat_interleave", "tile",
    "expand_as", "view_as", "reshape_as", "unflatten", "movedim", "unfold", "im2col", "col2im",
    "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle", "alias", "as_strided",
    "lift_fresh", "fill_", "zero_", "unsafe_split", "unsafe_chunk",
    # indexing
    "index_select", "index_put", "index_add", "index_add_", "index_copy", "scatter", "scatter_",
    "scatter_add", "scatter_add_", "scatter_reduce", "take_along_dim", "masked_select", "masked_scatter",
    "one_hot",
    # sampling and constants (Gumbel noise, dropout masks, meshes)
    "rand", "rand_like", "randn", "randn_like", "bernoulli", "bernoulli_", "exponential_", "uniform_",
    "empty_like", "ones_like", "linspace", "meshgrid", "eye", "numel", "feature_dropout", "alpha_dropout",
    "dropout_", "detach_",
)


def flop_handles() -> dict[str, Any]:
    """Every FLOP handle beyond fvcore's: this module's, the free ops (None), and each registered mixer's
    ``MixerSpec.flop_handles`` (a plug-in's included), which may override them."""
    handles: dict[str, Any] = dict(_EXTRA_FLOP_HANDLES)
    handles.update({f"aten::{name}": None for name in _FREE_OPS})
    for name in mixer_names():
        handles.update(get_mixer(name).flop_handles)
    return handles


def _flop_analysis(model: nn.Module, inputs: torch.Tensor, strict: bool = True) -> FlopCountAnalysis:
    """Traces `model` on `inputs` once (eval mode, no grad, quietly) and returns the analysis.

    fvcore analyses lazily, so the trace is forced here, inside the eval/no-grad/quiet context; later
    queries (total, by_module, unsupported_ops) reuse the cached result.

    Raises:
        ConfigError: ``strict`` and the trace holds ops that no handle counts (``flop_handles``): they
            would count as 0 FLOPs and rank the network as cheaper than it is.
    """
    analysis = FlopCountAnalysis(model, (inputs,))
    analysis.set_op_handle(**flop_handles())
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with _eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        # Data-dependent branches (an input-dependent model) make the tracer warn that the trace
        # might not generalise; we only use this one trace, for this one input.
        warnings.simplefilter("ignore", TracerWarning)
        try:
            analysis.total()
        finally:
            # fvcore removes its scope hooks only when the trace succeeds; a failed trace would
            # leave them on the caller's model.
            _remove_fvcore_scope_hooks(model)
    unsupported = analysis.unsupported_ops()
    if unsupported and strict:
        ops = ", ".join(f"{op} ({n} call{'s' if n > 1 else ''})" for op, n in sorted(unsupported.items()))
        raise ConfigError(
            f"{ops}: no FLOP handle, so the network's FLOPs would be undercounted; the mixer that uses it "
            f"declares one in its spec's flop_handles (op -> a handle returning multiply-adds, or None if it "
            f"costs nothing)"
        )
    return analysis


def _remove_fvcore_scope_hooks(model: nn.Module) -> None:
    for module in model.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key in [k for k, h in hooks.items() if type(h).__name__ in ("ScopePushHook", "ScopePopHook")]:
                del hooks[key]


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Puts `model` in eval mode and afterwards restores each submodule's own mode.

    Restoring per submodule (not `model.train(was_training)`) keeps deliberate mixes intact, such as
    frozen BatchNorm layers inside a model that is training.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


# ----------------------------------------------------------------------------------------------------
# Public counting API


def count_params(model: nn.Module) -> int:
    """Number of parameters, trainable and frozen; buffers are not counted, shared ones count once.

    Args:
        model: any module.
    """
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, inputs: torch.Tensor) -> int:
    """FLOPs (multiply-adds; one fused multiply-add = 1 FLOP) of one forward pass on `inputs`.

    Counted by fvcore with this module's extra handles (module docstring), in eval mode under
    ``torch.no_grad``; the model's train/eval modes are restored afterwards. The count is for the
    whole batch given: pass batch 1 to report per-image FLOPs.

    Args:
        model: a classifier taking one tensor.
        inputs: the input batch (B, C, H, W), on the model's device.

    Raises:
        ConfigError: the forward pass uses an op that no FLOP handle counts (``flop_handles``).
    """
    return int(round(_flop_analysis(model, inputs).total()))


def flops_by_module(model: nn.Module, inputs: torch.Tensor) -> dict[str, int]:
    """FLOPs (multiply-adds) per submodule, as fvcore's ``by_module()`` totals; "" is the whole model.

    A module's total includes its submodules'. Counted as in `count_flops`.

    Args:
        model: a classifier taking one tensor.
        inputs: the input batch (B, C, H, W), on the model's device.
    """
    return {name: int(round(flops)) for name, flops in _flop_analysis(model, inputs).by_module().items()}


def unsupported_ops(model: nn.Module, inputs: torch.Tensor) -> dict[str, int]:
    """Ops in the traced forward pass that have no FLOP handle and are not known to be free.

    They are counted as zero FLOPs by `count_flops`; a new mixer should leave this empty (register a
    handle here, or list the op as free, if it is not).

    Args:
        model: a classifier taking one tensor.
        inputs: the input batch (B, C, H, W), on the model's device.

    Returns:
        op name (e.g. "aten::erfinv") -> number of calls in the trace.
    """
    return dict(_flop_analysis(model, inputs, strict=False).unsupported_ops())


def flops_summary(model: nn.Module, inputs_batch: torch.Tensor) -> dict[str, float]:
    """Per-image FLOPs (multiply-adds) over a batch, for models whose cost depends on the image (DGE).

    Each image is traced separately at batch 1, so the control flow taken for that image is the one
    counted; this costs one trace per image.

    Args:
        model: a classifier taking one tensor.
        inputs_batch: images (B, C, H, W), B >= 1, on the model's device.

    Returns:
        {"mean": mean FLOPs per image, "min": fewest, "max": most}.
    """
    if inputs_batch.ndim < 1 or inputs_batch.shape[0] < 1:
        raise ValueError(f"inputs_batch must hold at least one image, got shape {tuple(inputs_batch.shape)}")
    per_image = [count_flops(model, inputs_batch[i : i + 1]) for i in range(inputs_batch.shape[0])]
    return {"mean": float(np.mean(per_image)), "min": min(per_image), "max": max(per_image)}


# ----------------------------------------------------------------------------------------------------
# Latency


@dataclass
class LatencyStats:
    """Latency of one forward pass, in milliseconds.

    Args:
        median_ms: median over the timed runs (ms).
        p90_ms: 90th percentile, linear interpolation (ms).
        mean_ms: mean over the timed runs (ms).
        runs: timed runs actually made (fewer than asked when `max_seconds` stopped early).
        warmup: warm-up runs actually made.
        batch_size: images per forward pass.
        device: the device's name, as `device_name` gives it.
        dtype: the compute dtype ("float32", or the autocast dtype such as "bfloat16").
        backend: how the network ran (``mixnas.search.latency_backends``): "eager", "compile" or "onnxruntime".
    """

    median_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    warmup: int
    batch_size: int
    device: str
    dtype: str
    backend: str = "eager"


def _resolve_device(device: str) -> torch.device:
    """Parses `device` ("cpu" or an available "cuda[:N]"); ConfigError (a ValueError) otherwise."""
    return resolve_device(device, option="device")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: str) -> str:
    """Names the device latency is measured on.

    Args:
        device: "cpu" or "cuda[:N]".

    Returns:
        "cpu: <CPU model> (<torch threads> threads)" on the CPU, ``torch.cuda.get_device_name`` on a GPU
        (e.g. "NVIDIA H200").
    """
    dev = _resolve_device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu: {_cpu_model()} ({torch.get_num_threads()} threads)"


def _param_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def measure_latency(
    model: nn.Module,
    input_size: int,
    batch_size: int = 1,
    device: str = "cpu",
    runs: int = 50,
    warmup: int = 10,
    in_chans: int = 3,
    amp_dtype: torch.dtype | None = None,
    max_seconds: float | None = None,
    backend: str = "eager",
) -> LatencyStats:
    """Measures the latency (ms) of one forward pass on random images, in eval mode, without grad.

    The model is moved to `device` and stays there (the caller's model is changed); its train/eval
    modes are restored afterwards. On CUDA each run is timed with a pair of CUDA events and a
    synchronize; on the CPU with ``time.perf_counter_ns`` (monotonic).

    Args:
        model: a classifier taking (B, in_chans, H, W).
        input_size: image height and width (pixels).
        batch_size: images per forward pass.
        device: "cpu" or "cuda[:N]"; ValueError if CUDA is asked for and not available.
        runs: timed runs.
        warmup: untimed runs before them (allocator, cuDNN autotuning, caches).
        in_chans: input channels.
        amp_dtype: run under ``torch.autocast`` with this dtype (torch.bfloat16 or torch.float16);
            None runs in the model's own dtype.
        max_seconds: cap on the timed runs' total duration (s): stop once it is reached, but after at
            least 5 timed runs (or `runs`, if fewer). The warm-up is capped the same way (at least one
            run), so a slow model on the CPU stays fast to measure. None: no cap.
        backend: how the network runs as deployed (``mixnas.search.latency_backends``): "eager",
            "compile" (compiled before the warm-up, never timed) or "onnxruntime" (CPU only).
    """
    minimums = {"input_size": (input_size, 1), "batch_size": (batch_size, 1), "runs": (runs, 1),
                "warmup": (warmup, 0), "in_chans": (in_chans, 1)}
    for name, (value, least) in minimums.items():
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be > 0 or None, got {max_seconds}")
    with latency_runner(model, (batch_size, in_chans, input_size, input_size), device, amp_dtype, backend) as runner:
        return runner.measure(runs, warmup, max_seconds)


class LatencyRunner:
    """A network ready to be timed on a device with a backend, and the input it is timed on.

    Made by ``latency_runner``; ``measure`` may be called several times (interleaved rounds) without
    compiling or exporting the network again.

    Args:
        run: the forward pass as the backend runs it (``latency_backends.deployed_forward``).
        inputs: the timed input, e.g. random images (B, C, H, W), on the device.
        device: "cpu" or "cuda[:N]".
        amp_dtype: the autocast dtype, or None.
        dtype: the model's own dtype.
        backend: the backend's name.
    """

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, device: str,
                 amp_dtype: torch.dtype | None, dtype: torch.dtype, backend: str) -> None:
        self.run = run
        self.inputs = inputs
        self.device = device
        self.amp_dtype = amp_dtype
        self.dtype = dtype
        self.backend = backend

    def measure(self, runs: int = 50, warmup: int = 10, max_seconds: float | None = None) -> LatencyStats:
        """Warm up, then time ``runs`` forward passes (ms); ``max_seconds`` caps both as in ``measure_latency``."""
        if runs < 1 or warmup < 0:
            raise ValueError(f"runs must be >= 1 and warmup >= 0, got {runs} and {warmup}")
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0 or None, got {max_seconds}")
        x = self.inputs
        cap_ms = math.inf if max_seconds is None else max_seconds * 1e3
        time_run = _cuda_run_ms if x.is_cuda else _cpu_run_ms
        with _run_context(x.device, self.amp_dtype):
            warmup_done, spent_ms = 0, 0.0
            while warmup_done < warmup and (warmup_done == 0 or spent_ms < cap_ms):
                spent_ms += time_run(self.run, x)
                warmup_done += 1
            times_ms: list[float] = []
            least = min(_MIN_TIMED_RUNS, runs)
            while len(times_ms) < runs and (len(times_ms) < least or sum(times_ms) < cap_ms):
                times_ms.append(time_run(self.run, x))

        median_ms, p90_ms = np.percentile(times_ms, [50, 90], method="linear")
        return LatencyStats(
            median_ms=float(median_ms),
            p90_ms=float(p90_ms),
            mean_ms=float(np.mean(times_ms)),
            runs=len(times_ms),
            warmup=warmup_done,
            batch_size=x.shape[0],
            device=device_name(self.device),
            dtype=str(self.amp_dtype or self.dtype).removeprefix("torch."),
            backend=self.backend,
        )


@contextmanager
def latency_runner(
    model: nn.Module, input_shape: tuple[int, ...], device: str = "cpu", amp_dtype: torch.dtype | None = None,
    backend: str = "eager",
) -> Iterator[LatencyRunner]:
    """``model`` prepared for timing: on ``device``, in eval mode, run by ``backend`` on a random input.

    The model is moved to ``device`` and stays there; its train/eval modes are restored when the block
    ends, and so is whatever the backend built (compiled code, the ONNX Runtime session).

    Args:
        model: a module taking one tensor of ``input_shape`` (a classifier: (B, C, H, W)).
        input_shape: the timed input's shape; its first dimension is the batch.
        device: "cpu" or "cuda[:N]"; ValueError if CUDA is asked for and not available.
        amp_dtype: run under ``torch.autocast`` with this dtype (torch.bfloat16 or torch.float16), or None.
        backend: "eager", "compile" or "onnxruntime" (``mixnas.search.latency_backends``).
    """
    if amp_dtype not in (None, torch.bfloat16, torch.float16):
        raise ValueError(f"amp_dtype must be torch.bfloat16, torch.float16 or None, got {amp_dtype}")
    dev = _resolve_device(device)
    check_backend(backend, dev, amp_dtype)
    model.to(dev)
    dtype = _param_dtype(model)
    x = torch.randn(*input_shape, device=dev, dtype=dtype)
    with _eval_mode(model), ExitStack() as backend_state:
        with _run_context(dev, amp_dtype):
            run = backend_state.enter_context(deployed_forward(model, backend, x))
        yield LatencyRunner(run, x, device, amp_dtype, dtype, backend)


@contextmanager
def _run_context(dev: torch.device, amp_dtype: torch.dtype | None) -> Iterator[None]:
    """The state every timed run (and a backend's compilation) sees: the device, no grad, the autocast."""
    autocast = torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    with torch.cuda.device(dev) if dev.type == "cuda" else nullcontext(), torch.no_grad(), autocast:
        yield


def _cpu_run_ms(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    start = time.perf_counter_ns()
    run(x)
    return (time.perf_counter_ns() - start) / 1e6


def _cuda_run_ms(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run(x)
    end.record()
    # Kernels run asynchronously: the events' times are only known once the GPU has passed `end`.
    torch.cuda.synchronize()
    return start.elapsed_time(end)
