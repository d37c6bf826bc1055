"""The shipped search spaces and references as the tests use them: ``num_classes: auto`` resolved to the
digits' 10; references reduced to a size a 2-core machine builds and exports in seconds."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from mixnas.search_space import ArchConfig, SearchSpace


def shipped_space(path: str | Path, num_classes: int = 10) -> SearchSpace:
    space = SearchSpace.from_yaml(path)
    return space.with_num_classes(num_classes) if space.num_classes_auto else space


def reduced(arch: ArchConfig, max_depth: int = 2) -> ArchConfig:
    """The architecture at 8 channels per head, at most ``max_depth`` blocks a stage (2: shifted windows
    alternate) and 10 classes; its mixers, mixer parameters, layout and input size unchanged."""
    stages = tuple(replace(s, depth=min(s.depth, max_depth), dim=s.heads * 8) for s in arch.stages)
    return replace(arch, stages=stages, num_classes=10)
