"""Dynamic Grained Encoder (Song et al., "Dynamic Grained Encoder for Vision Transformers").

DGE wraps a whole block. The map is cut into regions of S x S tokens, S = max(granularities). A router
on the block's raw input (average pool per region -> Linear(C, |set|)) gives each region a granularity g;
the region then contributes g x g queries, each the average of an (S/g) x (S/g) sub-patch. Queries
(normed by norm1 after pooling) attend to dense keys and values from norm1(x) (optionally spatially
reduced as in PVT: a learned r x r conv with stride r, then LayerNorm); the FFN runs on the queries
only; attention and FFN updates get their own drop-path; each query's update is repeated over its
sub-patch and added to x. This follows the official code (vtpack ``layers/dge.py``).

* Training (``dense``): a hard Gumbel-softmax (tau 1) picks g per region; every granularity is computed
  for every region and the one-hot gates select (straight-through gradients reach the router).
* Evaluation (``sparse``): argmax picks g; only the chosen queries are gathered and computed.
* Export (``export_form``, set by ``export_form_of``): argmax picks g as in evaluation, but
  every granularity is computed for every region and selected by the one-hot gates, as in training: the
  shapes no longer depend on the input, so ``torch.export`` and ONNX take it. It computes sum(g^2 for g
  in the set) queries per region (21 for {1, 2, 4}, against 16 at the finest and as few as 1 routed):
  the exported file's cost is that, not the routed FLOPs mixnas reports for the network.
The three give the same output for the same choices. The forward returns the block's output and its
``DynamicCost`` (FLOPs as routed, FLOPs at the finest grain, queries per image), from which
``budget_loss`` trains the router.

``pos_conv`` (on by default) adds a residual 3x3 depth-wise conv and BatchNorm on the block's input before
anything else, CPVT's positional encoding generator. The official DGE sits on DeiT and PVT, which have
absolute position embeddings and learn on ImageNet; on the demo's small, cluttered task an all-DGE
hierarchical network (non-overlapping patches and merges, global attention of pooled queries, an MLP FFN)
stayed at chance, as did an all-window-attention network with MLP FFNs: neither has any overlapping
local operator. With the conv it learns (67.5% in 15 epochs, against chance). The papers' references
(``dge_deit_s``, ``deit_t_dge``) set ``pos_conv: false`` and count as the official code does.

The router's Linear has one row per granularity 1..S_max (row g-1 scores g), so granularity sets share
rows. Its weights start at trunc_normal(std 0.01), its bias at zero, and each call adds a fixed prior
for the call's own set giving its finest granularity probability 0.95 (the official initial bias), so
a subnet using {1, 2} out of a supernet's {1, 2, 4} starts at 0.95 on 2, not at even odds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixnas.errors import ConfigError
from mixnas.search_space import (
    BoolParam,
    FloatParam,
    IntParam,
    MixerConfig,
    MixerSpec,
    SetParam,
    StageChoices,
    StageConfig,
)
from mixnas.supernet.elastic import (
    ElasticBatchNorm2d,
    ElasticConv2d,
    ElasticLayerNorm,
    ElasticLinear,
    trunc_normal_init_,
)
from mixnas.supernet.mixers._api import BlockParts, DynamicCost, ExportForm, MixerContext

FINEST_PROBABILITY = 0.95  # the router starts by sending 95% of regions to the finest granularity
KV_NORM_EPS = 1e-5  # PVT's spatial-reduction LayerNorm is plain nn.LayerNorm in the official code


def router_prior(granularities: Sequence[int], device: torch.device | None = None) -> Tensor:
    """(|set|,) log-probabilities: FINEST_PROBABILITY on the finest granularity, the rest shared evenly."""
    n = len(granularities)
    if n == 1:
        return torch.zeros(1, device=device)
    p = torch.full((n,), (1 - FINEST_PROBABILITY) / (n - 1), device=device)
    p[-1] = FINEST_PROBABILITY
    return p.log()


class DynamicGrainedEncoder(ExportForm, nn.Module):
    """Router, sparse-query attention and the bookkeeping to gather and scatter queries.

    Args:
        dim: largest width C.
        heads: largest number of heads.
        max_granularity: largest granularity over every set this module serves.
        kv_reductions: the spatial reductions r > 1 of keys and values it serves (one conv each).
        pos_conv: build the positional conv (3x3 depth-wise + BatchNorm) for configurations that use it.
    """

    def __init__(self, dim: int, heads: int, max_granularity: int, kv_reductions: Sequence[int] = (),
                 pos_conv: bool = False) -> None:
        super().__init__()
        self.router = ElasticLinear(dim, max_granularity)
        self.q = ElasticLinear(dim, dim, heads=heads, head_split="out")
        self.kv = ElasticLinear(dim, dim, out_groups=2, heads=heads, head_split="out")
        self.proj = ElasticLinear(dim, dim, heads=heads, head_split="in")
        self.kv_reduce = nn.ModuleDict({
            str(r): ElasticConv2d(dim, dim, r, stride=r, same_padding=False) for r in sorted(kv_reductions)
        })
        self.kv_norm = ElasticLayerNorm(dim, eps=KV_NORM_EPS) if kv_reductions else None
        self.pos_conv = ElasticConv2d(dim, dim, 3, depthwise=True) if pos_conv else None
        self.pos_bn = ElasticBatchNorm2d(dim) if pos_conv else None
        with torch.no_grad():
            trunc_normal_init_(self.router.weight, std=0.01)
            assert self.router.bias is not None
            self.router.bias.zero_()

    def route(self, x: Tensor, granularities: Sequence[int]) -> Tensor:
        """x: (B, H, W, C) raw input -> (B, H/S, W/S, n) logits over the set's granularities."""
        b, h, w, c = x.shape
        s = max(granularities)
        pooled = x.view(b, h // s, s, w // s, s, c).mean((2, 4))
        rows = torch.tensor([g - 1 for g in granularities], device=x.device)
        weight, bias = self.router.active_weight(c, max(granularities))
        assert bias is not None
        logits = F.linear(pooled, weight.index_select(0, rows), bias.index_select(0, rows))
        return logits + router_prior(granularities, x.device).to(logits.dtype)

    def keys_values(self, x: Tensor, parts: BlockParts, heads: int, kv_reduction: int) -> tuple[Tensor, Tensor]:
        """Dense keys and values from norm1(x): each (B, heads, N_kv, head_dim)."""
        b, h, w, c = x.shape
        kv = parts.norm1(x)
        if kv_reduction > 1:
            conv = self.kv_reduce[str(kv_reduction)]
            kv = conv(kv.permute(0, 3, 1, 2), out_channels=c).permute(0, 2, 3, 1)
            assert self.kv_norm is not None
            kv = self.kv_norm(kv)
        kv = self.kv(kv.reshape(b, -1, c), c, heads=heads)
        kv = kv.view(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        return kv[0], kv[1]

    def attend(self, tokens: Tensor, k: Tensor, v: Tensor, parts: BlockParts, heads: int) -> Tensor:
        """tokens: (B, L, C) pooled queries -> (B, L, C) attention update (before drop-path)."""
        b, n, c = tokens.shape
        q = self.q(parts.norm1(tokens), c, heads=heads).view(b, n, heads, c // heads).transpose(1, 2)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        return self.proj(attn, c, heads=heads)

    def query_update(self, tokens: Tensor, k: Tensor, v: Tensor, parts: BlockParts, heads: int,
                     drop_masks: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """tokens: (B, L, C) pooled queries -> (B, L, C) their update from attention and the FFN.

        Each query is on its own: it attends to the keys and values, not to the other queries, and the FFN
        and norms are per token. ``drop_masks``: the (B, L, 1) keep masks of attention's and the FFN's
        drop-path (``drop_masks``), already divided by the keep probability."""
        attn_keep, ffn_keep = drop_masks if drop_masks is not None else (None, None)
        attn = self.attend(tokens, k, v, parts, heads)
        y = tokens + (attn if attn_keep is None else attn * attn_keep)
        ffn = parts.ffn(parts.norm2(y))
        y = y + (ffn if ffn_keep is None else ffn * ffn_keep)
        return y - tokens

    def drop_masks(self, like: Tensor, lengths: Sequence[int], prob: float) -> tuple[Tensor, Tensor] | None:
        """DGE's drop-path as the official code (``deit_dge.py``, ``pvt_dge.py``) applies it: per query token.

        Keep masks (B, sum(lengths), 1) for attention's and the FFN's updates of queries in groups of
        ``lengths`` (one per granularity): each query's update is dropped on its own with probability
        ``prob``, the kept ones scaled by 1 / (1 - prob) (timm's drop-path would drop a whole image's
        updates). None when nothing is dropped (``prob`` 0 or evaluation). Drawn group by group, attention's
        mask before the FFN's, as with one call of the pair per granularity."""
        if prob == 0.0 or not self.training:
            return None
        keep = 1.0 - prob
        b = like.shape[0]
        attn, ffn = [], []
        for n in lengths:
            attn.append(like.new_empty(b, n, 1).bernoulli_(keep))
            ffn.append(like.new_empty(b, n, 1).bernoulli_(keep))
        return torch.cat(attn, 1) / keep, torch.cat(ffn, 1) / keep

    @staticmethod
    def pool_queries(x: Tensor, region: int, g: int) -> Tensor:
        """(B, H, W, C) -> (B, H*g/S, W*g/S, C): the average of each (S/g) x (S/g) sub-patch."""
        p = region // g
        if p == 1:
            return x
        b, h, w, c = x.shape
        return x.view(b, h // p, p, w // p, p, c).mean((2, 4))

    @staticmethod
    def static_cost(n_kv: int, dim: int, hidden: int, kv_reduction: int, n_tokens: int,
                    pos_conv: bool = False) -> tuple[float, float]:
        """(per-query FLOPs, per-image fixed FLOPs) of the block: q, proj, attention and FFN per query;
        keys and values (their spatial reduction, the positional conv) per image."""
        per_query = 2 * dim * dim + 2 * n_kv * dim + 2 * dim * hidden
        fixed = 2 * n_kv * dim * dim + (n_kv * dim * dim * kv_reduction**2 if kv_reduction > 1 else 0)
        fixed += 9 * n_tokens * dim if pos_conv else 0
        return float(per_query), float(fixed)

    def positional(self, x: Tensor) -> Tensor:
        """x + BN(3x3 depth-wise conv(x)), x (B, H, W, C)."""
        if self.pos_conv is None or self.pos_bn is None:
            raise ValueError("this DynamicGrainedEncoder was built without pos_conv")
        return x + self.pos_bn(self.pos_conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)

    def forward(self, x: Tensor, ctx: MixerContext, choice: Tensor | None = None) -> tuple[Tensor, DynamicCost]:
        """x: (B, H, W, C) raw block input -> (the block's output (B, H, W, C), its DynamicCost).

        ``choice`` (B, H/S, W/S) of set indices overrides the router (tests and benchmarks force it).
        """
        if ctx.parts is None:
            raise ValueError("DGE wraps its block: call it with MixerContext(parts=BlockParts(...))")
        m, heads, parts = ctx.mixer, ctx.heads, ctx.parts
        if m.pos_conv:
            x = self.positional(x)
        b, h, w, c = x.shape
        gs = list(m.granularities)
        logits = self.route(x, gs)
        if choice is not None:
            gates = F.one_hot(choice, len(gs)).to(x.dtype)
        elif self.training:
            gates = F.gumbel_softmax(logits, tau=1.0, hard=True)
        else:
            gates = F.one_hot(logits.argmax(-1), len(gs)).to(x.dtype)
        k, v = self.keys_values(x, parts, heads, m.kv_reduction)
        hidden = parts.hidden
        per_query, fixed = self.static_cost(k.shape[2], c, hidden, m.kv_reduction, h * w, m.pos_conv)
        counts = torch.tensor([g * g for g in gs], dtype=x.dtype, device=x.device)
        queries = (gates * counts).sum((1, 2, 3))  # (B,)
        if self.training or self.export_form:
            update, computed = self.dense(x, k, v, gates, parts, heads, gs, ctx.drop_prob)
        else:
            update, computed = self.sparse(x, k, v, gates.argmax(-1), parts, heads, gs)
        cost = DynamicCost(
            dynamic=queries * per_query + fixed, static=h * w * per_query + fixed, queries=queries.detach(),
            computed=computed, target=float(m.gamma),
        )
        return x + update, cost

    def dense(
        self, x: Tensor, k: Tensor, v: Tensor, gates: Tensor, parts: BlockParts, heads: int, gs: list[int],
        drop_prob: float,
    ) -> tuple[Tensor, int]:
        """Every granularity for every region, combined by the one-hot gates (B, H/S, W/S, n).

        The queries of every granularity go through attention and the FFN as one sequence (B, sum L_g, C):
        one call of each instead of one per granularity, the same outputs (each query is on its own)."""
        b, h, w, c = x.shape
        s = max(gs)
        pooled = [self.pool_queries(x, s, g) for g in gs]
        lengths = [t.shape[1] * t.shape[2] for t in pooled]
        tokens = torch.cat([t.reshape(b, -1, c) for t in pooled], 1)
        deltas = self.query_update(tokens, k, v, parts, heads, self.drop_masks(tokens, lengths, drop_prob))
        computed = deltas.shape[0] * deltas.shape[1]
        update = x.new_zeros(b, h, w, c)
        for j, (g, t, delta) in enumerate(zip(gs, pooled, deltas.split(lengths, 1))):
            p = s // g
            hq, wq = t.shape[1], t.shape[2]
            delta = delta.reshape(b, hq, 1, wq, 1, c).expand(b, hq, p, wq, p, c).reshape(b, h, w, c)
            gate = gates[..., j].repeat_interleave(s, 1).repeat_interleave(s, 2)[..., None]
            update = update + gate * delta
        return update, computed

    def sparse(
        self, x: Tensor, k: Tensor, v: Tensor, choice: Tensor, parts: BlockParts, heads: int, gs: list[int],
    ) -> tuple[Tensor, int]:
        """Only the chosen queries: gathered per image into a padded batch, computed, scattered back."""
        b, h, w, c = x.shape
        s = max(gs)
        hr, wr = h // s, w // s
        picked, owners, shapes = [], [], []
        for j, g in enumerate(gs):
            sel = choice == j  # (B, Hr, Wr)
            n_sel = int(sel.sum())
            shapes.append(n_sel)
            if n_sel == 0:
                continue
            tokens = self.pool_queries(x, s, g).view(b, hr, g, wr, g, c).permute(0, 1, 3, 2, 4, 5)
            picked.append(tokens[sel].reshape(-1, c))  # (n_sel * g * g, C)
            owners.append(sel.nonzero()[:, 0].repeat_interleave(g * g))
        tokens = torch.cat(picked)
        owner = torch.cat(owners)
        # Pack each image's queries into a padded (B, L, C) batch: the attention needs the image's keys.
        order = torch.argsort(owner, stable=True)
        # Counted with index_add_ rather than bincount, which fvcore has no handle for (a free op either way).
        counts = torch.zeros(b, dtype=owner.dtype, device=x.device).index_add_(0, owner, torch.ones_like(owner))
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(tokens.shape[0], device=x.device) - starts[owner[order]]
        padded = tokens.new_zeros(b, int(counts.max()), c)
        padded[owner[order], slot] = tokens[order]
        attn = self.attend(padded, k, v, parts, heads)
        y = tokens.clone()
        y[order] = tokens[order] + attn[owner[order], slot]
        y = y + parts.ffn(parts.norm2(y))
        delta = y - tokens
        # Scatter: each query's update covers its (S/g) x (S/g) sub-patch of its region.
        update = x.new_zeros(b, hr, wr, s, s, c)
        start = 0
        for j, g in enumerate(gs):
            n_sel = shapes[j]
            if n_sel == 0:
                continue
            p = s // g
            d = delta[start:start + n_sel * g * g].view(n_sel, g, 1, g, 1, c)
            update[choice == j] = d.expand(n_sel, g, p, g, p, c).reshape(n_sel, s, s, c)
            start += n_sel * g * g
        return update.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c), tokens.shape[0]


def _check_granularities(gs: tuple[int, ...], field: str) -> None:
    region = gs[-1]
    bad = [g for g in gs if region % g]
    if bad:
        raise ConfigError(
            f"{field}: granularity {bad[0]} does not divide the region size {region} "
            f"(the largest granularity); each must divide it, e.g. [1, 2, 4]"
        )


class DGESpec(MixerSpec):
    """The Dynamic Grained Encoder: a router gives each region a granularity; wraps the whole block."""

    name = "dge"
    abbreviation = "dge"
    color = "#ff7f0e"
    params = (
        SetParam("granularities", (1, 2, 4), "queries per region side; a region is max(set) tokens on a side",
                 key=lambda s: (max(s), len(s)), check=_check_granularities),
        FloatParam("gamma", 0.5, "the budget loss's target ratio of dynamic to static FLOPs", low=0.0, high=1.0,
                   low_open=True, affects_cost=False),
        IntParam("kv_reduction", 1, "PVT-style spatial reduction r of keys and values (r x r conv, stride r)",
                 cost="smaller"),
        BoolParam("pos_conv", True, "a residual 3x3 depth-wise conv + BatchNorm first (CPVT's positional "
                                    "encoding generator; not in the official DGE)"),
    )
    wraps_block = True
    ffn_types = ("mlp",)
    input_dependent_cost = True

    def label(self, mixer: MixerConfig) -> str:
        r = f"-r{mixer.kv_reduction}" if mixer.kv_reduction > 1 else ""
        return "dge" + "".join(str(g) for g in mixer.granularities) + r + ("" if mixer.pos_conv else "-nopc")

    def check(self, mixer: MixerConfig, stage: StageConfig, resolution: int, path: str) -> None:
        s = max(mixer.granularities)
        if resolution % s:
            raise ConfigError(
                f"{path}.granularities: region size {s} does not divide the stage resolution "
                f"{resolution}x{resolution}; use a set whose largest value divides {resolution}"
            )
        if resolution % mixer.kv_reduction:
            raise ConfigError(f"{path}.kv_reduction: {mixer.kv_reduction} does not divide the stage resolution "
                              f"{resolution}")

    def limits(self, options: Sequence[MixerConfig], stage: StageChoices, resolution: int) -> dict[str, Any]:
        return {
            "max_granularity": max(g for o in options for g in o.granularities),
            "kv_reductions": sorted({o.kv_reduction for o in options if o.kv_reduction > 1}),
            "pos_conv": any(o.pos_conv for o in options),
        }

    def build(self, dim: int, heads: int, limits: dict[str, Any], resolution: int) -> nn.Module:
        return DynamicGrainedEncoder(dim, heads, limits["max_granularity"], limits["kv_reductions"],
                                     limits["pos_conv"])


__all__ = ["DGESpec", "DynamicGrainedEncoder", "FINEST_PROBABILITY", "router_prior"]
