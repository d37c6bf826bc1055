"""Elastic layers: weights held at the largest size, a forward pass runs an active slice.

The standalone model is the same module built at its exact size, where every slice is the whole tensor.
A slice is the leading part of each dimension, except for kernel-like dimensions listed in a module's
``centred`` map, where it is the centre (a 3x3 kernel is the centre of the 5x5 one, as in once-for-all),
and for head-split dimensions (attention's q, k, v and the projection's input), where it is the leading
part of each head (``head_slice``). ``active_slice`` and ``head_slice`` are the rules used both by forward
passes and by ``Supernet.extract`` (through ``active_state``), so the two cannot disagree.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import Tensor, nn

_INITIALISE = contextvars.ContextVar("mixnas_initialise_weights", default=True)


@contextmanager
def weights_to_be_loaded() -> Iterator[None]:
    """Modules built inside skip their random initialisation: their weights stay as allocated, for a model
    whose every parameter is loaded right after (``Supernet.extract``). The initialisation is about 90% of
    building an ImageNet-size network. Fixed values (zero biases, LayerNorm's ones) are still set."""
    token = _INITIALISE.set(False)
    try:
        yield
    finally:
        _INITIALISE.reset(token)


def trunc_normal_init_(t: Tensor, std: float = 0.02) -> None:
    """timm's ``trunc_normal_`` (mean 0, cut at +-2), unless inside ``weights_to_be_loaded``."""
    if _INITIALISE.get():
        trunc_normal_(t, std=std)


def conv_init_(weight: Tensor, bias: Tensor | None) -> None:
    """PyTorch's default ``Conv2d`` initialisation (Kaiming-uniform weight, uniform bias within
    1/sqrt(fan-in)), unless inside ``weights_to_be_loaded``."""
    if _INITIALISE.get():
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        if bias is not None:
            bound = 1 / math.sqrt(weight[0].numel())
            nn.init.uniform_(bias, -bound, bound)


def active_slice(t: Tensor, shape: Sequence[int], centred: Sequence[int] = ()) -> Tensor:
    """The leading (or, for ``centred`` dims, central) ``shape``-sized part of ``t``; ``t`` itself if equal."""
    if tuple(t.shape) == tuple(shape):
        return t
    index = []
    for d, (full, want) in enumerate(zip(t.shape, shape)):
        if want > full:
            raise ValueError(f"active size {tuple(shape)} exceeds the held size {tuple(t.shape)}")
        start = (full - want) // 2 if d in centred else 0
        index.append(slice(start, start + want))
    return t[tuple(index)]


def head_slice(t: Tensor, dim: int, heads: int, width: int) -> Tensor:
    """Along ``dim`` (held size C): the leading width/heads channels of each of ``heads`` equal groups.

    A subnet with h heads and width c runs, of a layer held at width C, channels
    [j*C/h, j*C/h + c/h) for head j: its heads are the supernet's heads (at h heads), each narrowed.
    ``t`` itself when width == C.
    """
    held = t.shape[dim]
    if width == held:
        return t
    if held % heads or width % heads:
        raise ValueError(f"head slicing: widths {held} and {width} must both be divisible by {heads} heads")
    grouped = t.reshape(*t.shape[:dim], heads, held // heads, *t.shape[dim + 1:])
    return grouped.narrow(dim + 1, 0, width // heads).flatten(dim, dim + 1)


class ElasticLinear(nn.Module):
    """Linear layer whose input and output widths are chosen per call.

    Grouped layouts keep a fused layer sliceable: qkv is three (out, in) blocks, so its weight is held as
    (3, out, in) and the active weight is the leading (3, o, i) block flattened to (3*o, i).

    Args:
        in_features: largest input width.
        out_features: largest output width per group.
        bias: whether there is a bias.
        out_groups: output blocks (3 for qkv, 2 for kv); the weight is (out_groups, out, in).
        in_groups: input blocks (4 for patch merging's concatenated neighbours); weight (out, in_groups, in).
        heads: the head count the layer is built for (a standalone layer's exact heads).
        head_split: ``"out"`` (q, k, v) or ``"in"`` (the attention's output projection): that width is
            sliced head by head (``head_slice``) at the heads given per call; None: leading channels.
    """

    centred: dict[str, tuple[int, ...]] = {}

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, out_groups: int = 1, in_groups: int = 1,
        heads: int = 1, head_split: str | None = None,
    ) -> None:
        super().__init__()
        if out_groups > 1 and in_groups > 1:
            raise ValueError("a layer groups either its inputs or its outputs, not both")
        if head_split not in (None, "in", "out") or (head_split == "in" and in_groups > 1):
            raise ValueError(f"head_split must be None, 'in' or 'out' (not with in_groups), got {head_split!r}")
        self.in_features, self.out_features = in_features, out_features
        self.out_groups, self.in_groups = out_groups, in_groups
        self.heads, self.head_split = heads, head_split
        if out_groups > 1:
            shape: tuple[int, ...] = (out_groups, out_features, in_features)
        elif in_groups > 1:
            shape = (out_features, in_groups, in_features)
        else:
            shape = (out_features, in_features)
        self.weight = nn.Parameter(torch.empty(shape))
        bias_shape = (out_groups, out_features) if out_groups > 1 else (out_features,)
        self.bias = nn.Parameter(torch.zeros(bias_shape)) if bias else None
        trunc_normal_init_(self.weight, std=0.02)

    def _held(self, in_features: int, out_features: int, heads: int) -> tuple[Tensor, Tensor | None]:
        """The active weight and bias in their held layout ((g, out, in), (out, g, in) or (out, in))."""
        g_out, g_in = self.out_groups, self.in_groups
        w, b = self.weight, self.bias
        o_dim = 1 if g_out > 1 else 0
        i_dim = w.ndim - 1
        if self.head_split == "out":
            w = head_slice(w, o_dim, heads, out_features)
            b = None if b is None else head_slice(b, b.ndim - 1, heads, out_features)
        elif self.head_split == "in":
            w = head_slice(w, i_dim, heads, in_features)
        if g_out > 1:
            w = active_slice(w, (g_out, out_features, in_features))
            b = None if b is None else active_slice(b, (g_out, out_features))
        elif g_in > 1:
            w = active_slice(w, (out_features, g_in, in_features // g_in))
            b = None if b is None else active_slice(b, (out_features,))
        else:
            w = active_slice(w, (out_features, in_features))
            b = None if b is None else active_slice(b, (out_features,))
        return w, b

    def active_weight(self, in_features: int, out_features: int, heads: int | None = None
                      ) -> tuple[Tensor, Tensor | None]:
        """The (out_groups * out, in_groups * in) weight and bias a call at these sizes uses."""
        w, b = self._held(in_features, out_features, heads or self.heads)
        if self.out_groups > 1:
            return w.reshape(-1, in_features), None if b is None else b.reshape(-1)
        return w.reshape(out_features, -1), b

    def active_state(self, name: str, target: ElasticLinear) -> Tensor:
        """The held tensor ``name`` sliced for ``target``, the same layer built at a subnet's exact sizes."""
        in_features = target.in_features * (target.in_groups if target.in_groups > 1 else 1)
        w, b = self._held(in_features, target.out_features, target.heads)
        return w if name == "weight" else b

    def forward(self, x: Tensor, out_features: int | None = None, heads: int | None = None) -> Tensor:
        """x: (..., in) with in <= held width (times in_groups); returns (..., out_groups * out).

        ``heads`` is the active head count of a head-split layer (default: the count it was built for).
        """
        w, b = self.active_weight(x.shape[-1], out_features or self.out_features, heads)
        return F.linear(x, w, b)


class ElasticLayerNorm(nn.Module):
    """LayerNorm over the last dim, whose width is read from the input.

    Args:
        dim: largest width (per group).
        groups: the input is ``groups`` concatenated blocks of width dim (patch merging's 4 neighbours).
        eps: numerical epsilon.
    """

    centred: dict[str, tuple[int, ...]] = {}

    def __init__(self, dim: int, groups: int = 1, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim, self.groups, self.eps = dim, groups, eps
        shape = (groups, dim) if groups > 1 else (dim,)
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[-1]
        if self.groups > 1:
            shape: tuple[int, ...] = (self.groups, c // self.groups)
            w = active_slice(self.weight, shape).reshape(-1)
            b = active_slice(self.bias, shape).reshape(-1)
        else:
            w, b = active_slice(self.weight, (c,)), active_slice(self.bias, (c,))
        return F.layer_norm(x, (c,), w, b, self.eps)


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over the first C channels of its statistics and affine parameters (NCHW input).

    Sliced running statistics are views, so training updates the held buffers in place. With
    ``momentum=None`` the statistics are a cumulative average (used for BatchNorm recalibration).
    """

    centred: dict[str, tuple[int, ...]] = {}

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or self.running_mean is None
        return F.batch_norm(
            x,
            None if self.running_mean is None else self.running_mean[:c],
            None if self.running_var is None else self.running_var[:c],
            None if self.weight is None else self.weight[:c],
            None if self.bias is None else self.bias[:c],
            use_batch_stats,
            factor,
            self.eps,
        )


def batch_norm_nhwc(bn: nn.Module, x: Tensor) -> Tensor:
    """Apply a 2-D BatchNorm to channels-last tokens (B, H, W, C)."""
    return bn(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ElasticConv2d(nn.Module):
    """Conv2d with elastic channels and, for square odd kernels, an elastic (centred) kernel size.

    Args:
        in_channels: largest input channels.
        out_channels: largest output channels.
        kernel_size: largest kernel side.
        stride: stride (the stem uses stride = kernel = patch size).
        depthwise: one filter per channel (groups = channels); then in_channels must equal out_channels.
        bias: whether there is a bias.
        same_padding: pad kernel_size // 2 (odd kernels keep the map size).
    """

    centred = {"weight": (2, 3)}

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
        depthwise: bool = False, bias: bool = True, same_padding: bool = True,
    ) -> None:
        super().__init__()
        if depthwise and in_channels != out_channels:
            raise ValueError("a depth-wise conv has as many output channels as input channels")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.depthwise, self.same_padding = depthwise, same_padding
        fan_in_ch = 1 if depthwise else in_channels
        self.weight = nn.Parameter(torch.empty(out_channels, fan_in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        conv_init_(self.weight, self.bias)

    def forward(self, x: Tensor, out_channels: int | None = None, kernel_size: int | None = None) -> Tensor:
        """x: (B, C_in, H, W) -> (B, C_out, H', W')."""
        c_in = x.shape[1]
        k = kernel_size or self.kernel_size
        if self.depthwise:
            c_out, shape = c_in, (c_in, 1, k, k)
        else:
            c_out = out_channels or self.out_channels
            shape = (c_out, c_in, k, k)
        w = active_slice(self.weight, shape, centred=(2, 3))
        b = None if self.bias is None else active_slice(self.bias, (c_out,))
        pad = k // 2 if self.same_padding else 0
        return F.conv2d(x, w, b, self.stride, pad, 1, c_in if self.depthwise else 1)


def init_linear_like(*params: Tensor) -> None:
    """timm's transformer initialisation for weights created as raw parameters."""
    for p in params:
        trunc_normal_init_(p, std=0.02)
