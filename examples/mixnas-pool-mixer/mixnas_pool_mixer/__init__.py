"""PoolFormer's token mixer ("MetaFormer Is Actually What You Need for Vision", Yu et al. 2022) as a mixnas
plug-in: y = avgpool_kxk(x) - x, stride 1, padding k//2, padding left out of the averages.

The pooling has no weights, so it is elastic for free: the same module runs any width and any pool size
the space offers, and a standalone network extracted from the supernet has nothing to copy. The block
subtracts nothing more: mixnas adds the block's input back (x + mixer(norm1(x))), as PoolFormer does.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from mixnas.search_space import IntParam, MixerConfig, MixerSpec
from mixnas.supernet import MixerContext


class Pooling(nn.Module):
    """Average pooling minus identity over channels-last tokens; the pool size comes with each call."""

    def forward(self, x: Tensor, ctx: MixerContext) -> Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        k = ctx.mixer.pool_size
        y = F.avg_pool2d(x.permute(0, 3, 1, 2), k, stride=1, padding=k // 2, count_include_pad=False)
        return y.permute(0, 2, 3, 1) - x


class PoolSpec(MixerSpec):
    """The ``pool`` mixer: a LayerNorm before it (the block's norm1), an ``mlp`` or ``local`` FFN after."""

    name = "pool"
    abbreviation = "pool"
    color = "#bcbd22"
    params = (IntParam("pool_size", 3, "pooling window side in tokens", odd=True),)
    uses_heads = False

    def label(self, mixer: MixerConfig) -> str:
        return f"pool{mixer.pool_size}"

    def build(self, dim: int, heads: int, limits: dict[str, Any], resolution: int) -> nn.Module:
        return Pooling()
