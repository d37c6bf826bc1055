"""Geometry: the image, stem and head that an architecture has and that a search space fixes for all of its own.

``ArchConfig`` and ``SearchSpace`` both derive from ``Geometry``, so a field declared here is, in both: a
constructor keyword and an attribute, a key of the YAML form (read, checked and written in this order), and
copied from a space to the architectures it gives (``SearchSpace.sample``) and back (``SearchSpace.from_arch``).
Adding one is one ``geometry_field`` line and its entry under ``Args``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from functools import partial
from typing import Any

from mixnas.search_space._fields import read_bool, read_choice, read_float, read_int

LAYOUTS = ["hierarchical", "isotropic"]

# ``read(mapping, key, path[, default])``: the key's value, checked; a ConfigError naming the key otherwise.
Reader = Callable[..., Any]


def geometry_field(
    read: Reader, default: Any = MISSING, *, write: Callable[[Any], Any] | None = None, fixed: bool = True,
    **limits: Any,
) -> Any:
    """Declare a geometry field: its default (none: required) and how its YAML value is read and written.

    Args:
        read: a reader from ``mixnas.search_space._fields`` (``read_int``, ``read_float``, ...).
        default: the value when the key is absent; required when not given.
        write: the YAML value of a field's value; the value itself when None.
        fixed: an architecture is in a space only with the space's value of this field
            (``SearchSpace.why_not``); False for a training setting such as ``drop_path_rate``.
        limits: the reader's own keywords (``minimum``, ``low``, ``high``, ``allowed``, ...).
    """
    return field(default=default, metadata={
        "read": partial(read, **limits) if limits else read, "write": write, "fixed": fixed,
    })


def _geometry_fields(cls: type) -> list[Field]:
    """The geometry fields of ``cls``, with a subclass's redeclarations (SearchSpace's ``num_classes``)."""
    return [f for f in fields(cls) if "read" in f.metadata]


@dataclass(frozen=True, kw_only=True)
class Geometry:
    """The image, stem and head; every field is a keyword.

    Args:
        input_size: image side in pixels (square inputs).
        in_chans: input channels.
        num_classes: classifier outputs.
        patch_size: the stem is a conv with kernel = stride = patch_size.
        layout: ``hierarchical`` (Swin-like, a patch merging between stages) or ``isotropic`` (one stage).
        pos_embed: a learned absolute position embedding added after the stem (DeiT).
        stem_norm: a LayerNorm after the stem conv (Swin has it, DeiT does not).
        drop_path_rate: stochastic depth at the last block; rises linearly from 0 over the blocks.
        layer_norm_eps: epsilon of every LayerNorm: 1e-5 (Swin, DWNet; the default) or 1e-6 (DeiT,
            LocalViT, Refiner, DGE).
    """

    # In the order of the YAML form.
    input_size: int = geometry_field(read_int)
    in_chans: int = geometry_field(read_int, 3)
    num_classes: int = geometry_field(read_int)
    patch_size: int = geometry_field(read_int, 4)
    layout: str = geometry_field(read_choice, "hierarchical", allowed=LAYOUTS)
    pos_embed: bool = geometry_field(read_bool, False)
    stem_norm: bool = geometry_field(read_bool, True)
    drop_path_rate: float = geometry_field(read_float, 0.0, fixed=False, low=0.0, high=0.99)
    layer_norm_eps: float = geometry_field(read_float, 1e-5, low=0.0, high=0.1, low_open=True)

    @classmethod
    def _read_geometry(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        """The geometry fields of a config mapping (absent ones at their defaults), checked; raises
        ConfigError naming the first bad key."""
        return {
            f.name: f.metadata["read"](d, f.name, "") if f.default is MISSING
            else f.metadata["read"](d, f.name, "", default=f.default)
            for f in _geometry_fields(cls)
        }

    def _geometry_to_dict(self) -> dict[str, Any]:
        """The geometry fields in their YAML form, in order."""
        out = {}
        for f in _geometry_fields(type(self)):
            value = getattr(self, f.name)
            out[f.name] = value if f.metadata["write"] is None else f.metadata["write"](value)
        return out

    def geometry(self) -> dict[str, Any]:
        """The geometry fields by name: the keywords that make the other kind with the same geometry
        (``ArchConfig(**space.geometry(), stages=...)``)."""
        return {f.name: getattr(self, f.name) for f in fields(Geometry)}


GEOMETRY_KEYS = tuple(f.name for f in fields(Geometry))
# The fields an architecture must share with a space to be in it (``SearchSpace.why_not``).
FIXED_GEOMETRY = tuple(f.name for f in fields(Geometry) if f.metadata["fixed"])
