"""Dynamic Grained Encoder (Song et al., "Dynamic Grained Encoder for Vision Transformers").

DGE wraps a whole block. The map is cut into regions of S x S tokens, S = max(granularities). A router
on the block's raw input (average pool per region -> Linear(C, S)) gives each region a granularity g;
the region then contributes g x g queries, each the average of an (S/g) x (S/g) sub-patch. Queries
attend to dense keys and values from norm1(x) (optionally r x r average-pooled and normed, PVT-style);
the FFN runs on the queries only; each query's update is repeated over its sub-patch and added to x.

* Training (``dense``): a hard Gumbel-softmax (tau 1) picks g per region; every granularity is computed
  for every region and the one-hot gates select (straight-through gradients reach the router).
* Evaluation (``sparse``): argmax picks g; only the chosen queries are gathered and computed.
The two give the same output for the same choices. The budget loss (dynamic/static FLOPs - gamma)^2
trains the router; ``flops_ratio`` is kept from the last forward for it.

The router's Linear has one row per granularity 1..S (row g-1 scores g), so that granularity sets
share rows; rows for values outside the active set are unused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from timm.layers import drop_path
from torch import Tensor, nn

from mixnas.supernet.elastic import ElasticLayerNorm, ElasticLinear

if TYPE_CHECKING:
    from mixnas.supernet.backbone import Block

FINEST_PROBABILITY = 0.95  # the router starts by sending 95% of regions to the finest granularity


class DynamicGrainedEncoder(nn.Module):
    """Router, sparse-query attention and the bookkeeping to gather and scatter queries.

    Args:
        dim: largest width C.
        heads: largest number of heads.
        max_granularity: largest granularity over every set this module serves.
        granularities: the union of the sets it serves (for the router's initial bias).
        kv_norm: build the LayerNorm applied to spatially reduced keys and values.
    """

    def __init__(
        self, dim: int, heads: int, max_granularity: int, granularities: Sequence[int], kv_norm: bool = False
    ) -> None:
        super().__init__()
        self.router = ElasticLinear(dim, max_granularity)
        self.q = ElasticLinear(dim, dim)
        self.kv = ElasticLinear(dim, dim, out_groups=2)
        self.proj = ElasticLinear(dim, dim)
        self.kv_norm = ElasticLayerNorm(dim) if kv_norm else None
        self.flops_ratio: Tensor | None = None  # (B,) dynamic / static FLOPs of the last forward
        self.num_queries: int = 0  # queries computed by the last forward (all granularities when dense)
        self.queries_per_image: Tensor | None = None  # (B,) queries per image of the last sparse forward
        self.init_router(granularities)

    @torch.no_grad()
    def init_router(self, granularities: Sequence[int]) -> None:
        """Zero weights and a bias giving the finest granularity probability 0.95."""
        gs = sorted(granularities)
        self.router.weight.zero_()
        assert self.router.bias is not None
        self.router.bias.zero_()
        if len(gs) > 1:
            for g in gs:
                p = FINEST_PROBABILITY if g == gs[-1] else (1 - FINEST_PROBABILITY) / (len(gs) - 1)
                self.router.bias[g - 1] = math.log(p)

    def route(self, x: Tensor, granularities: Sequence[int]) -> Tensor:
        """x: (B, H, W, C) raw input -> (B, H/S, W/S, n) logits over the set's granularities."""
        b, h, w, c = x.shape
        s = max(granularities)
        pooled = x.view(b, h // s, s, w // s, s, c).mean((2, 4))
        rows = torch.tensor([g - 1 for g in granularities], device=x.device)
        weight, bias = self.router.active_weight(c, max(granularities))
        assert bias is not None
        return F.linear(pooled, weight.index_select(0, rows), bias.index_select(0, rows))

    def keys_values(self, x: Tensor, block: Block, heads: int, kv_reduction: int) -> tuple[Tensor, Tensor]:
        """Dense keys and values from norm1(x): each (B, heads, N_kv, head_dim)."""
        b, h, w, c = x.shape
        kv = block.norm1(x)
        if kv_reduction > 1:
            kv = F.avg_pool2d(kv.permute(0, 3, 1, 2), kv_reduction).permute(0, 2, 3, 1)
            assert self.kv_norm is not None, "built without kv_norm"
            kv = self.kv_norm(kv)
        kv = self.kv(kv.reshape(b, -1, c), c).view(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        return kv[0], kv[1]

    def query_update(self, tokens: Tensor, k: Tensor, v: Tensor, block: Block, heads: int, hidden: int) -> Tensor:
        """tokens: (B, L, C) pooled queries -> (B, L, C) their update from attention and the FFN."""
        b, n, c = tokens.shape
        q = self.q(block.norm1(tokens), c).view(b, n, heads, c // heads).transpose(1, 2)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        y = tokens + self.proj(attn, c)
        y = y + block.ffns["mlp"](block.norm2(y), hidden)
        return y - tokens

    @staticmethod
    def pool_queries(x: Tensor, region: int, g: int) -> Tensor:
        """(B, H, W, C) -> (B, H*g/S, W*g/S, C): the average of each (S/g) x (S/g) sub-patch."""
        p = region // g
        if p == 1:
            return x
        b, h, w, c = x.shape
        return x.view(b, h // p, p, w // p, p, c).mean((2, 4))

    def static_cost(self, n_tokens: int, n_kv: int, dim: int, hidden: int) -> tuple[float, float]:
        """(per-query MACs, per-image fixed MACs) of the block, for the budget loss."""
        per_query = 2 * dim * dim + 2 * n_kv * dim + 2 * dim * hidden
        return float(per_query), float(2 * n_kv * dim * dim)

    def forward(
        self, x: Tensor, block: Block, heads: int, hidden: int, granularities: Sequence[int],
        kv_reduction: int = 1, drop_prob: float = 0.0, choice: Tensor | None = None,
    ) -> Tensor:
        """x: (B, H, W, C) -> (B, H, W, C). ``choice`` (B, H/S, W/S) of set indices overrides the router."""
        b, h, w, c = x.shape
        gs = list(granularities)
        logits = self.route(x, gs)
        if choice is not None:
            gates = F.one_hot(choice, len(gs)).to(x.dtype)
        elif self.training:
            gates = F.gumbel_softmax(logits, tau=1.0, hard=True)
        else:
            gates = F.one_hot(logits.argmax(-1), len(gs)).to(x.dtype)
        k, v = self.keys_values(x, block, heads, kv_reduction)
        per_query, fixed = self.static_cost(h * w, k.shape[2], c, hidden)
        queries = torch.tensor([g * g for g in gs], dtype=x.dtype, device=x.device)
        dynamic = (gates * queries).sum((1, 2, 3)) * per_query + fixed
        self.flops_ratio = dynamic / (h * w * per_query + fixed)
        if self.training:
            update = self.dense(x, k, v, gates, block, heads, hidden, gs)
        else:
            update = self.sparse(x, k, v, gates.argmax(-1), block, heads, hidden, gs)
        return x + drop_path(update, drop_prob, self.training)

    def dense(
        self, x: Tensor, k: Tensor, v: Tensor, gates: Tensor, block: Block, heads: int, hidden: int,
        gs: list[int],
    ) -> Tensor:
        """Every granularity for every region, combined by the one-hot gates (B, H/S, W/S, n)."""
        b, h, w, c = x.shape
        s = max(gs)
        update = x.new_zeros(b, h, w, c)
        self.num_queries = 0
        for j, g in enumerate(gs):
            p = s // g
            tokens = self.pool_queries(x, s, g)
            hq, wq = tokens.shape[1], tokens.shape[2]
            delta = self.query_update(tokens.reshape(b, -1, c), k, v, block, heads, hidden)
            self.num_queries += delta.shape[0] * delta.shape[1]
            delta = delta.view(b, hq, 1, wq, 1, c).expand(b, hq, p, wq, p, c).reshape(b, h, w, c)
            gate = gates[..., j].repeat_interleave(s, 1).repeat_interleave(s, 2)[..., None]
            update = update + gate * delta
        return update

    def sparse(
        self, x: Tensor, k: Tensor, v: Tensor, choice: Tensor, block: Block, heads: int, hidden: int,
        gs: list[int],
    ) -> Tensor:
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
        self.num_queries = tokens.shape[0]
        # Pack each image's queries into a padded (B, L, C) batch: the attention needs the image's keys.
        order = torch.argsort(owner, stable=True)
        # Counted with index_add_ rather than bincount, which fvcore has no handle for (a free op either way).
        counts = torch.zeros(b, dtype=owner.dtype, device=x.device).index_add_(0, owner, torch.ones_like(owner))
        self.queries_per_image = counts.detach()
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(tokens.shape[0], device=x.device) - starts[owner[order]]
        padded = tokens.new_zeros(b, int(counts.max()), c)
        padded[owner[order], slot] = tokens[order]
        q = self.q(block.norm1(padded), c).view(b, -1, heads, c // heads).transpose(1, 2)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, c)
        y = tokens.clone()
        y[order] = tokens[order] + self.proj(attn[owner[order], slot], c)
        y = y + block.ffns["mlp"](block.norm2(y), hidden)
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
        return update.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
