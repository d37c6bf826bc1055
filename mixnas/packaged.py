"""The configs shipped inside the package (``mixnas/configs``), found with ``importlib.resources`` so that a
wheel install finds them from any directory.

* ``reference/<name>.yaml``: the papers' architectures (swin_t, dwnet_t, deit_s, ...).
* ``spaces/<name>.yaml``: the presets' search spaces (demo, cifar, imagenet).

Commands that take an architecture or a space accept a packaged one by name (``mixnas profile swin_t``,
``--space demo``) as well as a path.
"""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

from mixnas.errors import ConfigError
from mixnas.search_space import ArchConfig, SearchSpace

REFERENCE_DIR = "reference"
SPACES_DIR = "spaces"


def _names(kind: str) -> list[str]:
    folder = files("mixnas") / "configs" / kind
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def reference_names() -> list[str]:
    """The packaged reference architectures, by name."""
    return _names(REFERENCE_DIR)


def space_names() -> list[str]:
    """The packaged search spaces, by name."""
    return _names(SPACES_DIR)


def packaged_path(kind: str, name: str) -> Path:
    """The file of a packaged config (``kind`` is ``reference`` or ``spaces``); ConfigError if there is none."""
    resource = files("mixnas") / "configs" / kind / f"{name}.yaml"
    if not resource.is_file():
        known = ", ".join(_names(kind))
        raise ConfigError(f"{name}: no such file, and no packaged {kind.rstrip('s')} of that name; packaged: {known}")
    with as_file(resource) as path:  # a real file for a regular install (the package is not zipped)
        return Path(path)


def load_arch(path_or_name: str | Path) -> ArchConfig:
    """An architecture from a YAML/JSON path, or a packaged reference by name (``swin_t``)."""
    p = Path(path_or_name)
    if p.exists() or p.suffix in (".yaml", ".yml", ".json") or len(p.parts) > 1:
        return ArchConfig.load(p)
    return ArchConfig.load(packaged_path(REFERENCE_DIR, str(path_or_name)))


def load_space(path_or_name: str | Path) -> SearchSpace:
    """A search space from a YAML/JSON path, or a packaged one by name (``demo``)."""
    p = Path(path_or_name)
    if p.exists() or p.suffix in (".yaml", ".yml", ".json") or len(p.parts) > 1:
        return SearchSpace.from_yaml(p)
    return SearchSpace.from_yaml(packaged_path(SPACES_DIR, str(path_or_name)))


__all__ = ["load_arch", "load_space", "packaged_path", "reference_names", "space_names"]
