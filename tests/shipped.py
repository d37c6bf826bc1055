"""The shipped search spaces as the tests use them: ``num_classes: auto`` resolved to the digits' 10."""

from __future__ import annotations

from pathlib import Path

from mixnas.search_space import SearchSpace


def shipped_space(path: str | Path, num_classes: int = 10) -> SearchSpace:
    space = SearchSpace.from_yaml(path)
    return space.with_num_classes(num_classes) if space.num_classes_auto else space
