"""Depth-wise convolution mixer (DWNet, "On the Connection between Local Attention and Dynamic
Depth-wise Convolution"): the window attention of a Swin block replaced by a depth-wise conv.

There is no norm before this mixer and no residual inside it; the block's FFN is pre-normed by
BatchNorm. Data flows (NCHW inside): 1x1 conv (no bias) -> BN -> ReLU -> depth-wise k x k (bias,
pad k//2) -> BN -> ReLU -> 1x1 conv (no bias) -> BN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from mixnas.search_space import IntParam, MixerConfig, MixerSpec, StageChoices
from mixnas.supernet.elastic import ElasticBatchNorm2d, ElasticConv2d
from mixnas.supernet.mixers._api import MixerContext


class PointwiseBranch(nn.Module):
    """The 1x1 conv -> BN (-> ReLU) pieces that DWNet puts around its spatial conv.

    Args:
        dim: largest channel width.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = ElasticConv2d(dim, dim, 1, bias=False)
        self.bn = ElasticBatchNorm2d(dim)

    def forward(self, x: Tensor, relu: bool) -> Tensor:
        x = self.bn(self.conv(x, out_channels=x.shape[1]))
        return F.relu(x) if relu else x


class DWConvMixer(nn.Module):
    """Static depth-wise conv mixer with an elastic kernel (a smaller kernel is the centre of the larger).

    Args:
        dim: largest channel width C.
        kernel_size: largest kernel side k (odd).
    """

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__()
        self.pre = PointwiseBranch(dim)
        self.conv = ElasticConv2d(dim, dim, kernel_size, depthwise=True, bias=True)
        self.bn = ElasticBatchNorm2d(dim)
        self.post = PointwiseBranch(dim)

    def forward(self, x: Tensor, ctx: MixerContext) -> Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        y = self.pre(x.permute(0, 3, 1, 2), relu=True)
        y = F.relu(self.bn(self.conv(y, kernel_size=ctx.mixer.kernel_size)))
        return self.post(y, relu=False).permute(0, 2, 3, 1)


class DWConvSpec(MixerSpec):
    """DWNet's depth-wise convolution: no norm before it, BatchNorm before the FFN."""

    name = "dwconv"
    abbreviation = "dw"
    color = "#2ca02c"
    params = (IntParam("kernel_size", 7, "depth-wise kernel side", odd=True),)
    pre_norm = "none"
    ffn_norm = "batch"
    uses_heads = False

    def label(self, mixer: MixerConfig) -> str:
        return f"dw{mixer.kernel_size}"

    def limits(self, options: Sequence[MixerConfig], stage: StageChoices, resolution: int) -> dict[str, Any]:
        return {"kernel_size": max(o.kernel_size for o in options)}

    def build(self, dim: int, heads: int, limits: dict[str, Any], resolution: int) -> nn.Module:
        return DWConvMixer(dim, limits["kernel_size"])
