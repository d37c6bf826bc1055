"""Dynamic depth-wise convolution mixer (D-DWNet and I-D-DWNet from the DWNet paper).

As the static mixer (``dwconv``), but the depth-wise kernel is predicted from the input:

* homogeneous (D-DWNet): one k x k kernel per (image, channel), shared by all positions:
  global average pool -> 1x1 conv C -> C/4 (no bias) -> BN -> ReLU -> 1x1 conv C/4 -> C*k*k (bias),
  plus a static bias per channel; applied as a grouped conv over the batch.
* inhomogeneous (I-D-DWNet): a kernel per position and per group of channels:
  1x1 conv C -> C/4 (bias) -> BN -> ReLU -> 1x1 conv C/4 -> k*k*G (bias). As in the official code,
  ``heads`` is the number of channels per group, so G = C / heads (32 groups in every stage of
  I-D-DWNet-T). The kernels are applied offset by offset, accumulating k*k shifted views of the input,
  so no k*k-fold copy of the activations is made (``F.unfold`` would hold one: 49x at k = 7).

The official code at HEAD builds a static conv for the homogeneous variant (an ``if`` where ``elif``
was meant); this is the variant its README describes (51M parameters for D-DWNet-T).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixnas.errors import ConfigError
from mixnas.search_space import BoolParam, IntParam, MixerConfig, MixerSpec, StageChoices, StageConfig
from mixnas.supernet.elastic import ElasticBatchNorm2d, ElasticConv2d, active_slice, init_linear_like
from mixnas.supernet.mixers._api import ExportForm, MixerContext
from mixnas.supernet.mixers.dwconv import PointwiseBranch


class KernelGenerator(nn.Module):
    """The last 1x1 conv of a kernel predictor, held as (groups, k, k, hidden) so that a smaller k is
    the centre of the larger one and fewer groups (channels) are the leading ones.

    Args:
        groups: largest number of kernels per image (C homogeneous; G inhomogeneous).
        kernel_size: largest kernel side.
        hidden: largest predictor width (C/4).
    """

    centred = {"weight": (1, 2), "bias": (1, 2)}

    def __init__(self, groups: int, kernel_size: int, hidden: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(groups, kernel_size, kernel_size, hidden))
        self.bias = nn.Parameter(torch.zeros(groups, kernel_size, kernel_size))
        init_linear_like(self.weight)

    def active(self, groups: int, k: int, hidden: int) -> tuple[Tensor, Tensor]:
        w = active_slice(self.weight, (groups, k, k, hidden), centred=(1, 2)).reshape(groups * k * k, hidden)
        b = active_slice(self.bias, (groups, k, k), centred=(1, 2)).reshape(-1)
        return w, b


def per_position_dwconv(x: Tensor, kernels: Tensor, k: int) -> Tensor:
    """Depth-wise conv with a kernel per position and group, zero padding k // 2, stride 1.

    Args:
        x: (B, C, H, W) input.
        kernels: (B, G, k*k, H, W); channel c uses group c // (C / G), offsets in row-major order.

    Returns:
        (B, C, H, W). Accumulated over the k*k offsets from views of the padded input: the memory held
        for backward is the padded input and the kernels, not a k*k-fold unfolded copy.
    """
    b, c, h, w = x.shape
    g = kernels.shape[1]
    pad = k // 2
    padded = F.pad(x, (pad, pad, pad, pad)).view(b, g, c // g, h + 2 * pad, w + 2 * pad)
    out = x.new_zeros(b, g, c // g, h, w)
    for t in range(k * k):
        dy, dx = divmod(t, k)
        # One fused multiply-add per output element and offset (the profiler counts addcmul so).
        out = torch.addcmul(out, padded[..., dy:dy + h, dx:dx + w], kernels[:, :, t, None])
    return out.view(b, c, h, w)


def shifted_dwconv(x: Tensor, kernels: Tensor, k: int) -> Tensor:
    """``per_position_dwconv`` in a few operations, for export: the k*k shifted copies of every channel come
    out of one convolution with one-hot kernels, then are weighted and summed. It holds a k*k-fold copy
    of the input, which eager evaluation avoids. kernels: (B, G, k*k, H or 1, W or 1)."""
    b, c, h, w = x.shape
    g = kernels.shape[1]
    shifts = torch.eye(k * k, dtype=x.dtype, device=x.device).view(k * k, 1, k, k)
    patches = F.conv2d(x.reshape(b * c, 1, h, w), shifts, padding=k // 2)  # (B*C, k*k, H, W)
    patches = patches.view(b, g, c // g, k * k, h, w)
    return (patches * kernels[:, :, None]).sum(3).view(b, c, h, w)


class DynamicDWConvMixer(ExportForm, nn.Module):
    """Dynamic depth-wise conv mixer, homogeneous or inhomogeneous.

    Args:
        dim: largest channel width C.
        kernel_size: largest kernel side k (odd).
        homogeneous: build the per-image kernel predictor.
        inhomogeneous: build the per-position kernel predictor.
        groups: largest number of channel groups G of the inhomogeneous predictor (C / heads).
    """

    def __init__(self, dim: int, kernel_size: int, homogeneous: bool = True, inhomogeneous: bool = False,
                 groups: int = 1) -> None:
        super().__init__()
        hidden = dim // 4
        self.pre = PointwiseBranch(dim)
        if homogeneous:
            self.reduce = ElasticConv2d(dim, hidden, 1, bias=False)
            self.reduce_bn = ElasticBatchNorm2d(hidden)
            self.generate = KernelGenerator(dim, kernel_size, hidden)
            self.static_bias = nn.Parameter(torch.zeros(dim))
        if inhomogeneous:
            self.i_reduce = ElasticConv2d(dim, hidden, 1, bias=True)
            self.i_reduce_bn = ElasticBatchNorm2d(hidden)
            self.i_generate = KernelGenerator(groups, kernel_size, hidden)
        self.bn = ElasticBatchNorm2d(dim)
        self.post = PointwiseBranch(dim)

    def homogeneous(self, x: Tensor, k: int) -> Tensor:
        """x: (B, C, H, W); one predicted kernel per (image, channel)."""
        b, c, h, w = x.shape
        ctx = F.relu(self.reduce_bn(self.reduce(F.adaptive_avg_pool2d(x, 1), out_channels=c // 4)))
        weight, bias = self.generate.active(c, k, c // 4)
        kernels = F.linear(ctx.flatten(1), weight, bias)
        if self.export_form:  # no batch-sized conv groups (an ONNX Conv's groups are static)
            out = shifted_dwconv(x, kernels.view(b, c, k * k, 1, 1), k)
            return out + self.static_bias[:c].view(1, c, 1, 1)
        kernels = kernels.reshape(b * c, 1, k, k)
        out = F.conv2d(x.reshape(1, b * c, h, w), kernels, self.static_bias[:c].repeat(b), 1, k // 2, 1, b * c)
        return out.view(b, c, h, w)

    def inhomogeneous(self, x: Tensor, k: int, channels_per_group: int) -> Tensor:
        """x: (B, C, H, W); a predicted kernel per (image, position, group of ``channels_per_group``)."""
        b, c, h, w = x.shape
        groups = c // channels_per_group
        ctx = F.relu(self.i_reduce_bn(self.i_reduce(x, out_channels=c // 4)))  # (B, C/4, H, W)
        weight, bias = self.i_generate.active(groups, k, c // 4)
        kernels = F.conv2d(ctx, weight[:, :, None, None], bias).view(b, groups, k * k, h, w)
        return shifted_dwconv(x, kernels, k) if self.export_form else per_position_dwconv(x, kernels, k)

    def forward(self, x: Tensor, ctx: MixerContext) -> Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        m = ctx.mixer
        y = self.pre(x.permute(0, 3, 1, 2), relu=True)
        k = m.kernel_size
        y = self.inhomogeneous(y, k, ctx.heads) if m.inhomogeneous else self.homogeneous(y, k)
        y = F.relu(self.bn(y))
        return self.post(y, relu=False).permute(0, 2, 3, 1)


class DynamicDWConvSpec(MixerSpec):
    """DWNet's dynamic depth-wise convolution (homogeneous D-DWNet, or inhomogeneous I-D-DWNet)."""

    name = "dyn_dwconv"
    abbreviation = "ddw"
    color = "#98df8a"
    params = (
        IntParam("kernel_size", 7, "depth-wise kernel side", odd=True),
        BoolParam("inhomogeneous", False, "a kernel per position and group of `heads` channels (I-D-DWNet)"),
    )
    pre_norm = "none"
    ffn_norm = "batch"
    uses_heads = False

    def label(self, mixer: MixerConfig) -> str:
        return ("iddw" if mixer.inhomogeneous else "ddw") + str(mixer.kernel_size)

    def heads_matter(self, mixer: MixerConfig) -> bool:
        return bool(mixer.inhomogeneous)  # heads are its channels per group

    def check(self, mixer: MixerConfig, stage: StageConfig, resolution: int, path: str) -> None:
        if stage.dim < 4:
            raise ConfigError(f"{path.rsplit('.', 1)[0]}.dim: dyn_dwconv needs dim >= 4 (its kernel generator "
                              f"is dim/4 wide)")

    def limits(self, options: Sequence[MixerConfig], stage: StageChoices, resolution: int) -> dict[str, Any]:
        return {
            "kernel_size": max(o.kernel_size for o in options),
            "homogeneous": any(not o.inhomogeneous for o in options),
            "inhomogeneous": any(o.inhomogeneous for o in options),
            "groups": max(d // h for d in stage.dims for h in stage.heads),
        }

    def build(self, dim: int, heads: int, limits: dict[str, Any], resolution: int) -> nn.Module:
        return DynamicDWConvMixer(dim, limits["kernel_size"], limits["homogeneous"], limits["inhomogeneous"],
                                  limits["groups"])
