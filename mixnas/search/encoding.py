"""Architectures as integer genomes: fast sampling, mutation, crossover, features and exact cost.

The guided search (``mixnas.search.guided``) screens tens of thousands of candidates per proposal, which
``ArchConfig`` objects are too slow for. ``ArchCodec`` writes an architecture of a space as a small integer
array, one row per stage and one column per choice (``GENES``), each the index of the chosen value in the
stage's list:

    genome[stage] = (depth, dim, heads, mlp_ratio, mixer option, ffn)

The mixer option indexes the stage's flat list of mixer configurations (every option of every mixer, in
the order the space lists them); the ffn indexes the stage's ``ffns``. A mixer that pairs with only some
FFNs (``MixerSpec.ffn_types``) has its ffn gene repaired to the first allowed one, so every genome
``ArchCodec`` makes or changes decodes to an architecture of the space.

Sampling follows ``SearchSpace.sample``: a uniform mixer type per stage, then uniform values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixnas.search_space import ArchConfig, MixerConfig, SearchSpace, StageConfig

GENES = ("depth", "dim", "heads", "mlp_ratio", "mixer", "ffn")
DEPTH, DIM, HEADS, RATIO, MIXER, FFN = range(len(GENES))


@dataclass(frozen=True)
class _StageCodec:
    """The value lists of one stage, in the space's order."""

    depths: tuple[int, ...]
    dims: tuple[int, ...]
    heads: tuple[int, ...]
    ratios: tuple[float, ...]
    options: tuple[MixerConfig, ...]
    option_type: np.ndarray  # (options,) index of each option's mixer type in ``types``
    types: tuple[str, ...]
    ffns: tuple
    ffn_allowed: np.ndarray  # (options, ffns) bool: the option's mixer pairs with the FFN

    @property
    def sizes(self) -> tuple[int, ...]:
        return (len(self.depths), len(self.dims), len(self.heads), len(self.ratios), len(self.options),
                len(self.ffns))


class ArchCodec:
    """Integer genomes of a space's architectures (module docstring).

    Args:
        space: the search space (with its class count resolved).
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        stages = []
        for st in space.stages:
            options, owner = [], []
            types = tuple(m.type for m in st.mixers)
            for t, m in enumerate(st.mixers):
                for opt in m.options():
                    options.append(opt)
                    owner.append(t)
            allowed = np.array([[f in st.ffns_for(opt.type) for f in st.ffns] for opt in options], dtype=bool)
            stages.append(_StageCodec(st.depths, st.dims, st.heads, st.mlp_ratios, tuple(options),
                                      np.array(owner), types, st.ffns, allowed))
        self.stages = tuple(stages)
        self.num_stages = len(stages)
        # Highest index + 1 per (stage, gene), for sampling and mutation.
        self.sizes = np.array([s.sizes for s in self.stages], dtype=np.int64)

    # ------------------------------------------------------------------------------------ conversion
    def encode(self, arch: ArchConfig) -> np.ndarray:
        """(stages, genes) int genome of ``arch``; raises ValueError when ``arch`` is not in the space."""
        out = np.zeros((self.num_stages, len(GENES)), dtype=np.int64)
        if len(arch.stages) != self.num_stages:
            raise ValueError(f"stages: {len(arch.stages)} stages, the space has {self.num_stages}")
        for i, (s, c) in enumerate(zip(arch.stages, self.stages)):
            try:
                out[i] = (c.depths.index(s.depth), c.dims.index(s.dim), c.heads.index(s.heads),
                          c.ratios.index(s.mlp_ratio), c.options.index(s.mixer), c.ffns.index(s.ffn))
            except ValueError:
                raise ValueError(f"stages[{i}]: {s} is not in the space") from None
        return out

    def decode(self, genome: np.ndarray) -> ArchConfig:
        """The architecture of one (stages, genes) genome."""
        stages = []
        for g, c in zip(np.asarray(genome), self.stages):
            stages.append(StageConfig(
                depth=c.depths[g[DEPTH]], dim=c.dims[g[DIM]], heads=c.heads[g[HEADS]],
                mlp_ratio=c.ratios[g[RATIO]], ffn=c.ffns[g[FFN]], mixer=c.options[g[MIXER]],
            ))
        return self.space._arch(stages)

    @staticmethod
    def keys(genomes: np.ndarray) -> list[bytes]:
        """A hashable key per genome (equal keys, equal architectures)."""
        g = np.ascontiguousarray(np.asarray(genomes, dtype=np.int64).reshape(len(genomes), -1))
        return [row.tobytes() for row in g]

    # ------------------------------------------------------------------------- sampling and variation
    def _repair(self, genomes: np.ndarray) -> np.ndarray:
        """Set each stage's ffn gene to the first FFN its mixer allows where the current one is not."""
        for i, c in enumerate(self.stages):
            ok = c.ffn_allowed[genomes[:, i, MIXER], genomes[:, i, FFN]]
            if not ok.all():
                first = c.ffn_allowed.argmax(1)  # first allowed ffn per option
                bad = ~ok
                genomes[bad, i, FFN] = first[genomes[bad, i, MIXER]]
        return genomes

    def _random_options(self, stage: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """Mixer options drawn as ``SearchSpace.sample`` does: a uniform type, then a uniform option of it."""
        c = self.stages[stage]
        types = rng.integers(0, len(c.types), n)
        out = np.empty(n, dtype=np.int64)
        for t in range(len(c.types)):
            members = np.flatnonzero(c.option_type == t)
            picked = types == t
            out[picked] = members[rng.integers(0, len(members), int(picked.sum()))]
        return out

    def _random_ffns(self, stage: int, options: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A uniform FFN among those each option's mixer allows."""
        allowed = self.stages[stage].ffn_allowed[options]  # (n, ffns)
        u = rng.random(allowed.shape) * allowed  # disallowed get 0 and lose to any allowed one
        return u.argmax(1)

    def random(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, stages, genes) uniformly sampled genomes (``SearchSpace.sample``'s distribution)."""
        g = np.zeros((n, self.num_stages, len(GENES)), dtype=np.int64)
        for i in range(self.num_stages):
            for gene in (DEPTH, DIM, HEADS, RATIO):
                g[:, i, gene] = rng.integers(0, self.sizes[i, gene], n)
            g[:, i, MIXER] = self._random_options(i, n, rng)
            g[:, i, FFN] = self._random_ffns(i, g[:, i, MIXER], rng)
        return g

    def mutate(self, parents: np.ndarray, n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
        """(n, stages, genes) children of ``parents`` (drawn uniformly), each gene redrawn with
        probability ``rate`` and at least one gene changed per child (where the space allows it)."""
        picked = rng.integers(0, len(parents), n)
        children = parents[picked].copy()
        fresh = self.random(n, rng)
        flip = rng.random(children.shape) < rate
        children[flip] = fresh[flip]
        # At least one gene per child takes another value: one with more than one value, not the FFN (a
        # repair could undo that one).
        sizes = self.sizes.copy()
        sizes[:, FFN] = 1
        variable = np.flatnonzero((sizes > 1).reshape(-1))
        if variable.size:
            forced = variable[rng.integers(0, variable.size, n)]
            flat = children.reshape(n, -1)
            size = sizes.reshape(-1)[forced]
            before = parents.reshape(len(parents), -1)[picked, forced]  # the parent's value
            shift = 1 + (rng.random(n) * (size - 1)).astype(np.int64)
            flat[np.arange(n), forced] = (before + shift) % size
        # A changed mixer may not pair with the FFN the child kept: the repair gives it the first it allows.
        return self._repair(children)

    def crossover(self, parents: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, stages, genes) children taking each stage whole from one of two random parents."""
        a = parents[rng.integers(0, len(parents), n)]
        b = parents[rng.integers(0, len(parents), n)]
        take_b = rng.random((n, self.num_stages, 1)) < 0.5
        return np.where(take_b, b, a).copy()

    # --------------------------------------------------------------------------------------- features
    def features(self, genomes: np.ndarray) -> np.ndarray:
        """(n, features) float matrix for a regressor: per stage, a one-hot of every gene with more than
        one value, the mixer type's one-hot, and depth, width and FFN ratio as numbers scaled to [0, 1]."""
        g = np.asarray(genomes)
        n = len(g)
        cols = []
        for i, c in enumerate(self.stages):
            for gene, size in enumerate(c.sizes):
                if size > 1:
                    cols.append(np.eye(size)[g[:, i, gene]])
            if len(c.types) > 1:
                cols.append(np.eye(len(c.types))[c.option_type[g[:, i, MIXER]]])
            for gene, values in ((DEPTH, c.depths), (DIM, c.dims), (RATIO, c.ratios)):
                v = np.asarray(values, dtype=float)
                span = v.max() - v.min()
                if span > 0:
                    cols.append(((v[g[:, i, gene]] - v.min()) / span)[:, None])
        return np.hstack(cols) if cols else np.zeros((n, 0))


__all__ = ["GENES", "ArchCodec"]
