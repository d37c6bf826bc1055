"""Typed readers for config mappings: each raises ConfigError naming the field where the bad value is."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mixnas.errors import ConfigError

_MISSING = object()


def type_name(value: Any) -> str:
    return type(value).__name__


def check_keys(mapping: Any, allowed: set[str] | list[str], path: str) -> Mapping[str, Any]:
    """Require a mapping with no keys outside ``allowed``."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {type_name(mapping)}")
    unknown = sorted(str(k) for k in mapping if k not in allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(allowed))}")
    return mapping


def read_int(m: Mapping, key: str, path: str, default: Any = _MISSING, minimum: int | None = 1) -> int:
    value = m.get(key, default)
    field = f"{path}.{key}" if path else key
    if value is _MISSING:
        raise ConfigError(f"{field}: missing; expected an integer")
    return as_int(value, field, minimum)


def as_int(value: Any, field: str, minimum: int | None = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{field}: expected an integer, got {value!r} ({type_name(value)})")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{field}: {value} is too small; must be >= {minimum}")
    return int(value)


def read_float(
    m: Mapping, key: str, path: str, default: Any = _MISSING, low: float | None = None,
    high: float | None = None, low_open: bool = False,
) -> float:
    value = m.get(key, default)
    field = f"{path}.{key}" if path else key
    if value is _MISSING:
        raise ConfigError(f"{field}: missing; expected a number")
    return as_float(value, field, low, high, low_open)


def as_float(
    value: Any, field: str, low: float | None = None, high: float | None = None, low_open: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{field}: expected a number, got {value!r} ({type_name(value)})")
    value = float(value)
    if not math.isfinite(value):  # YAML's .nan and .inf
        raise ConfigError(f"{field}: {value} is not allowed; give a finite number")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"{field}: {value} is out of range; must be {'>' if low_open else '>='} {low}")
    if high is not None and value > high:
        raise ConfigError(f"{field}: {value} is out of range; must be <= {high}")
    return value


def read_bool(m: Mapping, key: str, path: str, default: Any = _MISSING) -> bool:
    value = m.get(key, default)
    field = f"{path}.{key}" if path else key
    if value is _MISSING:
        raise ConfigError(f"{field}: missing; expected true or false")
    return as_bool(value, field)


def as_bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{field}: expected true or false, got {value!r} ({type_name(value)})")
    return value


def read_choice(m: Mapping, key: str, path: str, allowed: list[str], default: Any = _MISSING) -> str:
    value = m.get(key, default)
    field = f"{path}.{key}" if path else key
    if value is _MISSING:
        raise ConfigError(f"{field}: missing; allowed: {', '.join(allowed)}")
    return as_choice(value, field, allowed)


def as_choice(value: Any, field: str, allowed: list[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{field}: unknown value {value!r}; allowed: {', '.join(allowed)}")
    return value


def read_list(m: Mapping, key: str, path: str, default: Any = _MISSING, non_empty: bool = True) -> list:
    value = m.get(key, default)
    field = f"{path}.{key}" if path else key
    if value is _MISSING:
        raise ConfigError(f"{field}: missing; expected a list")
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{field}: expected a list, got {value!r} ({type_name(value)})")
    if non_empty and not value:
        raise ConfigError(f"{field}: empty list; give at least one value")
    return list(value)
