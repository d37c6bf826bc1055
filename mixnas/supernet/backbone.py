"""The backbone that every mixnas model is: stem, stages of blocks, head.

``MixerNet(space)`` holds, per block, every mixer and FFN the space offers at the largest sizes, and
``forward(x, arch)`` runs one architecture of the space. ``build_model(arch)`` is the same class built
for the space holding only ``arch``: every slice is then the whole tensor, and a supernet's weights for
``arch`` copy straight into it (``Supernet.extract``).

A block is ``x = x + drop_path(mixer(norm1(x))); x = x + drop_path(ffn(norm2(x)))``; each mixer's spec
says how it departs from that (``mixnas.search_space.MixerSpec``): the conv mixers (DWNet) have no norm
before them and a BatchNorm before the FFN; DGE wraps the block. The local FFN (LocalViT) has no norm
before it, its own identity path and no drop-path, as in the official code.
Tokens are channels-last, (B, H, W, C), as in timm's Swin.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import drop_path, trunc_normal_
from torch import Tensor, nn

from mixnas.search_space import ArchConfig, SearchSpace, StageChoices, StageConfig, get_mixer
from mixnas.search_space.arch import stage_resolutions
from mixnas.supernet.elastic import (
    ElasticBatchNorm2d,
    ElasticConv2d,
    ElasticLayerNorm,
    ElasticLinear,
    active_slice,
    batch_norm_nhwc,
)
from mixnas.supernet.ffn import ElasticMlp, LocalFFN
from mixnas.supernet.mixers import BlockParts, DynamicCost, MixerContext, budget_loss


@dataclass(frozen=True)
class StageLimits:
    """The largest sizes a stage's modules must hold, derived from its choices and resolution.

    Args:
        depth, dim, min_dim, heads, hidden: the largest depth, width, smallest width, most heads and
            widest FFN hidden layer of the stage.
        resolution: the stage's map side (tokens).
        mixers: mixer type -> the limits its spec derives from the stage's options of it.
        ffn_types: the FFN types offered.
        se: whether a local FFN with squeeze-excitation is offered.
    """

    depth: int
    dim: int
    min_dim: int
    heads: int
    hidden: int
    resolution: int
    mixers: dict
    ffn_types: frozenset
    se: bool

    @classmethod
    def from_choices(cls, st: StageChoices, resolution: int) -> StageLimits:
        mixers = {m.type: m.spec.limits(m.options(), st, resolution) for m in st.mixers}
        return cls(
            depth=max(st.depths), dim=max(st.dims), min_dim=min(st.dims), heads=max(st.heads),
            hidden=max(int(d * r) for d in st.dims for r in st.mlp_ratios), resolution=resolution,
            mixers=mixers, ffn_types=frozenset(f.type for f in st.ffns), se=any(f.se for f in st.ffns),
        )


class Block(nn.Module):
    """One block holding every mixer and FFN its stage offers; runs the one the stage config names.

    Args:
        limits: the stage's largest sizes and its mixer and FFN types.
        eps: LayerNorm epsilon.
    """

    def __init__(self, limits: StageLimits, eps: float = 1e-5) -> None:
        super().__init__()
        dim, heads = limits.dim, limits.heads
        specs = [get_mixer(t) for t in limits.mixers]
        mlp = "mlp" in limits.ffn_types
        layer_norm_ffn = any(s.ffn_norm == "layer" for s in specs)
        self.norm1 = ElasticLayerNorm(dim, eps=eps) if any(s.pre_norm == "layer" or s.wraps_block for s in specs) \
            else None
        self.norm2 = ElasticLayerNorm(dim, eps=eps) if mlp and layer_norm_ffn else None
        self.norm2_bn = ElasticBatchNorm2d(dim) if mlp and any(s.ffn_norm == "batch" for s in specs) else None
        self.mixers = nn.ModuleDict({
            spec.name: spec.build(dim, heads, limits.mixers[spec.name], limits.resolution) for spec in specs
        })
        ffns: dict[str, nn.Module] = {}
        if mlp:
            ffns["mlp"] = ElasticMlp(dim, limits.hidden)
        if "local" in limits.ffn_types:
            ffns["local"] = LocalFFN(dim, limits.hidden, limits.se, limits.min_dim)
        self.ffns = nn.ModuleDict(ffns)

    def forward(self, x: Tensor, stage: StageConfig, block_index: int, drop_prob: float
                ) -> tuple[Tensor, DynamicCost | None]:
        """x: (B, H, W, C) -> (B, H, W, C), and the block's dynamic cost (None unless its mixer has one)."""
        m = stage.mixer
        spec = m.spec
        mixer = self.mixers[m.type]
        if spec.wraps_block:
            hidden = stage.hidden_dim
            parts = BlockParts(self.norm1, self.norm2, lambda t: self.ffns["mlp"](t, hidden), hidden)
            return mixer(x, MixerContext(m, stage.heads, block_index, drop_prob, parts))
        y = mixer(self.norm1(x) if spec.pre_norm == "layer" else x, MixerContext(m, stage.heads, block_index))
        x = x + drop_path(y, drop_prob, self.training)
        if stage.ffn.type == "local":
            return self.ffns["local"](x, stage.hidden_dim, stage.ffn.se), None
        normed = batch_norm_nhwc(self.norm2_bn, x) if spec.ffn_norm == "batch" else self.norm2(x)
        return x + drop_path(self.ffns["mlp"](normed, stage.hidden_dim), drop_prob, self.training), None


class PatchMerging(nn.Module):
    """Swin's downsampling: 2x2 neighbours concatenated (4C), LayerNorm(4C), Linear(4C -> C_out, no bias).

    Args:
        dim: largest input width C.
        out_dim: largest output width.
        eps: LayerNorm epsilon.
    """

    def __init__(self, dim: int, out_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = ElasticLayerNorm(dim, groups=4, eps=eps)
        self.reduction = ElasticLinear(dim, out_dim, bias=False, in_groups=4)

    def forward(self, x: Tensor, out_dim: int) -> Tensor:
        """(B, H, W, C) -> (B, H/2, W/2, out_dim); neighbours ordered as timm's Swin orders them."""
        b, h, w, c = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x), out_dim)


class Stage(nn.Module):
    """An optional patch merging, then up to ``limits.depth`` blocks.

    Args:
        limits: the stage's largest sizes.
        in_dim: largest width coming in (the previous stage's), or None for the first stage.
        eps: LayerNorm epsilon.
    """

    def __init__(self, limits: StageLimits, in_dim: int | None, eps: float = 1e-5) -> None:
        super().__init__()
        self.downsample = PatchMerging(in_dim, limits.dim, eps) if in_dim is not None else None
        self.blocks = nn.ModuleList(Block(limits, eps) for _ in range(limits.depth))

    def forward(self, x: Tensor, stage: StageConfig, drop_probs: list[float]) -> tuple[Tensor, list[DynamicCost]]:
        if self.downsample is not None:
            x = self.downsample(x, stage.dim)
        costs = []
        for i in range(stage.depth):
            x, cost = self.blocks[i](x, stage, i, drop_probs[i])
            if cost is not None:
                costs.append(cost)
        return x, costs


class MixerNet(nn.Module):
    """Stem, stages, head; runs any architecture of the space it was built for.

    Args:
        space: the architectures this network can run; every module holds its largest size.
        default_arch: the architecture ``forward`` runs when none is given (standalone models).
    """

    def __init__(self, space: SearchSpace, default_arch: ArchConfig | None = None) -> None:
        super().__init__()
        if space.num_classes is None:
            raise ValueError("the space's num_classes is 'auto': resolve it with space.with_num_classes(n) first")
        self.space = space
        self.default_arch = default_arch
        eps = space.layer_norm_eps
        resolutions = stage_resolutions(space.input_size, space.patch_size, space.layout, len(space.stages))
        self.limits = [StageLimits.from_choices(st, r) for st, r in zip(space.stages, resolutions)]
        first = self.limits[0].dim
        self.patch_embed = ElasticConv2d(
            space.in_chans, first, space.patch_size, stride=space.patch_size, same_padding=False
        )
        self.stem_norm = ElasticLayerNorm(first, eps=eps) if space.stem_norm else None
        n_tokens = resolutions[0] ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, first)) if space.pos_embed else None
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        self.stages = nn.ModuleList(
            Stage(lim, self.limits[i - 1].dim if i > 0 and space.layout == "hierarchical" else None, eps)
            for i, lim in enumerate(self.limits)
        )
        self.norm = ElasticLayerNorm(self.limits[-1].dim, eps=eps)
        self.head = ElasticLinear(self.limits[-1].dim, space.num_classes)

    def no_weight_decay(self) -> set[str]:
        """Parameters AdamW must not decay (timm's optimizer factory reads this): the position embedding,
        the relative-position tables and every norm's weight, the grouped LayerNorm's 2-D ones included
        (timm already spares 1-D tensors and biases)."""
        names = set()
        for name, module in self.named_modules():
            prefix = f"{name}." if name else ""
            if isinstance(module, (ElasticLayerNorm, nn.LayerNorm, nn.modules.batchnorm._BatchNorm)):
                names.update(prefix + p for p, _ in module.named_parameters(recurse=False))
            elif hasattr(module, "table") and isinstance(module.table, nn.Parameter):  # RelativePositionBias
                names.add(prefix + "table")
        if self.pos_embed is not None:
            names.add("pos_embed")
        return names

    def drop_path_rates(self, arch: ArchConfig) -> list[list[float]]:
        """Stochastic depth rising linearly from 0 to arch.drop_path_rate over the active blocks."""
        total = arch.depth
        rates = torch.linspace(0, arch.drop_path_rate, total).tolist() if total > 1 else [0.0] * total
        out, start = [], 0
        for s in arch.stages:
            out.append(rates[start:start + s.depth])
            start += s.depth
        return out

    def embed(self, x: Tensor, dim: int) -> Tensor:
        """The stem: (B, C_in, H, W) images -> (B, H/p, W/p, dim) tokens (conv, LayerNorm, position embedding)."""
        x = self.patch_embed(x, out_channels=dim).permute(0, 2, 3, 1)
        if self.stem_norm is not None:
            x = self.stem_norm(x)
        if self.pos_embed is not None:
            b, h, w, c = x.shape
            x = x + active_slice(self.pos_embed, (1, h * w, c)).view(1, h, w, c)
        return x

    def classify(self, tokens: Tensor) -> Tensor:
        """The head: (B, h, w, C) last-stage tokens -> (B, num_classes) logits (LayerNorm, mean, Linear)."""
        return self.head(self.norm(tokens).mean((1, 2)))

    def _features(self, x: Tensor, arch: ArchConfig) -> tuple[Tensor, list[DynamicCost]]:
        x = self.embed(x, arch.stages[0].dim)
        costs: list[DynamicCost] = []
        for stage_module, stage, drop_probs in zip(self.stages, arch.stages, self.drop_path_rates(arch)):
            x, stage_costs = stage_module(x, stage, drop_probs)
            costs.extend(stage_costs)
        return x, costs

    def _arch(self, arch: ArchConfig | None) -> ArchConfig:
        arch = arch or self.default_arch
        if arch is None:
            raise ValueError("no architecture given and this network has no default; pass arch=")
        return arch

    def forward_features(self, x: Tensor, arch: ArchConfig | None = None) -> Tensor:
        """(B, C_in, H, W) images -> (B, h, w, C_last) normed tokens."""
        return self.norm(self._features(x, self._arch(arch))[0])

    def forward_with_costs(self, x: Tensor, arch: ArchConfig | None = None) -> tuple[Tensor, list[DynamicCost]]:
        """(B, C_in, H, W) images -> ((B, num_classes) logits, the dynamic cost of each input-dependent
        block, in network order); the costs feed ``budget_loss`` and the FLOP counts of DGE networks."""
        tokens, costs = self._features(x, self._arch(arch))
        return self.classify(tokens), costs

    def forward(self, x: Tensor, arch: ArchConfig | None = None) -> Tensor:
        """(B, C_in, H, W) images -> (B, num_classes) logits."""
        return self.forward_with_costs(x, arch)[0]


def build_model(arch: ArchConfig) -> MixerNet:
    """The standalone network of one architecture (weights at exactly its sizes)."""
    arch.validate()
    return MixerNet(SearchSpace.from_arch(arch), default_arch=arch)


def dynamic_block_names(arch: ArchConfig) -> list[str]:
    """Module names of the input-dependent blocks, in the order ``forward_with_costs`` returns their costs."""
    return [f"stages.{i}.blocks.{j}" for i, s in enumerate(arch.stages) if s.mixer.spec.input_dependent_cost
            for j in range(s.depth)]


__all__ = ["Block", "MixerNet", "PatchMerging", "Stage", "StageLimits", "budget_loss", "build_model",
           "dynamic_block_names"]
