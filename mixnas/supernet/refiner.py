"""Refiner attention: window (or global) attention whose post-softmax maps are refined before weighting V.

Refinement (Zhou et al., "Refiner: Refining Self-attention for Vision Transformers"), per block as in
the paper: the maps A (B, H, N, N) are treated as an H-channel image of size N x N;
attention expansion, a 1x1 conv H -> e*H over heads; distributed local attention, a depth-wise k x k
conv over each expanded map; then a 1x1 conv e*H -> H back to the heads. The released code's extras
(BatchNorm and ReLU6 between the convs, a residual, refining every second block) are not used.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mixnas.supernet.elastic import ElasticConv2d
from mixnas.supernet.window_attn import WindowAttention, effective_window


class RefinerAttention(nn.Module):
    """Multi-head attention with attention expansion and distributed local attention.

    Args:
        dim: largest channel width C.
        heads: largest number of heads H.
        bias_window: largest effective window needing a relative position bias; 0 for none.
        expansion_ratio: largest e (expanded maps: e*H).
        kernel_size: largest side of the depth-wise conv over the maps.
    """

    def __init__(self, dim: int, heads: int, bias_window: int, expansion_ratio: int, kernel_size: int) -> None:
        super().__init__()
        self.attn = WindowAttention(dim, heads, bias_window)
        self.expand = ElasticConv2d(heads, expansion_ratio * heads, 1, bias=False)
        self.local = ElasticConv2d(expansion_ratio * heads, expansion_ratio * heads, kernel_size, depthwise=True)
        self.reduce = ElasticConv2d(expansion_ratio * heads, heads, 1, bias=False)

    def refine(self, attn: Tensor, heads: int, expansion_ratio: int, kernel_size: int) -> Tensor:
        """(M, H, N, N) softmax maps -> (M, H, N, N) refined maps."""
        a = self.expand(attn, out_channels=expansion_ratio * heads)
        a = self.local(a, kernel_size=kernel_size)
        return self.reduce(a, out_channels=heads)

    def forward(
        self, x: Tensor, heads: int, window_size: int, block_index: int, expansion_ratio: int,
        kernel_size: int, rel_pos_bias: bool = True,
    ) -> Tensor:
        """x: (B, H, W, C), already normalised -> (B, H, W, C)."""
        b, h, w, c = x.shape
        window, shift = effective_window(window_size, h, block_index)
        q, k, v, mask, nw, n = self.attn.attention_inputs(x, heads, window, shift, rel_pos_bias)
        scores = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)  # (B, nW, heads, N, N)
        if mask is not None:
            scores = scores + mask
        maps = scores.softmax(dim=-1).reshape(b * nw, heads, n, n)
        maps = self.refine(maps, heads, expansion_ratio, kernel_size).view(b, nw, heads, n, n)
        out = torch.matmul(maps, v)  # (B, nW, heads, N, head_dim)
        return self.attn.merge_windows(out, b, h, w, window, shift)
