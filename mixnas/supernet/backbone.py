"""The backbone that every mixnas model is: stem, stages of blocks, head.

``MixerNet(space)`` holds, per block, every mixer and FFN the space offers at the largest sizes, and
``forward(x, arch)`` runs one architecture of the space. ``build_model(arch)`` is the same class built
for the space holding only ``arch``: every slice is then the whole tensor, and a supernet's weights for
``arch`` copy straight into it (``Supernet.extract``).

A block is ``x = x + drop_path(mixer(norm1(x))); x = x + drop_path(ffn(norm2(x)))`` with three
exceptions from the papers: the conv mixers (DWNet) have no norm before them and a BatchNorm before the
FFN; the local FFN (LocalViT) has no norm before it and its own identity path; DGE wraps the block.
Tokens are channels-last, (B, H, W, C), as in timm's Swin.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import drop_path, trunc_normal_
from torch import Tensor, nn

from mixnas.search_space import ArchConfig, SearchSpace, StageChoices, StageConfig
from mixnas.search_space.arch import CONV_MIXERS, stage_resolutions
from mixnas.supernet.dge import DynamicGrainedEncoder
from mixnas.supernet.dwconv import DWConvMixer
from mixnas.supernet.dyn_dwconv import DynamicDWConvMixer
from mixnas.supernet.elastic import (
    ElasticBatchNorm2d,
    ElasticConv2d,
    ElasticLayerNorm,
    ElasticLinear,
    active_slice,
    batch_norm_nhwc,
)
from mixnas.supernet.ffn import ElasticMlp, LocalFFN
from mixnas.supernet.refiner import RefinerAttention
from mixnas.supernet.window_attn import WindowAttention


@dataclass(frozen=True)
class StageLimits:
    """The largest sizes a stage's modules must hold, derived from its choices and resolution."""

    depth: int
    dim: int
    min_dim: int
    heads: int
    hidden: int
    mixers: dict
    ffn_types: frozenset
    se: bool

    @classmethod
    def from_choices(cls, st: StageChoices, resolution: int) -> StageLimits:
        mixers: dict[str, dict] = {}
        for m in st.mixers:
            opts = m.options()
            if m.type in ("window_attn", "refiner"):
                bias_windows = [min(o.window_size, resolution) for o in opts if o.rel_pos_bias]
                limits = {"bias_window": max(bias_windows, default=0)}
                if m.type == "refiner":
                    limits.update(
                        expansion_ratio=max(o.expansion_ratio for o in opts),
                        kernel_size=max(o.kernel_size for o in opts),
                    )
            elif m.type == "dwconv":
                limits = {"kernel_size": max(o.kernel_size for o in opts)}
            elif m.type == "dyn_dwconv":
                limits = {
                    "kernel_size": max(o.kernel_size for o in opts),
                    "homogeneous": any(not o.inhomogeneous for o in opts),
                    "inhomogeneous": any(o.inhomogeneous for o in opts),
                }
            else:  # dge
                union = sorted({g for o in opts for g in o.granularities})
                limits = {
                    "max_granularity": max(union), "granularities": union,
                    "kv_norm": any(o.kv_reduction > 1 for o in opts),
                }
            mixers[m.type] = limits
        return cls(
            depth=max(st.depths), dim=max(st.dims), min_dim=min(st.dims), heads=max(st.heads),
            hidden=max(int(d * r) for d in st.dims for r in st.mlp_ratios),
            mixers=mixers, ffn_types=frozenset(f.type for f in st.ffns), se=any(f.se for f in st.ffns),
        )


class Block(nn.Module):
    """One block holding every mixer and FFN its stage offers; runs the one the stage config names.

    Args:
        limits: the stage's largest sizes and its mixer and FFN types.
    """

    def __init__(self, limits: StageLimits) -> None:
        super().__init__()
        dim, heads = limits.dim, limits.heads
        types = set(limits.mixers)
        normed = types - set(CONV_MIXERS)
        self.norm1 = ElasticLayerNorm(dim) if normed else None
        self.norm2 = ElasticLayerNorm(dim) if normed and "mlp" in limits.ffn_types else None
        conv = types & set(CONV_MIXERS)
        self.norm2_bn = ElasticBatchNorm2d(dim) if conv and "mlp" in limits.ffn_types else None
        mixers: dict[str, nn.Module] = {}
        for mtype, lim in limits.mixers.items():
            if mtype == "window_attn":
                mixers[mtype] = WindowAttention(dim, heads, lim["bias_window"])
            elif mtype == "refiner":
                mixers[mtype] = RefinerAttention(
                    dim, heads, lim["bias_window"], lim["expansion_ratio"], lim["kernel_size"]
                )
            elif mtype == "dwconv":
                mixers[mtype] = DWConvMixer(dim, lim["kernel_size"])
            elif mtype == "dyn_dwconv":
                mixers[mtype] = DynamicDWConvMixer(
                    dim, lim["kernel_size"], lim["homogeneous"], lim["inhomogeneous"], heads
                )
            else:
                mixers[mtype] = DynamicGrainedEncoder(
                    dim, heads, lim["max_granularity"], lim["granularities"], lim["kv_norm"]
                )
        self.mixers = nn.ModuleDict(mixers)
        ffns: dict[str, nn.Module] = {}
        if "mlp" in limits.ffn_types:
            ffns["mlp"] = ElasticMlp(dim, limits.hidden)
        if "local" in limits.ffn_types:
            ffns["local"] = LocalFFN(dim, limits.hidden, limits.se, limits.min_dim)
        self.ffns = nn.ModuleDict(ffns)

    def forward(self, x: Tensor, stage: StageConfig, block_index: int, drop_prob: float) -> Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        m = stage.mixer
        mixer = self.mixers[m.type]
        if m.type == "dge":
            return mixer(
                x, self, stage.heads, stage.hidden_dim, m.granularities, m.kv_reduction, drop_prob
            )
        if m.type == "dwconv":
            y = mixer(x, m.kernel_size)
        elif m.type == "dyn_dwconv":
            y = mixer(x, m.kernel_size, m.inhomogeneous, stage.heads)
        elif m.type == "window_attn":
            y = mixer(self.norm1(x), stage.heads, m.window_size, block_index, m.rel_pos_bias)
        else:
            y = mixer(
                self.norm1(x), stage.heads, m.window_size, block_index, m.expansion_ratio, m.kernel_size,
                m.rel_pos_bias,
            )
        x = x + drop_path(y, drop_prob, self.training)
        if stage.ffn.type == "local":
            return self.ffns["local"](x, stage.hidden_dim, stage.ffn.se, drop_prob)
        normed = batch_norm_nhwc(self.norm2_bn, x) if m.type in CONV_MIXERS else self.norm2(x)
        return x + drop_path(self.ffns["mlp"](normed, stage.hidden_dim), drop_prob, self.training)


class PatchMerging(nn.Module):
    """Swin's downsampling: 2x2 neighbours concatenated (4C), LayerNorm(4C), Linear(4C -> C_out, no bias).

    Args:
        dim: largest input width C.
        out_dim: largest output width.
    """

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = ElasticLayerNorm(dim, groups=4)
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
    """

    def __init__(self, limits: StageLimits, in_dim: int | None) -> None:
        super().__init__()
        self.downsample = PatchMerging(in_dim, limits.dim) if in_dim is not None else None
        self.blocks = nn.ModuleList(Block(limits) for _ in range(limits.depth))

    def forward(self, x: Tensor, stage: StageConfig, drop_probs: list[float]) -> Tensor:
        if self.downsample is not None:
            x = self.downsample(x, stage.dim)
        for i in range(stage.depth):
            x = self.blocks[i](x, stage, i, drop_probs[i])
        return x


class MixerNet(nn.Module):
    """Stem, stages, head; runs any architecture of the space it was built for.

    Args:
        space: the architectures this network can run; every module holds its largest size.
        default_arch: the architecture ``forward`` runs when none is given (standalone models).
    """

    def __init__(self, space: SearchSpace, default_arch: ArchConfig | None = None) -> None:
        super().__init__()
        self.space = space
        self.default_arch = default_arch
        resolutions = stage_resolutions(space.input_size, space.patch_size, space.layout, len(space.stages))
        self.limits = [StageLimits.from_choices(st, r) for st, r in zip(space.stages, resolutions)]
        first = self.limits[0].dim
        self.patch_embed = ElasticConv2d(
            space.in_chans, first, space.patch_size, stride=space.patch_size, same_padding=False
        )
        self.stem_norm = ElasticLayerNorm(first) if space.stem_norm else None
        n_tokens = resolutions[0] ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, first)) if space.pos_embed else None
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        self.stages = nn.ModuleList(
            Stage(lim, self.limits[i - 1].dim if i > 0 and space.layout == "hierarchical" else None)
            for i, lim in enumerate(self.limits)
        )
        self.norm = ElasticLayerNorm(self.limits[-1].dim)
        self.head = ElasticLinear(self.limits[-1].dim, space.num_classes)

    def drop_path_rates(self, arch: ArchConfig) -> list[list[float]]:
        """Stochastic depth rising linearly from 0 to arch.drop_path_rate over the active blocks."""
        total = arch.depth
        rates = torch.linspace(0, arch.drop_path_rate, total).tolist() if total > 1 else [0.0] * total
        out, start = [], 0
        for s in arch.stages:
            out.append(rates[start:start + s.depth])
            start += s.depth
        return out

    def forward_features(self, x: Tensor, arch: ArchConfig) -> Tensor:
        """(B, C_in, H, W) images -> (B, h, w, C_last) normed tokens."""
        x = self.patch_embed(x, out_channels=arch.stages[0].dim).permute(0, 2, 3, 1)
        if self.stem_norm is not None:
            x = self.stem_norm(x)
        if self.pos_embed is not None:
            b, h, w, c = x.shape
            x = x + active_slice(self.pos_embed, (1, h * w, c)).view(1, h, w, c)
        for stage_module, stage, drop_probs in zip(self.stages, arch.stages, self.drop_path_rates(arch)):
            x = stage_module(x, stage, drop_probs)
        return self.norm(x)

    def forward(self, x: Tensor, arch: ArchConfig | None = None) -> Tensor:
        """(B, C_in, H, W) images -> (B, num_classes) logits."""
        arch = arch or self.default_arch
        if arch is None:
            raise ValueError("no architecture given and this network has no default; pass arch=")
        x = self.forward_features(x, arch)
        return self.head(x.mean((1, 2)))

    def dge_budget_loss(self, arch: ArchConfig | None = None) -> Tensor | None:
        """Mean over DGE blocks of the last forward of (dynamic/static FLOPs - gamma)^2; None without DGE."""
        arch = arch or self.default_arch
        assert arch is not None
        losses = []
        for stage_module, stage in zip(self.stages, arch.stages):
            if stage.mixer.type != "dge":
                continue
            for block in stage_module.blocks[: stage.depth]:
                ratio = block.mixers["dge"].flops_ratio
                if ratio is not None:
                    losses.append(((ratio - stage.mixer.gamma) ** 2).mean())
        return torch.stack(losses).mean() if losses else None


def build_model(arch: ArchConfig) -> MixerNet:
    """The standalone network of one architecture (weights at exactly its sizes)."""
    arch.validate()
    return MixerNet(SearchSpace.from_arch(arch), default_arch=arch)


def count_dge_queries(model: nn.Module) -> int:
    """Queries computed by all DGE blocks in the last forward (for tests and profiling)."""
    return sum(m.num_queries for m in model.modules() if isinstance(m, DynamicGrainedEncoder))


__all__ = ["Block", "MixerNet", "PatchMerging", "Stage", "StageLimits", "build_model"]
