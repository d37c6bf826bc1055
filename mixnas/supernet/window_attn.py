"""Window attention (Swin): multi-head self-attention inside w x w windows, shifted every second block.

Global attention (DeiT) is the case where the window covers the whole map. Data flows:
``window_partition`` -> qkv -> scaled dot-product with the relative position bias (and the shift mask)
-> proj -> ``window_reverse``.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import Tensor, nn

from mixnas.supernet.elastic import ElasticLinear, active_slice

SHIFT_MASK_VALUE = -100.0  # Swin's value for attention across the borders of rolled regions


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) -> (B, nW, w*w, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, (h // window) * (w // window), window * window, c)


def window_reverse(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """(B, nW, w*w, C) -> (B, H, W, C); the inverse of ``window_partition``."""
    b, _, _, c = windows.shape
    x = windows.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


@lru_cache(maxsize=64)
def relative_position_index(window: int) -> Tensor:
    """(w*w, w*w) index into a (2w-1) x (2w-1) table flattened row-major: (dy + w-1) * (2w-1) + dx + w-1."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, N, N)
    return rel[0] * (2 * window - 1) + rel[1]


@lru_cache(maxsize=64)
def shift_attention_mask(h: int, w: int, window: int, shift: int) -> Tensor:
    """(nW, N, N) additive mask: -100 between tokens that came from different regions of the rolled map."""
    img = torch.zeros(h, w)
    count = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[hs, ws] = count
            count += 1
    regions = window_partition(img.view(1, h, w, 1), window).view(-1, window * window)  # (nW, N)
    diff = regions[:, None, :] - regions[:, :, None]
    return torch.where(diff != 0, SHIFT_MASK_VALUE, 0.0)


def effective_window(window_size: int, resolution: int, block_index: int) -> tuple[int, int]:
    """(window, shift) for a block: the whole map and no shift when the map fits in one window."""
    if resolution <= window_size:
        return resolution, 0
    return window_size, (window_size // 2 if block_index % 2 else 0)


class RelativePositionBias(nn.Module):
    """A learned bias per head and relative offset, held as (heads, 2w-1, 2w-1).

    A smaller window uses the centre of the table, the offsets it can see.

    Args:
        heads: largest number of heads.
        window: largest window side that the table serves.
    """

    centred = {"table": (1, 2)}

    def __init__(self, heads: int, window: int) -> None:
        super().__init__()
        self.window = window
        self.table = nn.Parameter(torch.zeros(heads, 2 * window - 1, 2 * window - 1))
        trunc_normal_(self.table, std=0.02)

    def forward(self, heads: int, window: int) -> Tensor:
        """Returns the (heads, w*w, w*w) bias."""
        t = active_slice(self.table, (heads, 2 * window - 1, 2 * window - 1), centred=(1, 2))
        index = relative_position_index(window).to(t.device)
        n = window * window
        return t.reshape(heads, -1)[:, index.view(-1)].view(heads, n, n)


class WindowAttention(nn.Module):
    """Swin's window multi-head self-attention with elastic width, heads and window.

    Args:
        dim: largest channel width C.
        heads: largest number of heads.
        bias_window: largest effective window (min(window, resolution)) needing a relative position bias;
            0 for no bias table.
        qkv_bias: whether qkv has a bias.
    """

    def __init__(self, dim: int, heads: int, bias_window: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.qkv = ElasticLinear(dim, dim, bias=qkv_bias, out_groups=3)
        self.proj = ElasticLinear(dim, dim)
        self.rel_pos = RelativePositionBias(heads, bias_window) if bias_window else None

    def attention_inputs(
        self, x: Tensor, heads: int, window: int, shift: int, rel_pos_bias: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, int, int]:
        """Windows and q, k, v: each (B, nW, heads, N, head_dim), plus the additive mask (or None)."""
        b, h, w, c = x.shape
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(x, window)  # (B, nW, N, C)
        nw, n = windows.shape[1], windows.shape[2]
        qkv = self.qkv(windows, c).view(b, nw, n, 3, heads, c // heads).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv.unbind(0)
        mask = None
        if rel_pos_bias:
            if self.rel_pos is None:
                raise ValueError("this WindowAttention was built without a relative position bias table")
            mask = self.rel_pos(heads, window).to(x.dtype)[None, None]  # (1, 1, heads, N, N)
        if shift:
            shift_mask = shift_attention_mask(h, w, window, shift).to(device=x.device, dtype=x.dtype)
            shift_mask = shift_mask[None, :, None]  # (1, nW, 1, N, N)
            mask = shift_mask if mask is None else mask + shift_mask
        return q, k, v, mask, nw, n

    def merge_windows(self, out: Tensor, b: int, h: int, w: int, window: int, shift: int) -> Tensor:
        """(B, nW, heads, N, head_dim) -> proj -> (B, H, W, C), un-rolled."""
        bsz, nw, heads, n, hd = out.shape
        out = self.proj(out.transpose(2, 3).reshape(bsz, nw, n, heads * hd), heads * hd)
        x = window_reverse(out, window, h, w)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        return x

    def forward(
        self, x: Tensor, heads: int, window_size: int, block_index: int, rel_pos_bias: bool = True
    ) -> Tensor:
        """x: (B, H, W, C), already normalised -> (B, H, W, C)."""
        b, h, w, _ = x.shape
        window, shift = effective_window(window_size, h, block_index)
        q, k, v, mask, _, _ = self.attention_inputs(x, heads, window, shift, rel_pos_bias)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.merge_windows(out, b, h, w, window, shift)
