"""The mixer registry: everything mixnas knows of a token mixer, found by its type name.

A mixer is one module (``mixnas/supernet/mixers/<name>.py``) holding a ``MixerSpec`` subclass and the
elastic ``nn.Module`` it builds, registered with ``register_mixer``. Nothing else in mixnas branches on
mixer names: ArchConfig and SearchSpace parse and check a mixer's parameters through its spec, the
backbone asks it which norms surround it and builds its module, the latency table keys it, export and
the pages label and colour it. Adding a mixer is one new module plus one import line in
``mixnas/supernet/mixers/__init__.py``, or a ``register_mixer`` call in your own code (as the tests do), or
a package of its own declaring a ``mixnas.mixers`` entry point (``mixnas.supernet.mixers._plugins``).

This module is pure Python (no torch): the spec's ``build`` is implemented by the supernet layer.
The built-in mixers register when ``mixnas`` is imported, as timm's models do when ``timm`` is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

from mixnas.errors import ConfigError
from mixnas.search_space._fields import as_bool, as_float, as_int

if TYPE_CHECKING:  # pragma: no cover
    from mixnas.search_space.arch import MixerConfig, StageConfig
    from mixnas.search_space.space import StageChoices


# ------------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Param:
    """One parameter of a mixer: its name, default, how it is parsed and how it orders cost.

    Args:
        name: the YAML key (``window_size``).
        default: the value when a config leaves it out.
        doc: one line for docs and errors.
        cost: how values order a network's cost, for ``SearchSpace.largest``/``smallest``: ``"larger"``
            (a larger value costs more), ``"smaller"`` (a smaller value costs more) or ``"first"`` (the
            first listed value is used at both extremes, e.g. a switch).
        affects_cost: False for training targets that leave a forward pass unchanged (DGE's gamma); such
            parameters are left out of latency-table keys.
    """

    name: str
    default: Any
    doc: str = ""
    cost: str = "larger"
    affects_cost: bool = True

    def parse(self, value: Any, field: str) -> Any:
        """Check one value's type and range; returns its canonical form. Raises ConfigError naming ``field``."""
        raise NotImplementedError  # pragma: no cover

    def parse_choices(self, raw: Any, field: str) -> tuple[Any, ...]:
        """The allowed values of a search space (``[3, 5]``; a bare value is one choice)."""
        values = raw if isinstance(raw, (list, tuple)) else [raw]
        if not values:
            raise ConfigError(f"{field}: empty list; give at least one value")
        parsed = tuple(self.parse(v, f"{field}[{i}]") for i, v in enumerate(values))
        if len(set(parsed)) != len(parsed):
            raise ConfigError(f"{field}: {list(raw)} repeats a value")
        return parsed

    def to_yaml(self, value: Any) -> Any:
        return value

    def encode(self, value: Any) -> Any:
        """Optuna's categorical values must be scalars (None, bool, int, float, str)."""
        return value

    def decode(self, value: Any) -> Any:
        return value

    def extreme(self, values: Sequence[Any], largest: bool) -> Any:
        """The value of ``values`` the largest (or smallest) network of a space uses."""
        if self.cost == "first":
            return values[0]
        costlier = max if (self.cost == "larger") == largest else min
        return costlier(values)


@dataclass(frozen=True)
class IntParam(Param):
    """An integer >= ``minimum``; ``odd`` for kernel sides."""

    minimum: int = 1
    odd: bool = False

    def parse(self, value: Any, field: str) -> int:
        v = as_int(value, field, self.minimum)
        if self.odd and v % 2 == 0:
            raise ConfigError(f"{field}: {v} is even; kernel sizes must be odd (1, 3, 5, 7, ...)")
        return v


@dataclass(frozen=True)
class BoolParam(Param):
    cost: str = "first"

    def parse(self, value: Any, field: str) -> bool:
        return as_bool(value, field)


@dataclass(frozen=True)
class FloatParam(Param):
    """A finite number in [low, high] (``low_open``: low excluded)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def parse(self, value: Any, field: str) -> float:
        return as_float(value, field, self.low, self.high, self.low_open)


@dataclass(frozen=True)
class SetParam(Param):
    """A set of positive integers, kept sorted, e.g. DGE's granularities ``[1, 2, 4]``.

    ``key`` orders sets by cost for the space's extremes (the costliest is the largest by it).
    """

    key: Callable[[tuple[int, ...]], Any] = field(default=lambda s: (max(s), len(s)), compare=False)
    check: Callable[[tuple[int, ...], str], None] | None = field(default=None, compare=False)
    example: str = "[1, 2, 4]"

    def parse(self, value: Any, field: str) -> tuple[int, ...]:
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"{field}: expected a non-empty list of integers such as {self.example}")
        items = tuple(as_int(g, f"{field}[{i}]", 1) for i, g in enumerate(value))
        if len(set(items)) != len(items):
            raise ConfigError(f"{field}: {list(items)} repeats a value")
        items = tuple(sorted(items))
        if self.check is not None:
            self.check(items, field)
        return items

    def parse_choices(self, raw: Any, field: str) -> tuple[Any, ...]:
        if isinstance(raw, (list, tuple)) and raw and isinstance(raw[0], int):
            raise ConfigError(f"{field}: expected a list of sets such as [{self.example}, [1, 2]]")
        return super().parse_choices(raw, field)

    def to_yaml(self, value: Any) -> Any:
        return list(value)

    def encode(self, value: Any) -> str:
        return "-".join(str(g) for g in value)

    def decode(self, value: Any) -> tuple[int, ...]:
        return tuple(int(g) for g in str(value).split("-"))

    def extreme(self, values: Sequence[Any], largest: bool) -> Any:
        return max(values, key=self.key) if largest else min(values, key=self.key)


# ------------------------------------------------------------------------------------------------ specs
class MixerSpec:
    """What mixnas knows of one token mixer. Subclass it, set the class attributes, implement ``build``.

    Class attributes:
        name: the type name in configs (``window_attn``).
        abbreviation: a few letters for file names and tables (``win``).
        color: its colour on the result pages.
        params: its parameters, in canonical order.
        pre_norm: ``"layer"``: the block applies its LayerNorm (norm1) before the mixer; ``"none"``: the
            mixer takes the block's input as it is (DWNet's convolutions).
        ffn_norm: the norm before the block's ``mlp`` FFN: ``"layer"`` (LayerNorm, norm2) or ``"batch"``
            (BatchNorm, as DWNet).
        wraps_block: the mixer runs the whole block, attention and FFN, and returns the block's output and
            its dynamic cost (DGE); the block hands it its norms and FFN.
        ffn_types: the FFN types it pairs with; None for any.
        input_dependent_cost: its FLOPs depend on the image (DGE's routing): profiles report a mean, min, max.
        uses_heads: its computation depends on the head count (attention); see ``heads_matter``.
        flop_handles: FLOP counts of the ops its modules use that the core does not count (fvcore's
            handles and ``mixnas.search.profiler``'s): ``{"aten::fft_rfft2": handle}``, where a handle takes
            the traced op's inputs and outputs (``torch._C.Value`` lists) and returns its multiply-adds, or
            None for an op that costs none. An op nobody counts is an error, never a silent zero.
        no_weight_decay: names of its module's parameters, relative to the module (``rel_pos.table``), that
            AdamW must not decay (``MixerNet.no_weight_decay``); norms, biases and 1-D tensors are spared anyway.
    """

    name: ClassVar[str] = ""
    abbreviation: ClassVar[str] = ""
    color: ClassVar[str] = "#7f7f7f"
    params: ClassVar[tuple[Param, ...]] = ()
    pre_norm: ClassVar[str] = "layer"
    ffn_norm: ClassVar[str] = "layer"
    wraps_block: ClassVar[bool] = False
    ffn_types: ClassVar[tuple[str, ...] | None] = None
    input_dependent_cost: ClassVar[bool] = False
    uses_heads: ClassVar[bool] = True
    flop_handles: ClassVar[Mapping[str, Callable[..., Any] | None]] = MappingProxyType({})
    no_weight_decay: ClassVar[tuple[str, ...]] = ()

    # --------------------------------------------------------------------------------------- config side
    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"mixer {self.name!r} has no parameter {name!r}")

    def label(self, mixer: MixerConfig) -> str:
        """A compact label, e.g. ``win7``; the default is the abbreviation and the parameter values."""
        parts = []
        for p in self.params:
            v = mixer.get(p.name)
            parts.append("".join(str(g) for g in v) if isinstance(v, tuple) else str(v))
        return self.abbreviation + "-".join(parts)

    def check(self, mixer: MixerConfig, stage: StageConfig, resolution: int, path: str) -> None:
        """Raise ConfigError (naming ``path.mixer.<param>``) if ``mixer`` cannot run in ``stage`` at a
        ``resolution`` x ``resolution`` map (a window or region that does not tile it, ...)."""

    def heads_matter(self, mixer: MixerConfig) -> bool:
        """Whether the head count changes this configuration's computation (part of latency keys)."""
        return self.uses_heads

    def shifted(self, mixer: MixerConfig, resolution: int, block_index: int) -> bool:
        """Whether block ``block_index`` of a stage runs a costlier variant (shifted windows roll and mask)."""
        return False

    def cost_key(self, mixer: MixerConfig, resolution: int) -> dict[str, Any]:
        """The parameters that change a forward pass's cost, as they act at this resolution."""
        return {p.name: mixer.get(p.name) for p in self.params if p.affects_cost}

    def limits(self, options: Sequence[MixerConfig], stage: StageChoices, resolution: int) -> dict[str, Any]:
        """The largest sizes the module serving ``options`` (every configuration ``stage`` offers of this
        mixer) must hold, at the stage's ``resolution``.

        The default takes the maximum of every integer parameter and the union of boolean ones.
        """
        out: dict[str, Any] = {}
        for p in self.params:
            values = [o.get(p.name) for o in options]
            if isinstance(p, BoolParam):
                out[p.name] = sorted(set(values))
            elif isinstance(p, IntParam):
                out[p.name] = max(values)
        return out

    # -------------------------------------------------------------------------------------- module side
    def build(self, dim: int, heads: int, limits: dict[str, Any], resolution: int) -> Any:
        """The elastic module holding the largest sizes (``dim`` channels, ``heads`` heads, ``limits``).

        Its forward is ``module(x, ctx)`` with x (B, H, W, C) channels-last tokens and ctx a
        ``mixnas.supernet.MixerContext``; it returns (B, H, W, C), or, when ``wraps_block``, the block's
        output and its ``DynamicCost``.
        """
        raise NotImplementedError(f"mixer {self.name!r} does not build a module")

    def __repr__(self) -> str:
        return f"<mixer {self.name}>"


_REGISTRY: dict[str, MixerSpec] = {}
# Registrations that could not run yet (a plug-in whose own module was still importing mixnas when mixnas
# loaded the plug-ins): each is retried at the registry's next lookup until it says it is done.
_PENDING: list[Callable[[], bool]] = []


def defer_registration(attempt: Callable[[], bool]) -> None:
    """Run ``attempt`` at each later lookup (``get_mixer``, ``mixer_names``) until it returns True."""
    _PENDING.append(attempt)


def _settle() -> None:
    if not _PENDING:
        return
    pending = list(_PENDING)
    _PENDING.clear()  # an attempt's own lookups find nothing pending: no recursion
    _PENDING.extend(attempt for attempt in pending if not attempt())


def register_mixer(spec: MixerSpec | type[MixerSpec], replace: bool = False) -> MixerSpec:
    """Make a mixer known by its name; usable as a class decorator. Returns the spec instance.

    Raises:
        ValueError: the name is empty, has characters outside [a-z0-9_], or is taken (unless ``replace``).
    """
    instance = spec() if isinstance(spec, type) else spec
    name = instance.name
    if not name or not all(c.isalnum() or c == "_" for c in name) or name != name.lower():
        raise ValueError(f"mixer name {name!r}: use lower-case letters, digits and underscores")
    if not instance.abbreviation:
        raise ValueError(f"mixer {name!r}: set an abbreviation (a few letters for file names)")
    if name in _REGISTRY and not replace:
        raise ValueError(f"mixer {name!r} is already registered")
    for p in instance.params:
        if p.cost not in ("larger", "smaller", "first"):
            raise ValueError(f"mixer {name!r}: parameter {p.name!r} has cost {p.cost!r}")
    if instance.input_dependent_cost and not instance.wraps_block:
        raise ValueError(f"mixer {name!r}: input_dependent_cost needs wraps_block (mixnas counts a block's "
                         f"per-image FLOPs from the DynamicCost that a block-wrapping mixer returns)")
    for op, handle in instance.flop_handles.items():
        if not (isinstance(op, str) and "::" in op) or not (handle is None or callable(handle)):
            raise ValueError(f"mixer {name!r}: flop_handles must map op names like 'aten::fft_rfft2' to a "
                             f"handle or None, not {op!r}: {handle!r}")
        for other in _REGISTRY.values():  # fvcore counts an op one way in the whole network
            if other.name != name and op in other.flop_handles and other.flop_handles[op] is not handle:
                raise ValueError(f"mixer {name!r}: its FLOP handle of {op} differs from mixer {other.name!r}'s; "
                                 f"an op is counted one way everywhere (share one handle)")
    if isinstance(instance.no_weight_decay, str) or not all(isinstance(n, str) for n in instance.no_weight_decay):
        raise ValueError(f"mixer {name!r}: no_weight_decay must be a tuple of parameter names")
    _REGISTRY[name] = instance
    return instance


def unregister_mixer(name: str) -> None:
    """Forget a registered mixer (tests use it to remove what they added)."""
    _REGISTRY.pop(name, None)


def get_mixer(name: str, field: str = "mixer.type") -> MixerSpec:
    """The registered spec of ``name``; ConfigError naming ``field`` and the known names otherwise."""
    _settle()
    spec = _REGISTRY.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ConfigError(f"{field}: unknown value {name!r}; allowed: {', '.join(mixer_names())}")
    return spec


def mixer_names() -> list[str]:
    """Registered mixer types, in registration order (the built-ins first)."""
    _settle()
    return list(_REGISTRY)
