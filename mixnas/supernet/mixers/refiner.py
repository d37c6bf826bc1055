"""Refiner attention: window (or global) attention whose post-softmax maps are refined before weighting V.

Refinement (Zhou et al., "Refiner: Refining Self-attention for Vision Transformers"), per block as in
the paper: the maps A (B, H, N, N) are treated as an H-channel image of size N x N; attention expansion,
a 1x1 conv H -> e*H over heads; distributed local attention, a depth-wise k x k conv (no bias, as in the
released code) over each expanded map; then a 1x1 conv e*H -> H back to the heads. The released code's
extras (BatchNorm and ReLU6 between the convs, a residual, refining every second block) are not used.

With shifted windows, a window holds tokens of up to four regions of the map that the cyclic roll brought
together from opposite borders, and Swin's mask keeps each region's attention to itself. Refinement keeps
that: the depth-wise conv over the maps reads, for the entry of a query and a key of one region, only
entries whose query and key are both of that region (``region_gates``; the other taps count as zero, as
the padding does), and the maps are multiplied by the mask's allowed pairs before refining; refinement
keeps those zeros (no biases), so the other pairs weigh exactly zero. A token's output so depends on no
token of another region, as in Swin (a test). Without a shift the conv is the plain one. The gated conv is
k*k multiply-adds per entry, as the conv's. The three convs run on channels-last maps, on a CPU several
times faster for maps of a few channels (``docs/benchmarks/refiner_layout.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixnas.search_space import IntParam, MixerConfig, StageChoices, StageConfig
from mixnas.supernet.elastic import ElasticConv2d, active_slice
from mixnas.supernet.mixers._api import MixerContext
from mixnas.supernet.mixers.window_attn import (
    WindowAttention,
    WindowAttentionSpec,
    check_window,
    effective_window,
    shift_regions,
    window_limits,
)


def region_gates(h: int, w: int, window: int, shift: int, k: int, device: torch.device | None = None) -> Tensor:
    """(nW, k*k, N, N) 1 where a k x k tap over a window's (N x N) attention map reads an entry of the same
    region pair as the entry it refines (query and key of one region), 0 elsewhere (and off the map)."""
    regions = shift_regions(h, w, window, shift).to(device)  # (nW, N)
    same = torch.logical_not(torch.ne(regions[:, :, None], regions[:, None, :]))
    labels = torch.where(same, regions[:, :, None], torch.full_like(regions[:, :, None], -1.0))  # (nW, N, N)
    p = k // 2
    padded = F.pad(labels, (p, p, p, p), value=-2.0)
    n = labels.shape[-1]
    taps = [padded[:, dy:dy + n, dx:dx + n] for dy in range(k) for dx in range(k)]
    return torch.logical_not(torch.ne(torch.stack(taps, 1), labels[:, None])).float()


class RefinerAttention(nn.Module):
    """Multi-head attention with attention expansion and distributed local attention.

    Args:
        dim: largest channel width C.
        heads: largest number of heads H.
        bias_window: largest effective window needing a relative position bias; 0 for none.
        expansion_ratio: largest e (expanded maps: e*H).
        kernel_size: largest side of the depth-wise conv over the maps.
        windows: effective windows the module will run (buffers built once).
        resolution: the stage's map side, for the shift masks.
    """

    def __init__(
        self, dim: int, heads: int, bias_window: int, expansion_ratio: int, kernel_size: int,
        windows: Sequence[int] = (), resolution: int | None = None,
    ) -> None:
        super().__init__()
        self.attn = WindowAttention(dim, heads, bias_window, windows, resolution)
        self.expand = ElasticConv2d(heads, expansion_ratio * heads, 1, bias=False)
        self.local = ElasticConv2d(expansion_ratio * heads, expansion_ratio * heads, kernel_size, depthwise=True,
                                   bias=False)
        self.reduce = ElasticConv2d(expansion_ratio * heads, heads, 1, bias=False)

    def refine(self, attn: Tensor, heads: int, expansion_ratio: int, kernel_size: int,
               gates: Tensor | None = None) -> Tensor:
        """(M, H, N, N) softmax maps -> (M, H, N, N) refined maps; ``gates`` (nW, k*k, N, N) restrict the
        depth-wise conv to entries of the same region pair (M = B * nW).

        The maps go through the three convs in channels-last memory (the same values; on a CPU, maps of few
        channels run 2-14x faster so than in the default layout, docs/benchmarks/refiner_layout.md)."""
        a = attn.contiguous(memory_format=torch.channels_last)
        a = self.expand(a, out_channels=expansion_ratio * heads)
        a = self.local(a, kernel_size=kernel_size) if gates is None else self.gated_local(a, gates, kernel_size)
        return self.reduce(a, out_channels=heads)

    def gated_local(self, a: Tensor, gates: Tensor, k: int) -> Tensor:
        """The depth-wise k x k conv over (M, C, N, N) maps, each tap of each entry multiplied by its gate;
        the result is in channels-last memory."""
        m, c, n, _ = a.shape
        nw = gates.shape[0]
        weight = active_slice(self.local.weight, (c, 1, k, k), centred=(2, 3)).reshape(c, k * k)
        p = k // 2
        padded = F.pad(a.permute(0, 2, 3, 1), (0, 0, p, p, p, p)).view(m // nw, nw, n + 2 * p, n + 2 * p, c)
        out = a.new_zeros(m // nw, nw, n, n, c)
        gates = gates.to(a.dtype)
        for t in range(k * k):
            dy, dx = divmod(t, k)
            tap = weight[:, t].view(1, 1, 1, 1, c) * gates[:, t].view(1, nw, n, n, 1)
            # One fused multiply-add per entry and tap (the profiler counts addcmul so, as the conv).
            out = torch.addcmul(out, padded[:, :, dy:dy + n, dx:dx + n], tap)
        return out.view(m, n, n, c).permute(0, 3, 1, 2)

    def forward(self, x: Tensor, ctx: MixerContext) -> Tensor:
        """x: (B, H, W, C), already normalised -> (B, H, W, C)."""
        b, h, w, c = x.shape
        m, heads = ctx.mixer, ctx.heads
        window, shift = effective_window(m.window_size, h, ctx.block_index)
        q, k, v, mask, shift_mask = self.attn.attention_inputs(x, heads, window, shift, m.rel_pos_bias)
        scores = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)  # (B, nW, heads, N, N)
        if mask is not None:
            scores = scores + mask
        nw, n = scores.shape[1], scores.shape[3]
        maps = scores.softmax(dim=-1)
        gates = None
        if shift_mask is not None:
            # Exactly zero across the roll's seams (shift_mask: (1, nW, 1, N, N)) before refining, whatever the
            # mask's value (with Swin's -100 the entries would be denormal floats, several times slower to
            # refine on a CPU). The refinement keeps a zero zero (no biases; the gated conv reads only entries
            # of an entry's own region pair), so the refined maps are exactly zero there too.
            maps = maps * (shift_mask == 0).to(maps.dtype)
            if m.kernel_size > 1:
                gates = region_gates(h, w, window, shift, m.kernel_size, x.device)
        maps = self.refine(maps.reshape(b * nw, heads, n, n), heads, m.expansion_ratio, m.kernel_size, gates)
        out = torch.matmul(maps.reshape(b, nw, heads, n, n), v)  # (B, nW, heads, N, head_dim)
        return self.attn.merge_windows(out, h, w, window, shift)


class RefinerSpec(WindowAttentionSpec):
    """Refiner attention; windowed as window_attn, global when the window covers the map."""

    name = "refiner"
    abbreviation = "ref"
    color = "#9467bd"
    params = (
        IntParam("window_size", 7, "window side in tokens; >= the stage resolution is global attention"),
        IntParam("expansion_ratio", 3, "attention expansion e: heads H -> e*H maps"),
        IntParam("kernel_size", 3, "side of the depth-wise conv over the expanded maps", odd=True),
        WindowAttentionSpec.params[1],  # rel_pos_bias
    )
    no_weight_decay = ("attn.rel_pos.table",)

    def label(self, mixer: MixerConfig) -> str:
        return f"ref-w{mixer.window_size}e{mixer.expansion_ratio}k{mixer.kernel_size}"

    def check(self, mixer: MixerConfig, stage: StageConfig, resolution: int, path: str) -> None:
        check_window(mixer, resolution, path)

    def cost_key(self, mixer: MixerConfig, resolution: int) -> dict[str, Any]:
        return {"window_size": min(mixer.window_size, resolution), "expansion_ratio": mixer.expansion_ratio,
                "kernel_size": mixer.kernel_size, "rel_pos_bias": mixer.rel_pos_bias}

    def limits(self, options: Sequence[MixerConfig], stage: StageChoices, resolution: int) -> dict[str, Any]:
        return {
            **window_limits(options, resolution),
            "expansion_ratio": max(o.expansion_ratio for o in options),
            "kernel_size": max(o.kernel_size for o in options),
        }

    def build(self, dim: int, heads: int, limits: dict[str, Any], resolution: int) -> nn.Module:
        return RefinerAttention(dim, heads, limits["bias_window"], limits["expansion_ratio"], limits["kernel_size"],
                                limits["windows"], resolution)
