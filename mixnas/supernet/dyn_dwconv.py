"""Dynamic depth-wise convolution mixer (D-DWNet and I-D-DWNet from the DWNet paper).

As the static mixer (``dwconv``), but the depth-wise kernel is predicted from the input:

* homogeneous (D-DWNet): one k x k kernel per (image, channel), shared by all positions:
  global average pool -> 1x1 conv C -> C/4 (no bias) -> BN -> ReLU -> 1x1 conv C/4 -> C*k*k (bias),
  plus a static bias per channel; applied as a grouped conv over the batch.
* inhomogeneous (I-D-DWNet): a kernel per position and per group of channels (G = heads groups):
  1x1 conv C -> C/4 (bias) -> BN -> ReLU -> 1x1 conv C/4 -> k*k*G (bias), applied by unfolding.

The official code at HEAD builds a static conv for the homogeneous variant (an ``if`` where ``elif``
was meant); this is the variant its README describes (51M parameters for D-DWNet-T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixnas.supernet.dwconv import PointwiseBranch
from mixnas.supernet.elastic import ElasticBatchNorm2d, ElasticConv2d, active_slice, init_linear_like


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


class DynamicDWConvMixer(nn.Module):
    """Dynamic depth-wise conv mixer, homogeneous or inhomogeneous.

    Args:
        dim: largest channel width C.
        kernel_size: largest kernel side k (odd).
        homogeneous: build the per-image kernel predictor.
        inhomogeneous: build the per-position kernel predictor.
        groups: largest number of channel groups G for the inhomogeneous predictor (the heads).
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
        kernels = F.linear(ctx.flatten(1), weight, bias).reshape(b * c, 1, k, k)
        out = F.conv2d(x.reshape(1, b * c, h, w), kernels, self.static_bias[:c].repeat(b), 1, k // 2, 1, b * c)
        return out.view(b, c, h, w)

    def inhomogeneous(self, x: Tensor, k: int, groups: int) -> Tensor:
        """x: (B, C, H, W); a predicted kernel per (image, position, group of C/G channels)."""
        b, c, h, w = x.shape
        ctx = F.relu(self.i_reduce_bn(self.i_reduce(x, out_channels=c // 4)))  # (B, C/4, H, W)
        weight, bias = self.i_generate.active(groups, k, c // 4)
        kernels = F.conv2d(ctx, weight[:, :, None, None], bias).view(b, groups, k * k, h * w)
        patches = F.unfold(x, k, padding=k // 2).view(b, groups, c // groups, k * k, h * w)
        return torch.einsum("bgckn,bgkn->bgcn", patches, kernels).reshape(b, c, h, w)

    def forward(self, x: Tensor, kernel_size: int, inhomogeneous: bool = False, groups: int = 1) -> Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        y = self.pre(x.permute(0, 3, 1, 2), relu=True)
        y = self.inhomogeneous(y, kernel_size, groups) if inhomogeneous else self.homogeneous(y, kernel_size)
        y = F.relu(self.bn(y))
        return self.post(y, relu=False).permute(0, 2, 3, 1)
