"""Feed-forward networks of a block: ``mlp`` and LocalViT's ``local``.

* mlp: Linear(C, rC) -> GELU -> Linear(rC, C), pre-normed by the block.
* local (LocalViT): tokens as a 2-D map, 1x1 conv C -> rC (no bias) -> BN -> h-swish -> depth-wise 3x3
  (no bias) -> BN -> h-swish -> (optional squeeze-excitation) -> 1x1 conv rC -> C (no bias) -> BN, with
  its own identity path, no norm before it and no drop-path (as in the official code). The
  squeeze-excitation narrows rC to rC // C (LocalViT-T's
  ``hs+se`` with reduction = C: 768 -> 4 -> 768), which reproduces LocalViT-T's 5.91M parameters.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mixnas.supernet.elastic import ElasticBatchNorm2d, ElasticConv2d, ElasticLinear


class ElasticMlp(nn.Module):
    """Linear -> GELU -> Linear with an elastic hidden width.

    Args:
        dim: largest width C.
        hidden: largest hidden width.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = ElasticLinear(dim, hidden)
        self.fc2 = ElasticLinear(hidden, dim)

    def forward(self, x: Tensor, hidden: int) -> Tensor:
        """x: (..., C) -> (..., C)."""
        return self.fc2(F.gelu(self.fc1(x, hidden)), x.shape[-1])


class SqueezeExcite(nn.Module):
    """avg pool -> Linear(rC, s) -> ReLU -> Linear(s, rC) -> h-sigmoid, scaling the channels.

    Args:
        channels: largest channel count rC.
        squeeze: largest squeezed width s.
    """

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = ElasticLinear(channels, squeeze)
        self.fc2 = ElasticLinear(squeeze, channels)

    def forward(self, x: Tensor, squeeze: int) -> Tensor:
        """x: (B, C, H, W)."""
        s = F.relu(self.fc1(x.mean((2, 3)), squeeze))
        return x * F.hardsigmoid(self.fc2(s, x.shape[1]))[:, :, None, None]


class LocalFFN(nn.Module):
    """LocalViT's locality feed-forward network; returns x plus its branch.

    Args:
        dim: largest width C.
        hidden: largest hidden width rC.
        se: build the squeeze-excitation (used when the active config asks for it).
        min_dim: smallest width it will run at (sizes the squeeze-excitation).
    """

    def __init__(self, dim: int, hidden: int, se: bool = False, min_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = ElasticConv2d(dim, hidden, 1, bias=False)
        self.bn1 = ElasticBatchNorm2d(hidden)
        self.dw = ElasticConv2d(hidden, hidden, 3, depthwise=True, bias=False)
        self.bn2 = ElasticBatchNorm2d(hidden)
        self.se = SqueezeExcite(hidden, max(1, hidden // (min_dim or dim))) if se else None
        self.fc2 = ElasticConv2d(hidden, dim, 1, bias=False)
        self.bn3 = ElasticBatchNorm2d(dim)

    def forward(self, x: Tensor, hidden: int, se: bool) -> Tensor:
        """x: (B, H, W, C) -> (B, H, W, C), including the identity path."""
        c = x.shape[-1]
        y = F.hardswish(self.bn1(self.fc1(x.permute(0, 3, 1, 2), out_channels=hidden)))
        y = F.hardswish(self.bn2(self.dw(y)))
        if se:
            if self.se is None:
                raise ValueError("this LocalFFN was built without squeeze-excitation")
            y = self.se(y, max(1, hidden // c))
        y = self.bn3(self.fc2(y, out_channels=c)).permute(0, 2, 3, 1)
        return x + y
