"""Fixtures shared by several test modules."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

# The sealing key of Ray experiments (mixnas.search.seal) goes to a folder of this test session, never to the
# user's own ~/.config; set before any test runs so that subprocesses (the CLI, Ray workers) inherit it.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="mixnas-test-config-")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module whose tensors are tiny: on a shared machine intra-op threads only
    add contention (10x slower), and the previous count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TrainedRun = Callable[..., Path]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """``trained_run(space_dict, **train_config) -> run_dir``: a tiny supernet trained on digits, once per
    session for each distinct space and settings. Tests copy the directory rather than change it."""
    from mixnas.search_space import SearchSpace
    from mixnas.training import TrainConfig, train_supernet

    runs: dict[str, Path] = {}

    def get(space: dict[str, Any], **config: Any) -> Path:
        key = json.dumps([space, config], sort_keys=True)
        if key not in runs:
            run = tmp_path_factory.mktemp("trained") / "run"
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                train_supernet(SearchSpace.from_dict(space), run, TrainConfig(**config), device="cpu", progress=False)
            finally:
                torch.set_num_threads(threads)
            runs[key] = run
        return runs[key]

    return get
