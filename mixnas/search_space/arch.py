"""ArchConfig: one architecture, the format that searches export and that every model is built from.

An architecture is a stem (patch embedding), one or more stages and a head. Each stage chooses its
depth, width, heads, FFN and token mixer; the mixer carries its own parameters. The YAML form is::

    name: swin_t
    input_size: 224
    num_classes: 1000
    patch_size: 4
    layout: hierarchical          # or isotropic (one stage, ViT/DeiT-like)
    stages:
      - {depth: 2, dim: 96, heads: 3, mlp_ratio: 4.0, ffn: mlp,
         mixer: {type: window_attn, window_size: 7}}

Windows and DGE regions must tile their stage's resolution exactly: mixnas rejects, rather than pads,
a window that does not divide the feature map, so that FLOPs and latency describe the network as
configured (a window at least as large as the map is allowed and means global attention).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from mixnas.atomic import atomic_write_text
from mixnas.errors import ConfigError
from mixnas.search_space._fields import (
    check_keys,
    read_bool,
    read_choice,
    read_float,
    read_int,
    read_list,
)
from mixnas.search_space.geometry import GEOMETRY_KEYS, Geometry
from mixnas.search_space.preprocessing import Preprocessing, read_preprocessing
from mixnas.search_space.registry import MixerSpec, get_mixer, mixer_names

FFN_TYPES = ["mlp", "local"]
LAYER_NORM_EPS = (1e-5, 1e-6)  # Swin and DWNet use 1e-5; DeiT, LocalViT, Refiner and DGE 1e-6


@dataclass(frozen=True)
class MixerConfig:
    """A token mixer and its own parameters, in the canonical order its spec declares.

    Build one with ``MixerConfig.of("dwconv", kernel_size=3)`` (unset parameters take their defaults) or
    ``MixerConfig.from_dict``; read a parameter as an attribute (``mixer.kernel_size``) or with ``get``.
    The parameters each mixer takes are listed by its spec: ``mixnas.search_space.get_mixer(type).params``.

    Args:
        type: a registered mixer name (``mixnas.search_space.mixer_names()``).
        params: (name, value) pairs of every parameter of that mixer.
    """

    type: str
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, type: str, **values: Any) -> MixerConfig:
        """A mixer of ``type`` with ``values`` (already valid); its other parameters at their defaults."""
        spec = get_mixer(type)
        names = {p.name for p in spec.params}
        unknown = sorted(set(values) - names)
        if unknown:
            raise TypeError(f"mixer {type!r} has no parameter {unknown[0]!r}; it has {sorted(names)}")
        return cls(type, tuple((p.name, values.get(p.name, p.default)) for p in spec.params))

    def __getattr__(self, name: str) -> Any:
        # Called only for names that are not fields: a mixer parameter (``mixer.window_size``).
        if name.startswith("__"):
            raise AttributeError(name)
        for key, value in self.__dict__.get("params", ()):
            if key == name:
                return value
        raise AttributeError(f"mixer {self.__dict__.get('type')!r} has no parameter {name!r}")

    def get(self, name: str, default: Any = None) -> Any:
        """A parameter's value, or ``default`` when this mixer has no such parameter."""
        return dict(self.params).get(name, default)

    def with_params(self, **values: Any) -> MixerConfig:
        """The same mixer with some parameters changed (values taken as valid)."""
        unknown = sorted(set(values) - {n for n, _ in self.params})
        if unknown:
            raise TypeError(f"mixer {self.type!r} has no parameter {unknown[0]!r}")
        return MixerConfig(self.type, tuple((n, values.get(n, v)) for n, v in self.params))

    @property
    def spec(self) -> MixerSpec:
        """The registered spec of this mixer's type."""
        return get_mixer(self.type)

    @classmethod
    def from_dict(cls, d: Any, path: str = "mixer") -> MixerConfig:
        if isinstance(d, str):
            d = {"type": d}
        if not isinstance(d, Mapping):
            raise ConfigError(f"{path}: expected a mapping with 'type', got {d!r}")
        if "type" not in d:
            raise ConfigError(f"{path}.type: missing; allowed: {', '.join(mixer_names())}")
        spec = get_mixer(d["type"], f"{path}.type")
        check_keys(d, {"type", *(p.name for p in spec.params)}, f"{path} ({spec.name})")
        return cls(spec.name, tuple(
            (p.name, p.parse(d.get(p.name, p.default), f"{path}.{p.name}")) for p in spec.params
        ))

    def to_dict(self) -> dict[str, Any]:
        spec = self.spec
        out: dict[str, Any] = {"type": self.type}
        for name, value in self.params:
            out[name] = spec.param(name).to_yaml(value)
        return out

    @property
    def region_size(self) -> int:
        """DGE: a region is this many tokens on a side (the largest granularity)."""
        return max(self.get("granularities"))

    def short(self) -> str:
        """A compact label such as ``win7``, ``dw7``, ``ddw7``, ``ref-w7e3k3`` or ``dge124``."""
        return self.spec.label(self)


@dataclass(frozen=True)
class FFNConfig:
    """The feed-forward network of a block.

    Args:
        type: ``mlp`` (Linear -> GELU -> Linear) or ``local`` (LocalViT: 1x1 conv, depth-wise 3x3, 1x1 conv).
        se: squeeze-excitation inside the local FFN (LocalViT's ``hs+se``).
    """

    type: str = "mlp"
    se: bool = False

    @classmethod
    def from_dict(cls, d: Any, path: str = "ffn") -> FFNConfig:
        if isinstance(d, str):
            d = {"type": d}
        if not isinstance(d, Mapping):
            raise ConfigError(f"{path}: expected 'mlp', 'local' or a mapping with 'type', got {d!r}")
        ftype = read_choice(d, "type", path, FFN_TYPES)
        check_keys(d, {"type", "se"} if ftype == "local" else {"type"}, f"{path} ({ftype})")
        return cls(type=ftype, se=read_bool(d, "se", path, False))

    def to_dict(self) -> dict[str, Any] | str:
        return {"type": "local", "se": self.se} if self.type == "local" else "mlp"

    def short(self) -> str:
        return "mlp" if self.type == "mlp" else ("local-se" if self.se else "local")


@dataclass(frozen=True)
class StageConfig:
    """One stage: ``depth`` blocks of width ``dim`` sharing a mixer choice.

    Args:
        depth: number of blocks.
        dim: channels C.
        heads: attention heads (attention mixers, DGE) and channel groups (inhomogeneous dyn_dwconv).
        mlp_ratio: FFN hidden width is int(dim * mlp_ratio).
        ffn: the FFN.
        mixer: the token mixer.
    """

    depth: int
    dim: int
    heads: int
    mlp_ratio: float
    ffn: FFNConfig
    mixer: MixerConfig

    @property
    def hidden_dim(self) -> int:
        return int(self.dim * self.mlp_ratio)

    def to_dict(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "dim": self.dim,
            "heads": self.heads,
            "mlp_ratio": self.mlp_ratio,
            "ffn": self.ffn.to_dict(),
            "mixer": self.mixer.to_dict(),
        }


STAGE_KEYS = {"depth", "dim", "heads", "mlp_ratio", "ffn", "mixer"}
TOP_KEYS = {"name", *GEOMETRY_KEYS, "stages", "preprocessing"}


def stage_resolutions(input_size: int, patch_size: int, layout: str, num_stages: int) -> list[int]:
    """Feature-map side of each stage: input/patch, halved by each patch merging when hierarchical."""
    res = input_size // patch_size
    out = []
    for i in range(num_stages):
        if i > 0 and layout == "hierarchical":
            res //= 2
        out.append(res)
    return out


def check_geometry(input_size: int, patch_size: int, layout: str, num_stages: int, source: str) -> list[int]:
    """Validate that the stem and every patch merging tile the image; returns each stage's resolution."""
    if input_size % patch_size:
        raise ConfigError(
            f"{source}patch_size: {patch_size} does not divide input_size {input_size}; pick a divisor"
        )
    if layout == "isotropic" and num_stages != 1:
        raise ConfigError(f"{source}stages: an isotropic layout has exactly one stage, got {num_stages}")
    res = input_size // patch_size
    for i in range(1, num_stages):
        if res % 2:
            raise ConfigError(
                f"{source}stages[{i}]: patch merging needs an even resolution but stage {i - 1} is "
                f"{res}x{res}; use fewer stages, a larger input_size or a smaller patch_size"
            )
        res //= 2
    return stage_resolutions(input_size, patch_size, layout, num_stages)


def check_stage(stage: StageConfig, resolution: int, path: str) -> None:
    """Check that a stage's sizes and mixer fit together and fit its resolution."""
    if stage.dim % stage.heads:
        raise ConfigError(f"{path}.heads: dim {stage.dim} is not divisible by heads {stage.heads}")
    if stage.hidden_dim < 1:
        raise ConfigError(f"{path}.mlp_ratio: {stage.mlp_ratio} gives an empty FFN at dim {stage.dim}")
    spec = stage.mixer.spec
    if spec.ffn_types is not None and stage.ffn.type not in spec.ffn_types:
        raise ConfigError(
            f"{path}.ffn: {stage.ffn.type!r} cannot be combined with mixer {spec.name} (it pairs with "
            f"{', '.join(spec.ffn_types)} only); use ffn: {spec.ffn_types[0]}"
        )
    spec.check(stage.mixer, stage, resolution, f"{path}.mixer")


def parse_stage(d: Any, path: str) -> StageConfig:
    check_keys(d, STAGE_KEYS, path)
    return StageConfig(
        depth=read_int(d, "depth", path),
        dim=read_int(d, "dim", path),
        heads=read_int(d, "heads", path),
        mlp_ratio=read_float(d, "mlp_ratio", path, 4.0, low=0.0, low_open=True),
        ffn=FFNConfig.from_dict(d.get("ffn", "mlp"), f"{path}.ffn"),
        mixer=MixerConfig.from_dict(d.get("mixer", {"type": mixer_names()[0]}), f"{path}.mixer"),
    )


@dataclass(frozen=True, kw_only=True)
class ArchConfig(Geometry):
    """One architecture: stem, stages, head. Every argument is a keyword.

    Args:
        input_size, num_classes, ...: the image, stem and head: every field of ``Geometry``.
        stages: the stages, first to last.
        name: a label; not part of the architecture's identity (``arch_id``).
        preprocessing: how the inputs of its trained weights are normalised and resized (exported
            architectures record their dataset's); a label like ``name``, not part of ``arch_id``.
    """

    stages: tuple[StageConfig, ...]
    name: str | None = field(default=None, compare=False)
    preprocessing: Preprocessing | None = field(default=None, compare=False)

    # ----------------------------------------------------------------------------------------- parsing
    @classmethod
    def from_dict(cls, d: Any, source: str | None = None) -> ArchConfig:
        """Parse and validate; a bad value raises ConfigError naming ``source`` and the field."""
        prefix = f"{source}: " if source else ""
        try:
            check_keys(d, TOP_KEYS, "config")
            stages_raw = read_list(d, "stages", "")
            geometry = cls._read_geometry(d)
            stages = tuple(parse_stage(s, f"stages[{i}]") for i, s in enumerate(stages_raw))
            name = d.get("name")
            if name is not None and not isinstance(name, str):
                raise ConfigError(f"name: expected a string, got {name!r}")
            arch = cls(
                **geometry, stages=stages, name=name, preprocessing=read_preprocessing(d, "preprocessing", ""),
            )
            arch.validate()
        except ConfigError as e:
            raise ConfigError(prefix + str(e)) from None
        return arch

    def validate(self) -> None:
        """Check geometry and every stage against its resolution; raises ConfigError."""
        resolutions = check_geometry(self.input_size, self.patch_size, self.layout, len(self.stages), "")
        for i, (stage, res) in enumerate(zip(self.stages, resolutions)):
            check_stage(stage, res, f"stages[{i}]")
        if self.preprocessing is not None:
            self.preprocessing.check_channels(self.in_chans)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ArchConfig:
        return cls.from_dict(_load_file(path, "yaml"), source=str(path))

    @classmethod
    def from_json(cls, path: str | Path) -> ArchConfig:
        return cls.from_dict(_load_file(path, "json"), source=str(path))

    @classmethod
    def load(cls, path: str | Path) -> ArchConfig:
        """Read YAML or JSON, by the file's suffix."""
        kind = "json" if str(path).endswith(".json") else "yaml"
        return cls.from_dict(_load_file(path, kind), source=str(path))

    # ------------------------------------------------------------------------------------------- output
    def to_dict(self, with_name: bool = True) -> dict[str, Any]:
        """The YAML/JSON form; ``with_name=False`` leaves out the labels (``name``, ``preprocessing``)."""
        out: dict[str, Any] = {}
        if with_name and self.name is not None:
            out["name"] = self.name
        out.update(self._geometry_to_dict(), stages=[s.to_dict() for s in self.stages])
        if with_name and self.preprocessing is not None:
            out["preprocessing"] = self.preprocessing.to_dict()
        return out

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=110)
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    def canonical_json(self) -> str:
        """Sorted, compact JSON of the architecture without its name: the basis of ``arch_id``."""
        return json.dumps(self.to_dict(with_name=False), sort_keys=True, separators=(",", ":"))

    @property
    def arch_id(self) -> str:
        """A stable 12-hex-digit id: equal architectures have equal ids whatever their names."""
        return hashlib.sha1(self.canonical_json().encode()).hexdigest()[:12]

    # ------------------------------------------------------------------------------------------ queries
    @property
    def resolutions(self) -> list[int]:
        """Feature-map side (tokens) of each stage."""
        return stage_resolutions(self.input_size, self.patch_size, self.layout, len(self.stages))

    @property
    def depth(self) -> int:
        return sum(s.depth for s in self.stages)

    def with_name(self, name: str | None) -> ArchConfig:
        return replace(self, name=name)

    def with_preprocessing(self, preprocessing: Preprocessing | None) -> ArchConfig:
        return replace(self, preprocessing=preprocessing)

    def summary(self) -> str:
        """One line per architecture: ``win7/d2/96 | dw7/d2/192 | ...``."""
        return " | ".join(
            f"{s.mixer.short()}/d{s.depth}/c{s.dim}/h{s.heads}/r{s.mlp_ratio:g}/{s.ffn.short()}"
            for s in self.stages
        )


# A config or a space has a few hundred nodes; an alias bomb ("billion laughs") expands 770 bytes into 10^9.
MAX_CONFIG_NODES = 10_000


class _BoundedYAMLLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a document whose aliases expand beyond ``MAX_CONFIG_NODES`` nodes,
    checked on the composed graph (each node's expanded size computed once) before anything is built."""


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = MAX_CONFIG_NODES + 1  # a node reached again while being sized: a cycle
    if isinstance(node, yaml.MappingNode):
        total = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_size(v, sizes) for v in node.value)
    else:
        total = 1
    sizes[id(node)] = min(total, MAX_CONFIG_NODES + 1)
    return sizes[id(node)]


def _safe_yaml(text: str) -> Any:
    loader = _BoundedYAMLLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_CONFIG_NODES:
            raise ValueError(f"its aliases expand to more than {MAX_CONFIG_NODES} values")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _load_file(path: str | Path, kind: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot be read ({e.__class__.__name__})") from None
    try:
        data = json.loads(text) if kind == "json" else _safe_yaml(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise ConfigError(f"{p}: not valid {kind.upper()} ({first[:200]})") from None
    except ValueError as e:
        raise ConfigError(f"{p}: refused: {e}") from None
    except RecursionError:
        raise ConfigError(f"{p}: nested too deeply to be a {kind.upper()} config") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data
