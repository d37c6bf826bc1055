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

# `make test` runs the suite on two pytest-xdist workers (``-n 2 --dist loadgroup``). The tests that start
# process trees run one after another within their group, each group on one worker: the Ray tests (two
# local Ray instances on one machine would find each other's cluster and share Ray's token file) and the
# launchers (torchrun, the CLI under a lock). The groups go first, then the files that hold slow tests, so
# that no long test ends the run alone while the other worker idles (xdist hands tests out in this order);
# each file's tests keep their order, so its module fixtures are made once a worker. Each worker keeps
# torch to one thread: two workers do not oversubscribe the two cores.
SERIAL_GROUPS = {
    "ray": {"test_ray_runner.py", "test_ray_cluster.py", "test_plugins.py", "test_ranking.py"},
    "launchers": {"test_training.py", "test_lock.py"},
}
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook, which reads the groups off the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    group_of = {name: group for group, names in SERIAL_GROUPS.items() for name in names}
    for item in items:
        if item.path.name in group_of:
            item.add_marker(pytest.mark.xdist_group(group_of[item.path.name]))
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    # Stable: the groups first, then the files with slow tests, each file's order kept.
    items.sort(key=lambda item: (item.path.name not in group_of, item.path not in slow_files))


@pytest.fixture(autouse=True)
def _serial_group_holds(request: pytest.FixtureRequest) -> None:
    """Under ``--dist loadgroup``, a test of a serial group fails unless its group reached the scheduler:
    xdist marks a grouped test by its node id (``...@ray``), and with pytest 9.2 that mark silently does
    nothing (pytest-xdist#1386), so the group's tests would run beside each other."""
    mark = request.node.get_closest_marker("xdist_group")
    grouping = getattr(request.config.option, "loadgroup", False)
    if mark and grouping and not request.node.nodeid.endswith("@" + mark.args[0]):
        pytest.fail(f"--dist loadgroup does not group this test with the rest of {mark.args[0]!r}: this pytest and "
                    "pytest-xdist do not work together (pytest-xdist#1386); use the versions in constraints.txt",
                    pytrace=False)


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


@pytest.fixture(scope="session")
def reference_model() -> Callable[[str], torch.nn.Module]:
    """``reference_model(name)``: the shipped reference network at full size, built once per session (about a
    second each at ImageNet widths); tests read it and must not change it (its weights, its mode)."""
    from mixnas import build_model
    from mixnas.packaged import load_arch

    built: dict[str, torch.nn.Module] = {}

    def get(name: str) -> torch.nn.Module:
        if name not in built:
            built[name] = build_model(load_arch(name)).eval()
        return built[name]

    return get


@pytest.fixture(scope="session")
def tiny_run(trained_run: TrainedRun) -> Path:
    """The supernet of ``tests.tiny.TINY_SPACE``, trained once per session (copy it before changing it)."""
    from tests.tiny import TINY_SPACE, TINY_TRAINING

    return trained_run(TINY_SPACE, **TINY_TRAINING)


@pytest.fixture(scope="session")
def static_run(trained_run: TrainedRun) -> Path:
    """The supernet of ``tests.tiny.STATIC_SPACE`` (static mixers only), trained once per session."""
    from tests.tiny import STATIC_SPACE, STATIC_TRAINING

    return trained_run(STATIC_SPACE, **STATIC_TRAINING)
