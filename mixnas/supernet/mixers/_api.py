"""What every mixer module's forward receives and what input-dependent mixers return.

Every mixer module is called as ``module(x, ctx)``: x is (B, H, W, C) channels-last tokens (normed by the
block's norm1 unless the mixer's spec says ``pre_norm = "none"``), ctx a ``MixerContext``. A mixer
returns (B, H, W, C); a mixer that wraps its block (``MixerSpec.wraps_block``, DGE) returns the block's
output and a ``DynamicCost``, which the network hands back from ``MixerNet.forward_with_costs`` instead
of leaving it on the module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mixnas.search_space import MixerConfig


@dataclass(frozen=True)
class BlockParts:
    """The pieces of a block that a block-wrapping mixer runs itself.

    Args:
        norm1: the LayerNorm before attention.
        norm2: the LayerNorm before the FFN.
        ffn: the block's FFN at the active hidden width, (..., C) -> (..., C).
        hidden: that hidden width (for the cost).
    """

    norm1: nn.Module
    norm2: nn.Module
    ffn: Callable[[Tensor], Tensor]
    hidden: int


@dataclass(frozen=True)
class MixerContext:
    """One call of a mixer: its active configuration and where in the network it runs.

    Args:
        mixer: the active configuration (type and parameters).
        heads: attention heads (the channel groups of mixers that group channels).
        block_index: position of the block within its stage (shifted windows alternate).
        drop_prob: the block's stochastic-depth rate (mixers that wrap the block apply it themselves).
        parts: the block's norms and FFN, for mixers that wrap the block.
    """

    mixer: MixerConfig
    heads: int
    block_index: int = 0
    drop_prob: float = 0.0
    parts: BlockParts | None = None


@dataclass(frozen=True)
class DynamicCost:
    """The cost of one block whose computation depends on the image (DGE), as one forward ran it.

    Args:
        dynamic: (B,) FLOPs (multiply-adds) of the block for each image as routed; in training it carries
            the router's straight-through gradient, which is how the budget loss trains the router.
        static: FLOPs of the block computing every token (the finest grain everywhere).
        queries: (B,) queries each image's routing asks for.
        computed: queries this forward actually computed (training computes every granularity densely).
        target: the budget's target ratio of dynamic to static FLOPs (DGE's gamma).
    """

    dynamic: Tensor
    static: float
    queries: Tensor
    computed: int
    target: float


def budget_loss(costs: Sequence[DynamicCost]) -> Tensor | None:
    """DGE's budget loss in the official form (vtpack ``engine.py``): (ratio - gamma)^2 with one ratio per
    batch, the sum over blocks of the batch-mean dynamic FLOPs over the sum of their static FLOPs.

    Penalising the batch's total rather than each image's and each block's ratio leaves the router free
    to spend more on hard images and less on easy ones. Blocks with different targets are combined by
    weighting each target with its static FLOPs (which is gamma itself when they agree). None without
    input-dependent blocks.
    """
    if not costs:
        return None
    static = sum(c.static for c in costs)
    dynamic = torch.stack([c.dynamic.float().mean() for c in costs]).sum()
    target = sum(c.target * c.static for c in costs) / static
    return (dynamic / static - target) ** 2


class ExportForm:
    """A mixer with a second form of its evaluation for ``torch.export`` and ONNX export, switched by
    ``export_form = True`` (``export_form_of``): the same outputs, computed with operations the exporters
    take. DGE's evaluation gathers the queries its router picks (input-dependent shapes); its export form
    computes every granularity and selects (its FLOPs then differ). Attention through
    ``scaled_dot_product_attention`` with a mask is traced with the fused kernel's strides and
    decomposed into the math kernel's (PyTorch 2.15), which export refuses; the export form spells the
    attention out."""

    export_form: bool = False


@contextlib.contextmanager
def export_form_of(model: nn.Module) -> Iterator[list[str]]:
    """Switch every ``ExportForm`` module of ``model`` to its export form inside the block; yields their
    names and restores them afterwards."""
    modules = [(name, m) for name, m in model.named_modules() if isinstance(m, ExportForm)]
    before = [m.export_form for _, m in modules]
    for _, m in modules:
        m.export_form = True
    try:
        yield [name for name, _ in modules]
    finally:
        for (_, m), b in zip(modules, before):
            m.export_form = b
