"""Exact FLOPs and parameters of every architecture of a space, from one count per component.

A network's FLOPs and parameters are sums over its components (stem, patch mergings, blocks, head), and
each component's count depends only on its own configuration. A block whose mixer does not wrap it is two
halves that add up (``Block.mix`` and ``Block.feed_forward``: fvcore counts no residual addition), so
it is counted as its mixing half per mixer option, width, heads and shift, plus its FFN half per width,
ratio, FFN and norm, rather than once per combination of all of them: on the shipped spaces about half the
counts and 2.3-3.4x less time (``docs/benchmarks/cost_table.md``). A block-wrapping mixer's block (DGE) is
counted whole.
``CostTable`` counts every component of a space once (fvcore, as ``mixnas profile`` does; multiply-adds at
batch 1) and then gives the cost of any number of architectures as array lookups: the guided search
screens 10^4 candidates per proposal with it, and the hypervolume's reference point comes from the
space's costliest architecture (``max_cost``).

For a static network the table's sum equals ``count_flops`` of the whole network exactly (a test checks
it on random architectures of the demo space, DGE as initialised included). A mixer whose cost depends on the image
(``MixerSpec.input_dependent_cost``, DGE) is counted as initialised, where its router sends every region to
the finest granularity: the table gives its densest cost, an upper bound; the search records each scored
candidate's measured mean.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mixnas.atomic import atomic_write_text
from mixnas.search.encoding import DEPTH, DIM, FFN, HEADS, MIXER, RATIO, ArchCodec
from mixnas.search.latency_lut import (
    ComponentCall,
    _block_builder,
    _Call,
    _Component,
    _exact_limits,
    _Part,
    block_configs,
    block_key,
    head_key,
    heads_and_shift,
    merge_key,
    mixer_key,
    space_components,
    stem_key,
)
from mixnas.search.profiler import count_flops, count_params
from mixnas.search_space import ArchConfig, SearchSpace, StageConfig
from mixnas.search_space.arch import stage_resolutions
from mixnas.supernet.backbone import Block

COST_TABLE_FORMAT = "mixnas-cost-table-2"  # 2: blocks counted as mixing and FFN halves


def _space_digest(space: SearchSpace) -> str:
    return hashlib.sha256(json.dumps(space.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def mix_key(stage_index: int, resolution: int, stage: StageConfig, block_index: int) -> str:
    """Key of the mixing half of a block (``Block.mix``): what ``block_key`` names but the FFN."""
    heads, shifted = heads_and_shift(stage, resolution, block_index)
    return f"mix/s{stage_index}/res{resolution}/{mixer_key(stage.mixer, resolution)}/c{stage.dim}{heads}{shifted}"


def ffn_key(stage_index: int, resolution: int, stage: StageConfig) -> str:
    """Key of the FFN half of a block (``Block.feed_forward``): width, ratio, FFN and, for the MLP, the norm
    in front of it (the mixer's spec says LayerNorm or BatchNorm)."""
    norm = f"/{stage.mixer.spec.ffn_norm}-norm" if stage.ffn.type == "mlp" else ""
    return f"ffn/s{stage_index}/res{resolution}/c{stage.dim}/r{stage.mlp_ratio:g}/{stage.ffn.short()}{norm}"


def block_parts(stage_index: int, resolution: int, stage: StageConfig, block_index: int) -> list[str]:
    """The keys whose counts add up to one block: the whole block for a block-wrapping mixer (DGE), else its
    mixing half and its FFN half."""
    if stage.mixer.spec.wraps_block:
        return [block_key(stage_index, resolution, stage, block_index)]
    return [mix_key(stage_index, resolution, stage, block_index), ffn_key(stage_index, resolution, stage)]


def _half_builder(space: SearchSpace, stage: StageConfig, resolution: int, half: str, block_index: int = 0,
                  ) -> Callable[[], tuple[nn.Module, ComponentCall]]:
    """A builder of one half (``mix`` or ``ffn``) of a block as ``build_model`` builds the block: the block's
    own modules of that half (so that only their parameters are counted), run by the block's own method."""
    def build() -> tuple[nn.Module, ComponentCall]:
        block = Block(_exact_limits(space, stage, resolution), space.layer_norm_eps)
        if half == "mix":
            return (_Part(block, ("norm1", "mixers"), Block.mix),
                    lambda module, x: module(x, stage, block_index, 0.0))
        return (_Part(block, ("norm2", "norm2_bn", "ffns"), Block.feed_forward),
                lambda module, x: module(x, stage, 0.0))

    return build


def cost_components(space: SearchSpace) -> list[_Component]:
    """What ``count_components`` counts, each once: the latency table's stems, mergings and heads
    (``space_components``), and each block's parts (``block_parts``)."""
    resolutions = stage_resolutions(space.input_size, space.patch_size, space.layout, len(space.stages))
    out = {c.key: c for c in space_components(space, batch_size=1) if c.kind != "block"}
    for i, (st, res) in enumerate(zip(space.stages, resolutions)):
        for stage, parities in block_configs(st, res):
            for parity in parities:
                for key in block_parts(i, res, stage, parity):
                    if key in out:
                        continue
                    kind = key.split("/", 1)[0]
                    build = (_block_builder(space, stage, res, parity) if kind == "block"
                             else _half_builder(space, stage, res, kind, parity))
                    out[key] = _Component(key, kind, i, (1, res, res, stage.dim), build)
    return list(out.values())


COUNTS_KEPT = 8  # spaces whose counts a process keeps (a few hundred entries each)
_counted: dict[tuple[Any, ...], dict[str, tuple[int, int]]] = {}


@torch.no_grad()
def count_components(space: SearchSpace) -> dict[str, tuple[int, int]]:
    """component key -> (FLOPs as multiply-adds at batch 1, parameters), each component built alone.

    A process counts a space once: the counts are kept for its next table of the same space (its digest)
    with the same registered mixer specs (a spec registered again is counted again), the last
    ``COUNTS_KEPT`` spaces. Counting draws its inputs and DGE's initial routers from its own seeded stream,
    so the caller's random state is the same whether the counts were kept or counted.
    """
    key = (_space_digest(space), tuple(m.spec for st in space.stages for m in st.mixers))
    if key not in _counted:
        if len(_counted) >= COUNTS_KEPT:
            _counted.pop(next(iter(_counted)))
        _counted[key] = count_each(cost_components(space))
    return dict(_counted[key])


@torch.no_grad()
def count_each(components: list[_Component]) -> dict[str, tuple[int, int]]:
    """key -> (FLOPs, parameters) of each component, built alone in eval mode and run on a random input;
    the weights and inputs come from a stream seeded 0 of its own (the caller's random state is untouched)."""
    out = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for c in components:
            module, call = c.build()
            module.eval()
            out[c.key] = (count_flops(_Call(module, call), torch.randn(c.input_shape)), count_params(module))
    return out


class CostTable:
    """FLOPs and parameters of a space's architectures (module docstring).

    Args:
        space: the search space (class count resolved).
        counts: component key -> (FLOPs, params); counted now when None.
    """

    def __init__(self, space: SearchSpace, counts: dict[str, tuple[int, int]] | None = None) -> None:
        self.space = space
        self.codec = ArchCodec(space)
        self.counts = counts if counts is not None else count_components(space)
        res = stage_resolutions(space.input_size, space.patch_size, space.layout, len(space.stages))
        self.resolutions = res
        self.hierarchical = space.layout == "hierarchical"
        get = self.counts.__getitem__
        c0, cl = self.codec.stages[0], self.codec.stages[-1]
        self._stem = np.array([get(stem_key(res[0], d)) for d in c0.dims], dtype=float)  # (dims, 2)
        self._head = np.array([get(head_key(res[-1], d)) for d in cl.dims], dtype=float)
        self._merge: list[np.ndarray | None] = [None]
        self._block: list[np.ndarray] = []
        for i, c in enumerate(self.codec.stages):
            if i > 0:
                prev = self.codec.stages[i - 1]
                self._merge.append(np.array([[get(merge_key(i, res[i - 1], a, b)) for b in c.dims] for a in prev.dims],
                                            dtype=float) if self.hierarchical else None)
            block = np.full((len(c.dims), len(c.heads), len(c.ratios), len(c.options), len(c.ffns), 2, 2), np.nan)
            for d, dim in enumerate(c.dims):
                for h, heads in enumerate(c.heads):
                    for r, ratio in enumerate(c.ratios):
                        for o, opt in enumerate(c.options):
                            for f, ffn in enumerate(c.ffns):
                                if not c.ffn_allowed[o, f]:
                                    continue
                                stage = StageConfig(1, dim, heads, ratio, ffn, opt)
                                for parity in (0, 1):
                                    block[d, h, r, o, f, parity] = np.sum(
                                        [get(k) for k in block_parts(i, res[i], stage, parity)], axis=0)
            self._block.append(block)

    # ------------------------------------------------------------------------------------------ I/O
    @classmethod
    def for_space(cls, space: SearchSpace, cache: str | Path | None = None) -> CostTable:
        """The table of ``space``, read from ``cache`` when it holds this space's counts, else counted (and
        written there). A damaged or foreign cache file is recounted, never trusted."""
        digest = _space_digest(space)
        if cache is not None and Path(cache).is_file():
            try:
                data = json.loads(Path(cache).read_text())
                if data.get("format") == COST_TABLE_FORMAT and data.get("space") == digest:
                    counts = {k: (int(v[0]), int(v[1])) for k, v in data["counts"].items()}
                    return cls(space, counts)
            except (OSError, ValueError, KeyError, TypeError, IndexError):
                pass
        table = cls(space)
        if cache is not None:
            atomic_write_text(cache, json.dumps(
                {"format": COST_TABLE_FORMAT, "space": digest, "counts": table.counts}, indent=0, sort_keys=True))
        return table

    # ------------------------------------------------------------------------------------------ costs
    def costs(self, genomes: np.ndarray) -> np.ndarray:
        """(n, 2) GFLOPs and parameters of (n, stages, genes) genomes."""
        g = np.asarray(genomes)
        total = self._stem[g[:, 0, DIM]] + self._head[g[:, -1, DIM]]
        for i, c in enumerate(self.codec.stages):
            s = g[:, i]
            if i > 0 and self._merge[i] is not None:
                total = total + self._merge[i][g[:, i - 1, DIM], s[:, DIM]]
            depth = np.asarray(c.depths)[s[:, DEPTH]]
            per = self._block[i][s[:, DIM], s[:, HEADS], s[:, RATIO], s[:, MIXER], s[:, FFN]]  # (n, parity, 2)
            total = total + ((depth + 1) // 2)[:, None] * per[:, 0] + (depth // 2)[:, None] * per[:, 1]
        return np.column_stack([total[:, 0] / 1e9, total[:, 1]])

    def arch_cost(self, arch: ArchConfig) -> tuple[float, int]:
        """(GFLOPs, parameters) of one architecture."""
        gflops, params = self.costs(self.codec.encode(arch)[None])[0]
        return float(gflops), int(params)

    def max_cost(self) -> tuple[float, int]:
        """(GFLOPs, parameters) of the space's costliest architecture in each (exact: a pass over the stages
        that keeps, per width of the stage, the costliest way to reach it)."""
        out = []
        for col in (0, 1):
            best = self._stem[:, col].copy()  # per first-stage width
            for i, c in enumerate(self.codec.stages):
                depth = np.asarray(c.depths, dtype=float)
                per = np.nanmax(self._block[i][..., col], axis=(1, 2, 3, 4))  # (dims, parity)
                stage = np.max(((depth + 1) // 2)[None] * per[:, :1] + (depth // 2)[None] * per[:, 1:], axis=1)
                if i > 0:
                    merge = self._merge[i][..., col] if self._merge[i] is not None else 0.0
                    best = np.max(best[:, None] + merge + np.zeros((len(best), len(c.dims))), axis=0)
                best = best + stage
            out.append(float(np.max(best + self._head[:, col])))
        return out[0] / 1e9, int(out[1])


__all__ = ["CostTable", "block_parts", "cost_components", "count_components", "count_each", "ffn_key", "mix_key"]
