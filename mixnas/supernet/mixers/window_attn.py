"""Window attention (Swin): multi-head self-attention inside w x w windows, shifted every second block.

Global attention (DeiT) is the case where the window covers the whole map. Data flows:
``window_partition`` -> qkv -> scaled dot-product with the relative position bias (and the shift mask)
-> proj -> ``window_reverse``. The relative-position indices and the shift masks of the windows a module
can run are fixed by its stage's resolution, so they are built once, as non-persistent buffers (they move
with the module and stay out of checkpoints), as in timm's Swin.

Heads are sliced head by head: a subnet with h heads and width c uses, of the supernet's qkv and proj,
the leading c/h channels of each of h equal groups of the held width, so that its heads are the
supernet's heads (``mixnas.supernet.elastic.head_slice``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixnas.errors import ConfigError
from mixnas.search_space import BoolParam, IntParam, MixerConfig, MixerSpec, StageChoices, StageConfig
from mixnas.supernet.elastic import ElasticLinear, active_slice, trunc_normal_init_
from mixnas.supernet.mixers._api import ExportForm, MixerContext

# Added to the scores of pairs across the borders of rolled regions. Swin adds -100: after the softmax such a
# pair weighs about e^-100 of its row, a denormal float32 that no output can show (it is below float32's
# resolution beside the region's own weights) but that CPUs multiply several times slower: a shifted block's
# attention took about 3x an unshifted one's time on the demo's maps (docs/benchmarks/shift_mask.md). With -1e4
# the exponential underflows to exactly 0: outputs equal Swin's to float32 rounding, at the unshifted
# block's cost. They differ only where a masked score exceeds its row's largest allowed one by more than
# about 84, where Swin's -100 lets attention leak across the seam and -1e4 does not.
SHIFT_MASK_VALUE = -1e4


# ---------------------------------------------------------------------------------------------- helpers
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
def shift_regions(h: int, w: int, window: int, shift: int) -> Tensor:
    """(nW, N) the region (0..8) of the rolled map that each token of each window came from."""
    img = torch.zeros(h, w)
    count = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[hs, ws] = count
            count += 1
    return window_partition(img.view(1, h, w, 1), window).view(-1, window * window)


def shift_attention_mask(h: int, w: int, window: int, shift: int) -> Tensor:
    """(nW, N, N) additive mask: SHIFT_MASK_VALUE between tokens that came from different regions of the rolled
    map, 0 elsewhere."""
    regions = shift_regions(h, w, window, shift)  # (nW, N)
    diff = regions[:, None, :] - regions[:, :, None]
    return torch.where(diff != 0, SHIFT_MASK_VALUE, 0.0)


def effective_window(window_size: int, resolution: int, block_index: int) -> tuple[int, int]:
    """(window, shift) for a block: the whole map and no shift when the map fits in one window."""
    if resolution <= window_size:
        return resolution, 0
    return window_size, (window_size // 2 if block_index % 2 else 0)


def check_window(mixer: MixerConfig, resolution: int, path: str) -> None:
    """A window must tile the map, or cover it (global attention)."""
    w = mixer.window_size
    if w < resolution and resolution % w:
        raise ConfigError(
            f"{path}.window_size: {w} does not tile the stage resolution {resolution}x{resolution}; "
            f"use a divisor of {resolution} or a window >= {resolution} (global attention)"
        )


def window_limits(options: Sequence[MixerConfig], resolution: int) -> dict[str, Any]:
    """The effective windows (min(w, resolution)) a module serves, and the largest one needing a bias table."""
    return {
        "bias_window": max((min(o.window_size, resolution) for o in options if o.rel_pos_bias), default=0),
        "windows": sorted({min(o.window_size, resolution) for o in options}),
    }


# ---------------------------------------------------------------------------------------------- modules
class RelativePositionBias(nn.Module):
    """A learned bias per head and relative offset, held as (heads, 2w-1, 2w-1).

    A smaller window uses the centre of the table, the offsets it can see.

    Args:
        heads: largest number of heads.
        window: largest window side that the table serves.
        windows: the window sides it will run; their indices are built once as buffers.
    """

    centred = {"table": (1, 2)}

    def __init__(self, heads: int, window: int, windows: Sequence[int] = ()) -> None:
        super().__init__()
        self.window = window
        self.table = nn.Parameter(torch.zeros(heads, 2 * window - 1, 2 * window - 1))
        trunc_normal_init_(self.table, std=0.02)
        for w in sorted({*windows, window}):
            if w <= window:
                self.register_buffer(f"index_{w}", relative_position_index(w).clone(), persistent=False)

    def forward(self, heads: int, window: int) -> Tensor:
        """Returns the (heads, w*w, w*w) bias."""
        t = active_slice(self.table, (heads, 2 * window - 1, 2 * window - 1), centred=(1, 2))
        index = getattr(self, f"index_{window}", None)
        if index is None:  # a window the module was not built for (direct calls): computed on the fly
            index = relative_position_index(window).to(t.device)
        n = window * window
        return t.reshape(heads, -1)[:, index.view(-1)].view(heads, n, n)


class WindowAttention(ExportForm, nn.Module):
    """Swin's window multi-head self-attention with elastic width, heads and window.

    Args:
        dim: largest channel width C.
        heads: largest number of heads.
        bias_window: largest effective window (min(window, resolution)) needing a relative position bias;
            0 for no bias table.
        windows: effective windows the module will run (their buffers are built once).
        resolution: the stage's map side, for the shift masks; None to build them when first needed.
        qkv_bias: whether qkv has a bias.
    """

    def __init__(
        self, dim: int, heads: int, bias_window: int, windows: Sequence[int] = (), resolution: int | None = None,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        self.qkv = ElasticLinear(dim, dim, bias=qkv_bias, out_groups=3, heads=heads, head_split="out")
        self.proj = ElasticLinear(dim, dim, heads=heads, head_split="in")
        self.rel_pos = RelativePositionBias(heads, bias_window, windows) if bias_window else None
        self.resolution = resolution
        if resolution is not None:
            for w in windows:
                if w < resolution:
                    mask = shift_attention_mask(resolution, resolution, w, w // 2).clone()
                    self.register_buffer(f"shift_mask_{w}", mask, persistent=False)

    def shift_mask(self, h: int, w: int, window: int, shift: int, like: Tensor) -> Tensor:
        """(nW, N, N) additive shift mask for this map and window, in ``like``'s dtype and device."""
        mask = getattr(self, f"shift_mask_{window}", None) if (h, w) == (self.resolution,) * 2 else None
        if mask is None:
            mask = shift_attention_mask(h, w, window, shift)
        return mask.to(device=like.device, dtype=like.dtype)

    def attention_inputs(
        self, x: Tensor, heads: int, window: int, shift: int, rel_pos_bias: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        """q, k, v (B, nW, heads, N, head_dim), the additive bias and mask (or None), and the shift mask
        (1, nW, 1, N, N) alone (None without a shift)."""
        b, h, w, c = x.shape
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(x, window)  # (B, nW, N, C)
        nw, n = windows.shape[1], windows.shape[2]
        qkv = self.qkv(windows, c, heads=heads).view(b, nw, n, 3, heads, c // heads).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv.unbind(0)
        mask = None
        if rel_pos_bias:
            if self.rel_pos is None:
                raise ValueError("this WindowAttention was built without a relative position bias table")
            mask = self.rel_pos(heads, window).to(x.dtype)[None, None]  # (1, 1, heads, N, N)
        shift_mask = None
        if shift:
            shift_mask = self.shift_mask(h, w, window, shift, x)[None, :, None]  # (1, nW, 1, N, N)
            mask = shift_mask if mask is None else mask + shift_mask
        return q, k, v, mask, shift_mask

    def merge_windows(self, out: Tensor, h: int, w: int, window: int, shift: int) -> Tensor:
        """(B, nW, heads, N, head_dim) -> proj -> (B, H, W, C), un-rolled."""
        bsz, nw, heads, n, hd = out.shape
        out = self.proj(out.transpose(2, 3).reshape(bsz, nw, n, heads * hd), heads * hd, heads=heads)
        x = window_reverse(out, window, h, w)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        return x

    def forward(self, x: Tensor, ctx: MixerContext) -> Tensor:
        """x: (B, H, W, C), already normalised -> (B, H, W, C)."""
        _, h, w, _ = x.shape
        m = ctx.mixer
        window, shift = effective_window(m.window_size, h, ctx.block_index)
        q, k, v, mask, _ = self.attention_inputs(x, ctx.heads, window, shift, m.rel_pos_bias)
        if self.export_form:  # attention spelled out (see ExportForm); the same result
            attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
            out = (attn if mask is None else attn + mask).softmax(-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.merge_windows(out, h, w, window, shift)


# ------------------------------------------------------------------------------------------------- spec
class WindowAttentionSpec(MixerSpec):
    """Swin's window attention; a window at least the stage's resolution is DeiT's global attention."""

    name = "window_attn"
    abbreviation = "win"
    color = "#1f77b4"
    params = (
        IntParam("window_size", 7, "window side in tokens; >= the stage resolution is global attention"),
        BoolParam("rel_pos_bias", True, "a learned relative position bias, (2w-1)^2 x heads"),
    )
    no_weight_decay = ("rel_pos.table",)

    def label(self, mixer: MixerConfig) -> str:
        return f"win{mixer.window_size}" + ("" if mixer.rel_pos_bias else "-nobias")

    def check(self, mixer: MixerConfig, stage: StageConfig, resolution: int, path: str) -> None:
        check_window(mixer, resolution, path)

    def shifted(self, mixer: MixerConfig, resolution: int, block_index: int) -> bool:
        return mixer.window_size < resolution and block_index % 2 == 1

    def cost_key(self, mixer: MixerConfig, resolution: int) -> dict[str, Any]:
        return {"window_size": min(mixer.window_size, resolution), "rel_pos_bias": mixer.rel_pos_bias}

    def limits(self, options: Sequence[MixerConfig], stage: StageChoices, resolution: int) -> dict[str, Any]:
        return window_limits(options, resolution)

    def build(self, dim: int, heads: int, limits: dict[str, Any], resolution: int) -> nn.Module:
        return WindowAttention(dim, heads, limits["bias_window"], limits["windows"], resolution)
