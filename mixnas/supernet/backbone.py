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
from timm.layers import drop_path
from timm.models._features import feature_take_indices
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mixnas.search_space import ArchConfig, Preprocessing, SearchSpace, StageChoices, StageConfig, get_mixer
from mixnas.search_space.arch import stage_resolutions
from mixnas.supernet.elastic import (
    ElasticBatchNorm2d,
    ElasticConv2d,
    ElasticLayerNorm,
    ElasticLinear,
    active_slice,
    batch_norm_nhwc,
    trunc_normal_init_,
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
        if m.spec.wraps_block:
            hidden = stage.hidden_dim
            parts = BlockParts(self.norm1, self.norm2, lambda t: self.ffns["mlp"](t, hidden), hidden)
            return self.mixers[m.type](x, MixerContext(m, stage.heads, block_index, drop_prob, parts))
        return self.feed_forward(self.mix(x, stage, block_index, drop_prob), stage, drop_prob), None

    def mix(self, x: Tensor, stage: StageConfig, block_index: int, drop_prob: float) -> Tensor:
        """The token-mixing half of a block whose mixer does not wrap it: ``x + drop_path(mixer(norm1(x)))``
        (without norm1 for a mixer that normalises its input itself)."""
        m = stage.mixer
        y = self.mixers[m.type](self.norm1(x) if m.spec.pre_norm == "layer" else x,
                                MixerContext(m, stage.heads, block_index))
        return x + drop_path(y, drop_prob, self.training)

    def feed_forward(self, x: Tensor, stage: StageConfig, drop_prob: float) -> Tensor:
        """The FFN half of a block whose mixer does not wrap it: LocalViT's FFN, or
        ``x + drop_path(mlp(norm2(x)))`` with the LayerNorm or BatchNorm its mixer's spec asks for."""
        if stage.ffn.type == "local":
            return self.ffns["local"](x, stage.hidden_dim, stage.ffn.se)
        normed = batch_norm_nhwc(self.norm2_bn, x) if stage.mixer.spec.ffn_norm == "batch" else self.norm2(x)
        return x + drop_path(self.ffns["mlp"](normed, stage.hidden_dim), drop_prob, self.training)


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
        self.grad_checkpointing = False

    def forward(self, x: Tensor, stage: StageConfig, drop_probs: list[float]) -> tuple[Tensor, list[DynamicCost]]:
        if self.downsample is not None:
            x = self.downsample(x, stage.dim)
        costs = []
        recompute = self.grad_checkpointing and torch.is_grad_enabled()
        for i in range(stage.depth):
            if recompute:  # activations recomputed in backward (timm's set_grad_checkpointing)
                x, cost = checkpoint(self.blocks[i], x, stage, i, drop_probs[i], use_reentrant=False)
            else:
                x, cost = self.blocks[i](x, stage, i, drop_probs[i])
            if cost is not None:
                costs.append(cost)
        return x, costs


GLOBAL_POOLS = ("avg", "")


def pretrained_cfg_of(input_size: int, in_chans: int, num_classes: int, pool_size: int,
                      preprocessing: Preprocessing | None) -> dict:
    """timm's ``pretrained_cfg`` of a mixnas network: its input and the preprocessing its weights expect
    (ImageNet's, as timm assumes, when the architecture records none)."""
    p = preprocessing or Preprocessing()
    return {
        "architecture": "mixnas", "input_size": (in_chans, input_size, input_size), "fixed_input_size": True,
        "pool_size": (pool_size, pool_size), "interpolation": p.interpolation, "crop_pct": p.crop_pct,
        "crop_mode": "center", "mean": tuple(p.mean), "std": tuple(p.std), "num_classes": num_classes,
        "first_conv": "patch_embed", "classifier": "head", "license": "apache-2.0",
    }


class MixerNet(nn.Module):
    """Stem, stages, head; runs any architecture of the space it was built for.

    It follows timm's model contract (``forward_features``, ``forward_head``, ``reset_classifier``,
    ``forward_intermediates``, ``feature_info``, ``pretrained_cfg`` ...), so a standalone network is a timm
    model (``timm.create_model("mixnas", arch=...)``, ``mixnas.supernet.timm_model``).

    Args:
        space: the architectures this network can run; every module holds its largest size.
        default_arch: the architecture ``forward`` runs when none is given (standalone models).
        global_pool: ``avg`` (mean over the tokens) or ``''`` (no pooling: the head sees the token map).
        drop_rate: dropout before the classifier.
    """

    def __init__(self, space: SearchSpace, default_arch: ArchConfig | None = None, global_pool: str = "avg",
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        if space.num_classes is None:
            raise ValueError("the space's num_classes is 'auto': resolve it with space.with_num_classes(n) first")
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
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
            trunc_normal_init_(self.pos_embed, std=0.02)
        self.stages = nn.ModuleList(
            Stage(lim, self.limits[i - 1].dim if i > 0 and space.layout == "hierarchical" else None, eps)
            for i, lim in enumerate(self.limits)
        )
        self.norm = ElasticLayerNorm(self.limits[-1].dim, eps=eps)
        self.num_classes = space.num_classes
        self.num_features = self.head_hidden_size = self.limits[-1].dim
        self.global_pool = global_pool
        self.head_drop = nn.Dropout(drop_rate)
        self.head: nn.Module = ElasticLinear(self.limits[-1].dim, space.num_classes)
        self.feature_info = [
            {"num_chs": lim.dim, "reduction": space.input_size // r, "module": f"stages.{i}"}
            for i, (lim, r) in enumerate(zip(self.limits, resolutions))
        ]
        preprocessing = default_arch.preprocessing if default_arch is not None else None
        self.pretrained_cfg = pretrained_cfg_of(space.input_size, space.in_chans, space.num_classes,
                                                resolutions[-1], preprocessing)
        self.default_cfg = self.pretrained_cfg

    def no_weight_decay(self) -> set[str]:
        """Parameters AdamW must not decay (timm's optimizer factory reads this): the position embedding,
        every norm's weight, the grouped LayerNorm's 2-D ones included (timm already spares 1-D tensors
        and biases), and what each mixer's spec names (``MixerSpec.no_weight_decay``: the relative-position
        tables)."""
        names = set()
        for name, module in self.named_modules():
            prefix = f"{name}." if name else ""
            if isinstance(module, (ElasticLayerNorm, nn.LayerNorm, nn.modules.batchnorm._BatchNorm)):
                names.update(prefix + p for p, _ in module.named_parameters(recurse=False))
            elif isinstance(module, Block):
                for kind, mixer in module.mixers.items():
                    own = dict(mixer.named_parameters())
                    # A name the module lacks is an option this space does not use (rel_pos_bias: [false]).
                    names.update(f"{prefix}mixers.{kind}.{p}" for p in get_mixer(kind).no_weight_decay if p in own)
        if self.pos_embed is not None:
            names.add("pos_embed")
        return names

    # ------------------------------------------------------------------------------ timm's model contract
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups by depth (timm's layer-wise learning-rate decay reads this)."""
        return {
            "stem": r"^patch_embed|^stem_norm|^pos_embed",
            "blocks": r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None), (r"^norm", (99999,)),
            ],
        }

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of keeping them."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, freshly initialised classifier of ``num_classes`` outputs (0: none, the model returns its
        pooled features); ``global_pool`` ``avg`` or ``''`` (the unpooled token map)."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 removes the classifier), got {num_classes}")
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        # pretrained_cfg keeps describing the weights it came with (timm's convention: its num_classes is theirs)
        self.head = ElasticLinear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def drop_path_rates(self, arch: ArchConfig) -> list[list[float]]:
        """Stochastic depth rising linearly from 0 to arch.drop_path_rate over the active blocks."""
        total = arch.depth
        # Plain Python, not torch.linspace: a tensor here would be traced by torch.export and ONNX export.
        rates = [arch.drop_path_rate * i / (total - 1) for i in range(total)] if total > 1 else [0.0] * total
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

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, h, w, C) normed tokens -> (B, num_classes) logits; ``pre_logits``: the pooled (B, C) features.
        With ``global_pool=''`` nothing is pooled: (B, h, w, ...)."""
        if self.global_pool == "avg":
            x = x.mean((1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def classify(self, tokens: Tensor) -> Tensor:
        """The head: (B, h, w, C) last-stage tokens -> (B, num_classes) logits (LayerNorm, mean, Linear)."""
        return self.forward_head(self.norm(tokens))

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
        """(B, C_in, H, W) images -> (B, h, w, C_last) normed tokens (NHWC, as timm's Swin)."""
        return self.norm(self._features(x, self._arch(arch))[0])

    def forward_intermediates(
        self, x: Tensor, indices: int | list[int] | None = None, norm: bool = False, stop_early: bool = False,
        output_fmt: str = "NCHW", intermediates_only: bool = False, arch: ArchConfig | None = None,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The map after each stage (timm's contract): ``indices`` the last n stages (int), these stages
        (list) or all (None); ``norm`` applies the final norm to the last stage's map; ``output_fmt``
        ``NCHW`` or ``NHWC``. Returns the maps, or (the final normed tokens, the maps)."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        arch = self._arch(arch)
        take, max_index = feature_take_indices(len(self.stages), indices)
        x = self.embed(x, arch.stages[0].dim)
        last = len(self.stages) - 1
        maps = []
        i = 0
        for i, (stage_module, stage, drop_probs) in enumerate(zip(self.stages, arch.stages,
                                                                  self.drop_path_rates(arch))):
            if stop_early and i > max_index:
                break
            x, _ = stage_module(x, stage, drop_probs)
            if i in take:
                y = self.norm(x) if norm and i == last else x
                maps.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y)
        if intermediates_only:
            return maps
        return (self.norm(x) if i == last else x), maps

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last one ``indices`` asks for (and the norm, the head); returns the
        stage indices kept."""
        take, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm or max_index < len(self.limits) - 1:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_with_costs(self, x: Tensor, arch: ArchConfig | None = None) -> tuple[Tensor, list[DynamicCost]]:
        """(B, C_in, H, W) images -> ((B, num_classes) logits, the dynamic cost of each input-dependent
        block, in network order); the costs feed ``budget_loss`` and the FLOP counts of DGE networks."""
        tokens, costs = self._features(x, self._arch(arch))
        return self.classify(tokens), costs

    def forward(self, x: Tensor, arch: ArchConfig | None = None) -> Tensor:
        """(B, C_in, H, W) images -> (B, num_classes) logits."""
        return self.forward_with_costs(x, arch)[0]


def build_model(arch: ArchConfig, global_pool: str = "avg", drop_rate: float = 0.0) -> MixerNet:
    """The standalone network of one architecture (weights at exactly its sizes); ``global_pool`` and
    ``drop_rate`` as ``MixerNet`` takes them."""
    arch.validate()
    return MixerNet(SearchSpace.from_arch(arch), default_arch=arch, global_pool=global_pool, drop_rate=drop_rate)


def dynamic_block_names(arch: ArchConfig) -> list[str]:
    """Module names of the input-dependent blocks, in the order ``forward_with_costs`` returns their costs."""
    return [f"stages.{i}.blocks.{j}" for i, s in enumerate(arch.stages) if s.mixer.spec.input_dependent_cost
            for j in range(s.depth)]


__all__ = ["GLOBAL_POOLS", "Block", "MixerNet", "PatchMerging", "Stage", "StageLimits", "budget_loss", "build_model",
           "dynamic_block_names", "pretrained_cfg_of"]
