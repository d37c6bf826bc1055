"""SearchSpace: the choices of every stage, sampling, Optuna suggestion and membership.

YAML form (lists are the allowed values; a mixer's parameters are chosen only when it is)::

    name: demo
    input_size: 32
    num_classes: 10
    patch_size: 2
    layout: hierarchical
    stages:
      - depth: [1, 2]
        dim: [32, 48]
        heads: [2]
        mlp_ratio: [2.0, 3.0]
        ffn: [mlp, local]
        mixers:                     # the first one listed is used by largest() and smallest()
          window_attn: {window_size: [4, 8]}
          dwconv: {kernel_size: [3, 5]}
          dge: {granularities: [[1, 2, 4], [1, 2]]}

Every combination of a stage's choices must be a valid architecture (dims divisible by every head
count, windows and regions tiling the stage), so that every sample builds. The one exception is
handled, not rejected: a mixer that pairs with some FFNs only (DGE: ``mlp``) is combined with those.
A mixer's parameters and their parsing come from its registered spec (``mixnas.search_space.registry``).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mixnas.errors import ConfigError
from mixnas.search_space._fields import (
    as_float,
    as_int,
    check_keys,
    read_int,
    read_list,
)
from mixnas.search_space.arch import (
    ArchConfig,
    FFNConfig,
    MixerConfig,
    StageConfig,
    _load_file,
    check_geometry,
    check_stage,
)
from mixnas.search_space.geometry import FIXED_GEOMETRY, GEOMETRY_KEYS, Geometry, geometry_field
from mixnas.search_space.registry import MixerSpec, get_mixer, mixer_names

Rng = random.Random | np.random.Generator | int | None


@dataclass(frozen=True)
class MixerChoices:
    """A mixer type and the allowed values of each of its parameters."""

    type: str
    params: tuple[tuple[str, tuple[Any, ...]], ...]

    @property
    def spec(self) -> MixerSpec:
        return get_mixer(self.type)

    def options(self) -> list[MixerConfig]:
        """Every configuration of this mixer the stage offers."""
        names = [n for n, _ in self.params]
        return [
            MixerConfig(self.type, tuple(zip(names, combo)))
            for combo in itertools.product(*(vals for _, vals in self.params))
        ]

    def values(self, name: str) -> tuple[Any, ...]:
        return dict(self.params)[name]

    def extreme(self, largest: bool) -> MixerConfig:
        """The costliest (or cheapest) configuration, parameter by parameter as each spec orders cost."""
        spec = self.spec
        return MixerConfig(self.type, tuple((n, spec.param(n).extreme(vals, largest)) for n, vals in self.params))

    def to_dict(self) -> dict[str, list]:
        spec = self.spec
        return {n: [spec.param(n).to_yaml(v) for v in vals] for n, vals in self.params}


@dataclass(frozen=True)
class StageChoices:
    """The allowed values of one stage."""

    depths: tuple[int, ...]
    dims: tuple[int, ...]
    heads: tuple[int, ...]
    mlp_ratios: tuple[float, ...]
    ffns: tuple[FFNConfig, ...]
    mixers: tuple[MixerChoices, ...]

    def mixer(self, mtype: str) -> MixerChoices:
        for m in self.mixers:
            if m.type == mtype:
                return m
        raise KeyError(mtype)

    def ffns_for(self, mtype: str) -> tuple[FFNConfig, ...]:
        """FFNs that pair with a mixer (DGE runs its FFN on sparse queries, so only ``mlp``)."""
        allowed = get_mixer(mtype).ffn_types
        return self.ffns if allowed is None else tuple(f for f in self.ffns if f.type in allowed)

    def size(self) -> int:
        per_mixer = sum(len(m.options()) * len(self.ffns_for(m.type)) for m in self.mixers)
        return len(self.depths) * len(self.dims) * len(self.heads) * len(self.mlp_ratios) * per_mixer

    def to_dict(self) -> dict[str, Any]:
        return {
            "depth": list(self.depths),
            "dim": list(self.dims),
            "heads": list(self.heads),
            "mlp_ratio": list(self.mlp_ratios),
            "ffn": [f.to_dict() for f in self.ffns],
            "mixers": {m.type: m.to_dict() for m in self.mixers},
        }


def _values(d: Mapping, key: str, path: str, parse, default: Any = None) -> tuple:
    raw = d.get(key, default)
    field = f"{path}.{key}"
    if raw is None:
        raise ConfigError(f"{field}: missing; expected a list of allowed values")
    if not isinstance(raw, (list, tuple)):
        raw = [raw]
    if not raw:
        raise ConfigError(f"{field}: empty list; give at least one value")
    vals = tuple(parse(v, f"{field}[{i}]") for i, v in enumerate(raw))
    if len(set(vals)) != len(vals):
        raise ConfigError(f"{field}: {list(raw)} repeats a value")
    return vals


def _parse_stage_choices(d: Any, path: str) -> StageChoices:
    check_keys(d, {"depth", "dim", "heads", "mlp_ratio", "ffn", "mixers"}, path)
    mixers_raw = d.get("mixers")
    if not isinstance(mixers_raw, Mapping) or not mixers_raw:
        raise ConfigError(
            f"{path}.mixers: expected a mapping of mixer type to its parameter choices, "
            f"e.g. {{window_attn: {{window_size: [7]}}}}; types: {', '.join(mixer_names())}"
        )
    mixers = []
    for mtype, params_raw in mixers_raw.items():
        mpath = f"{path}.mixers.{mtype}"
        if mtype not in mixer_names():
            raise ConfigError(f"{path}.mixers: unknown mixer {mtype!r}; allowed: {', '.join(mixer_names())}")
        spec = get_mixer(mtype)
        params_raw = {} if params_raw is None else params_raw
        check_keys(params_raw, {p.name for p in spec.params}, mpath)
        params = tuple(
            (p.name, p.parse_choices(params_raw.get(p.name, [p.default]), f"{mpath}.{p.name}")) for p in spec.params
        )
        mixers.append(MixerChoices(type=mtype, params=params))
    return StageChoices(
        depths=_values(d, "depth", path, lambda v, f: as_int(v, f, 1)),
        dims=_values(d, "dim", path, lambda v, f: as_int(v, f, 1)),
        heads=_values(d, "heads", path, lambda v, f: as_int(v, f, 1)),
        mlp_ratios=_values(d, "mlp_ratio", path, lambda v, f: as_float(v, f, 0.0, low_open=True), [4.0]),
        ffns=_values(d, "ffn", path, lambda v, f: FFNConfig.from_dict(v, f), ["mlp"]),
        mixers=tuple(mixers),
    )


def _pick(rng: random.Random, values: Sequence[Any]) -> Any:
    return values[rng.randrange(len(values))]


def _as_random(rng: Rng) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, np.random.Generator):
        return random.Random(int(rng.integers(2**63)))
    return random.Random(rng)


def _read_num_classes(d: Mapping, key: str, path: str) -> int | None:
    return None if d.get(key) == "auto" else read_int(d, key, path)


@dataclass(frozen=True, kw_only=True)
class SearchSpace(Geometry):
    """Choices per stage over a fixed stem, input size and head. Every argument is a keyword.

    Args:
        input_size, patch_size, ...: the image, stem and head: every field of ``Geometry``, fixed for the
            whole space.
        num_classes: the classifier's outputs, or None for ``num_classes: auto`` (the dataset decides:
            ``with_num_classes``; supernet training resolves it and stores the resolved space).
        stages: each stage's allowed values.
        name: a label.
    """

    num_classes: int | None = geometry_field(_read_num_classes, write=lambda n: "auto" if n is None else n)
    stages: tuple[StageChoices, ...]
    name: str | None = None

    # ----------------------------------------------------------------------------------------- parsing
    @classmethod
    def from_dict(cls, d: Any, source: str | None = None) -> SearchSpace:
        prefix = f"{source}: " if source else ""
        try:
            check_keys(d, {"name", *GEOMETRY_KEYS, "stages"}, "space")
            stages_raw = read_list(d, "stages", "")
            geometry = cls._read_geometry(d)
            space = cls(
                **geometry,
                stages=tuple(_parse_stage_choices(s, f"stages[{i}]") for i, s in enumerate(stages_raw)),
                name=d.get("name") if isinstance(d.get("name"), str) else None,
            )
            space.validate()
        except ConfigError as e:
            raise ConfigError(prefix + str(e)) from None
        return space

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        kind = "json" if str(path).endswith(".json") else "yaml"
        return cls.from_dict(_load_file(path, kind), source=str(path))

    @classmethod
    def from_arch(cls, arch: ArchConfig) -> SearchSpace:
        """The space holding exactly one architecture (a standalone model is its supernet)."""
        stages = tuple(
            StageChoices(
                depths=(s.depth,), dims=(s.dim,), heads=(s.heads,), mlp_ratios=(s.mlp_ratio,), ffns=(s.ffn,),
                mixers=(MixerChoices(type=s.mixer.type, params=tuple((n, (v,)) for n, v in s.mixer.params)),),
            )
            for s in arch.stages
        )
        return cls(**arch.geometry(), stages=stages, name=arch.name)

    @property
    def num_classes_auto(self) -> bool:
        """True for ``num_classes: auto``: the dataset gives the count (``with_num_classes``)."""
        return self.num_classes is None

    def with_num_classes(self, num_classes: int) -> SearchSpace:
        """The same space with its classifier sized for ``num_classes`` classes."""
        return replace(self, num_classes=num_classes)

    def with_stage_mixers(self, stage: int, types: Sequence[str]) -> SearchSpace:
        """The same space with stage ``stage`` (0-based) offering only the mixers ``types`` (a few-shot
        split's sub-space: its supernet's tensors are a subset of this one's)."""
        if not 0 <= stage < len(self.stages):
            raise ConfigError(f"stage: {stage} is out of range; the space has {len(self.stages)} stages")
        offered = [m.type for m in self.stages[stage].mixers]
        unknown = [t for t in types if t not in offered]
        if unknown or not types:
            raise ConfigError(f"stages[{stage}].mixers: {unknown[0] if unknown else 'nothing'!r} is not offered; "
                              f"offered: {', '.join(offered)}")
        kept = replace(self.stages[stage], mixers=tuple(m for m in self.stages[stage].mixers if m.type in types))
        return replace(self, stages=(*self.stages[:stage], kept, *self.stages[stage + 1:]))

    def validate(self) -> None:
        """Every combination of each stage's choices must be valid; raises ConfigError at the first that is not."""
        resolutions = check_geometry(self.input_size, self.patch_size, self.layout, len(self.stages), "")
        for i, (st, res) in enumerate(zip(self.stages, resolutions)):
            path = f"stages[{i}]"
            for dim, heads in itertools.product(st.dims, st.heads):
                if dim % heads:
                    raise ConfigError(
                        f"{path}: dim {dim} is not divisible by heads {heads}; "
                        f"every dim must be divisible by every head count"
                    )
            for m in st.mixers:
                if not st.ffns_for(m.type):
                    allowed = " or ".join(repr(t) for t in m.spec.ffn_types or ())
                    raise ConfigError(f"{path}.ffn: mixer {m.type} needs the {allowed} FFN among the choices")
                for opt in m.options():
                    for dim, heads, ratio in itertools.product(st.dims, st.heads, st.mlp_ratios):
                        stage = StageConfig(1, dim, heads, ratio, st.ffns_for(m.type)[0], opt)
                        try:
                            check_stage(stage, res, path)
                        except ConfigError as e:
                            msg = str(e).replace(f"{path}.mixer", f"{path}.mixers.{m.type}")
                            raise ConfigError(msg) from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name} if self.name else {}
        out.update(self._geometry_to_dict(), stages=[s.to_dict() for s in self.stages])
        return out

    def to_yaml(self, path: str | Path | None = None) -> str:
        import yaml

        from mixnas.atomic import atomic_write_text

        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=110)
        if path is not None:
            atomic_write_text(path, text)
        return text

    # ------------------------------------------------------------------------------------ architectures
    def _arch(self, stages: list[StageConfig], name: str | None = None) -> ArchConfig:
        if self.num_classes is None:
            raise ConfigError(
                "num_classes: 'auto' takes the count from the dataset; resolve it first "
                "(space.with_num_classes(n); mixnas supernet train does it)"
            )
        return ArchConfig(**self.geometry(), stages=tuple(stages), name=name)

    def sample(self, rng: Rng = None, mixers: Sequence[str] | None = None) -> ArchConfig:
        """A uniformly random mixer type per stage (or the given one per stage), then uniform values for
        everything else."""
        r = _as_random(rng)
        stages = []
        for i, st in enumerate(self.stages):
            m = _pick(r, st.mixers) if mixers is None else st.mixer(mixers[i])
            opt = MixerConfig(m.type, tuple((n, _pick(r, vals)) for n, vals in m.params))
            stages.append(StageConfig(
                depth=_pick(r, st.depths), dim=_pick(r, st.dims), heads=_pick(r, st.heads),
                mlp_ratio=_pick(r, st.mlp_ratios), ffn=_pick(r, st.ffns_for(m.type)), mixer=opt,
            ))
        return self._arch(stages)

    def _extreme(self, largest: bool, mixer: str | None) -> ArchConfig:
        pick = max if largest else min
        stages = []
        for i, st in enumerate(self.stages):
            try:
                m = st.mixer(mixer) if mixer else st.mixers[0]
            except KeyError:
                raise ConfigError(f"stages[{i}].mixers: {mixer!r} is not offered in this stage") from None
            ffns = st.ffns_for(m.type)
            stages.append(StageConfig(
                depth=pick(st.depths), dim=pick(st.dims), heads=pick(st.heads),
                mlp_ratio=pick(st.mlp_ratios), ffn=ffns[-1] if largest else ffns[0], mixer=m.extreme(largest),
            ))
        return self._arch(stages, name="largest" if largest else "smallest")

    def largest(self, mixer: str | None = None) -> ArchConfig:
        """Every size at its maximum, each stage's first-listed mixer (or ``mixer``) at its costliest."""
        return self._extreme(True, mixer)

    def smallest(self, mixer: str | None = None) -> ArchConfig:
        """Every size at its minimum, each stage's first-listed mixer (or ``mixer``) at its cheapest."""
        return self._extreme(False, mixer)

    def mixer_types(self) -> list[str]:
        """Mixer types offered in every stage (those a hand-designed uniform network can use)."""
        common = [m.type for m in self.stages[0].mixers]
        return [t for t in common if all(any(m.type == t for m in st.mixers) for st in self.stages[1:])]

    def contains(self, arch: ArchConfig) -> bool:
        return self.why_not(arch) is None

    def why_not(self, arch: ArchConfig) -> str | None:
        """None when ``arch`` is in the space, otherwise the first field that is outside it."""
        for f in FIXED_GEOMETRY:
            if getattr(arch, f) != getattr(self, f):
                return f"{f}: {getattr(arch, f)!r} is not the space's {getattr(self, f)!r}"
        if len(arch.stages) != len(self.stages):
            return f"stages: {len(arch.stages)} stages, the space has {len(self.stages)}"
        for i, (s, st) in enumerate(zip(arch.stages, self.stages)):
            for fname, val, allowed in (
                ("depth", s.depth, st.depths), ("dim", s.dim, st.dims), ("heads", s.heads, st.heads),
                ("mlp_ratio", s.mlp_ratio, st.mlp_ratios),
            ):
                if val not in allowed:
                    return f"stages[{i}].{fname}: {val} is not among {list(allowed)}"
            try:
                m = st.mixer(s.mixer.type)
            except KeyError:
                return f"stages[{i}].mixer.type: {s.mixer.type} is not among {[x.type for x in st.mixers]}"
            spec = m.spec
            for n, vals in m.params:
                if s.mixer.get(n) not in vals:
                    shown = [spec.param(n).to_yaml(v) for v in vals]
                    return f"stages[{i}].mixer.{n}: {spec.param(n).encode(s.mixer.get(n))} is not among {shown}"
            if s.ffn not in st.ffns_for(s.mixer.type):
                return f"stages[{i}].ffn: {s.ffn.short()} is not among {[f.short() for f in st.ffns_for(s.mixer.type)]}"
        return None

    def size(self) -> int:
        """The number of distinct architectures in the space."""
        return math.prod(st.size() for st in self.stages)

    # ---------------------------------------------------------------------------------------- optuna
    def params_of(self, arch: ArchConfig) -> dict[str, Any]:
        """The Optuna parameters under which ``suggest`` gives ``arch`` (for ``Study.enqueue_trial``).

        Raises:
            ConfigError: ``arch`` is not in the space (naming the first field outside it).
        """
        why = self.why_not(arch)
        if why is not None:
            raise ConfigError(why)
        return _Replay(arch).replay(self)

    def suggest(self, trial: Any) -> ArchConfig:
        """Define-by-run suggestion for an Optuna trial (also usable through Ray Tune's OptunaSearch).

        A mixer's parameters are suggested only when the trial chose that mixer, under names such as
        ``s1.refiner.expansion_ratio``; a value with a single choice is not suggested at all.
        """

        def cat(name: str, values: Sequence[Any]) -> Any:
            if len(values) == 1:
                return values[0]
            return trial.suggest_categorical(name, list(values))

        stages = []
        for i, st in enumerate(self.stages):
            mtype = cat(f"s{i}.mixer", [m.type for m in st.mixers])
            m = st.mixer(mtype)
            spec = m.spec
            params = tuple(
                (n, spec.param(n).decode(cat(f"s{i}.{mtype}.{n}", [spec.param(n).encode(v) for v in vals])))
                for n, vals in m.params
            )
            ffns = st.ffns_for(mtype)
            ffn_name = f"s{i}.ffn" if ffns == st.ffns else f"s{i}.{mtype}.ffn"
            ffn_label = cat(ffn_name, [f.short() for f in ffns])
            stages.append(StageConfig(
                depth=cat(f"s{i}.depth", st.depths), dim=cat(f"s{i}.dim", st.dims),
                heads=cat(f"s{i}.heads", st.heads), mlp_ratio=cat(f"s{i}.mlp_ratio", st.mlp_ratios),
                ffn=next(f for f in ffns if f.short() == ffn_label), mixer=MixerConfig(mtype, params),
            ))
        return self._arch(stages)


class _Replay:
    """A stand-in for an Optuna trial that answers each of ``SearchSpace.suggest``'s questions with the value
    ``arch`` holds, and records the answers: the parameters that reproduce ``arch``."""

    def __init__(self, arch: ArchConfig) -> None:
        self.arch = arch
        self.params: dict[str, Any] = {}

    def replay(self, space: SearchSpace) -> dict[str, Any]:
        space.suggest(self)
        return self.params

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        stage_name, rest = name.split(".", 1)
        stage = self.arch.stages[int(stage_name[1:])]
        field = rest.rsplit(".", 1)[-1]
        if field == "mixer":
            value: Any = stage.mixer.type
        elif field == "ffn":
            value = stage.ffn.short()
        elif rest in ("depth", "dim", "heads", "mlp_ratio"):
            value = getattr(stage, rest)
        else:
            value = stage.mixer.spec.param(field).encode(stage.mixer.get(field))
        if value not in choices:
            raise ConfigError(f"{name}: {value!r} is not among {choices}")
        self.params[name] = value
        return value
