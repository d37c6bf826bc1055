"""Mixers as plug-ins: the ``mixnas.mixers`` entry points.

In this process (fast): packages laid out as pip installs them (a module and its ``.dist-info`` on
sys.path) register their specs, a class or an instance, also when the plug-in's module is imported before
mixnas; a plug-in that fails to import, names no spec, takes a built-in's or another plug-in's name, or a
name the registry refuses costs one warning line each, and mixnas goes on without it.
In subprocesses (slow), with examples/mixnas-pool-mixer installed by pip into a folder on PYTHONPATH, as a
user installs it: ``mixnas profile`` of an architecture using the pool mixer; a supernet trained on digits
and a Ray search whose worker processes score pool architectures; a broken plug-in beside it costs one
line and nothing else; and tests/test_mixer_contract.py collects and passes the pool mixer.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

from mixnas import ArchConfig, build_model
from mixnas.search_space import get_mixer, mixer_names, unregister_mixer
from mixnas.supernet.mixers import ENTRY_POINT_GROUP, load_plugins, plugin_mixers

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mixnas-pool-mixer"
WARNING_PREFIX = "mixnas: mixer plug-in "


def install_by_hand(site: Path, dist: str, modules: dict[str, str], entry_points: dict[str, str]) -> Path:
    """Lay out a distribution in ``site`` as pip's ``--target`` does: its modules and a ``.dist-info``
    holding its metadata and ``mixnas.mixers`` entry points (name -> ``module:attr``)."""
    site.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n" + "".join(f"{name} = {target}\n" for name, target in entry_points.items()))
    return site


# ------------------------------------------------------------------------------------------- in process
GOOD = """
    from torch import nn

    from mixnas.search_space import MixerSpec
    from mixnas.supernet import MixerContext  # a public name of mixnas.supernet: plug-ins load after it


    class Identity(nn.Module):
        def forward(self, x, ctx: MixerContext):
            return x


    class IdentitySpec(MixerSpec):
        name = "plugin_identity"
        abbreviation = "id"
        uses_heads = False

        def build(self, dim, heads, limits, resolution):
            return Identity()


    class SecondSpec(IdentitySpec):
        name = "plugin_second"
        abbreviation = "second"


    SECOND = SecondSpec()  # an entry point may name an instance
"""
BAD = """
    from mixnas.search_space import MixerSpec


    class DWConvAgain(MixerSpec):
        name = "dwconv"
        abbreviation = "dw2"


    class IdentityAgain(MixerSpec):
        name = "plugin_identity"
        abbreviation = "id2"


    class Unnamed(MixerSpec):
        name = "Not A Name"
        abbreviation = "x"


    NOT_A_SPEC = {"name": "dict"}
"""


@pytest.fixture
def plugins_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A site folder on sys.path for the test's packages; their mixers and modules are forgotten after."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    before = set(mixer_names())
    yield site
    for name in set(mixer_names()) - before:
        unregister_mixer(name)
    for module in [m for m in sys.modules if m.startswith("plugin_test_")]:
        del sys.modules[module]


def test_entry_points_register_a_spec_class_or_instance(plugins_on_path: Path, caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    install_by_hand(plugins_on_path, "good-mixers", {"plugin_test_good": GOOD},
                    {"plugin_identity": "plugin_test_good:IdentitySpec", "plugin_second": "plugin_test_good:SECOND"})
    with caplog.at_level(logging.WARNING):
        loaded = load_plugins()
        assert load_plugins() == loaded  # loading again keeps what is registered, and says nothing
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert {k: v for k, v in loaded.items() if k.startswith("plugin_")} == {  # (others may be installed)
        "plugin_identity": "plugin_identity = plugin_test_good:IdentitySpec",
        "plugin_second": "plugin_second = plugin_test_good:SECOND"}
    assert mixer_names()[-2:] == ["plugin_identity", "plugin_second"]  # after the built-ins
    arch = ArchConfig.from_dict({"input_size": 16, "num_classes": 3, "patch_size": 4, "stages": [
        {"depth": 1, "dim": 8, "heads": 2, "mlp_ratio": 2.0, "mixer": {"type": "plugin_second"}}]})
    assert build_model(arch)(torch.randn(1, 3, 16, 16)).shape == (1, 3)
    unregister_mixer("plugin_second")
    assert "plugin_second" not in plugin_mixers()


EARLY = """
    from mixnas.supernet.mixers import load_plugins

    load_plugins()  # what `import mixnas` does when a user's first import is this module (it imports mixnas)

    from mixnas.search_space import MixerSpec


    class EarlySpec(MixerSpec):
        name = "plugin_early"
        abbreviation = "early"
"""


def test_a_plugin_imported_before_mixnas_registers_once_its_module_is_complete(
        plugins_on_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    install_by_hand(plugins_on_path, "early-mixer", {"plugin_test_early": EARLY},
                    {"plugin_early": "plugin_test_early:EarlySpec"})
    with caplog.at_level(logging.WARNING):
        import plugin_test_early  # noqa: F401  (its spec does not exist yet when it loads the plug-ins)

        assert "plugin_early" in mixer_names()  # registered at the registry's first lookup afterwards
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert plugin_mixers()["plugin_early"] == "plugin_early = plugin_test_early:EarlySpec"


def test_each_failing_plugin_costs_one_warning_line(plugins_on_path: Path, caplog: pytest.LogCaptureFixture
                                                     ) -> None:
    install_by_hand(plugins_on_path, "good-mixers", {"plugin_test_good": GOOD},
                    {"plugin_identity": "plugin_test_good:IdentitySpec"})
    install_by_hand(plugins_on_path, "bad-mixers",
                    {"plugin_test_bad": BAD, "plugin_test_raises": "raise RuntimeError('no GPU here\\nat all')\n"},
                    {"raises": "plugin_test_raises:Spec", "missing": "plugin_test_nowhere:Spec",
                     "dict": "plugin_test_bad:NOT_A_SPEC", "dwconv": "plugin_test_bad:DWConvAgain",
                     "twice": "plugin_test_bad:IdentityAgain", "unnamed": "plugin_test_bad:Unnamed"})
    before = mixer_names()
    with caplog.at_level(logging.WARNING):
        load_plugins()
    lines = sorted(r.getMessage() for r in caplog.records)
    assert all("\n" not in line and line.startswith(WARNING_PREFIX) for line in lines), lines
    assert len(lines) == 6, lines
    expected = {
        "'dict = plugin_test_bad:NOT_A_SPEC' (from bad-mixers 0.1) not loaded: TypeError: plugin_test_bad:NOT_A_SPEC"
        " is {'name': 'dict'}, not a MixerSpec subclass or instance",
        "'dwconv = plugin_test_bad:DWConvAgain' (from bad-mixers 0.1) refused: 'dwconv' is a built-in mixer",
        "'missing = plugin_test_nowhere:Spec' (from bad-mixers 0.1) not loaded: ModuleNotFoundError: No module "
        "named 'plugin_test_nowhere'",
        "'raises = plugin_test_raises:Spec' (from bad-mixers 0.1) not loaded: RuntimeError: no GPU here at all",
        "'twice = plugin_test_bad:IdentityAgain' (from bad-mixers 0.1) refused: mixer 'plugin_identity' is already "
        "registered (by plugin_identity = plugin_test_good:IdentitySpec)",
        "'unnamed = plugin_test_bad:Unnamed' (from bad-mixers 0.1) not loaded: ValueError: mixer name 'Not A Name'",
    }
    for line, start in zip(lines, sorted(expected)):
        assert line.startswith(WARNING_PREFIX + start), line
    assert mixer_names() == [*before, "plugin_identity"]  # the good one only; the built-ins untouched
    assert type(get_mixer("dwconv")).__module__ == "mixnas.supernet.mixers.dwconv"


# ------------------------------------------------------------------------------- installed, in subprocesses
POOL_ARCH = """\
input_size: 32
num_classes: 10
patch_size: 4
stages:
  - {depth: 2, dim: 16, heads: 2, mlp_ratio: 2.0, mixer: {type: pool, pool_size: 3}}
  - {depth: 1, dim: 32, heads: 2, mlp_ratio: 2.0, mixer: {type: dwconv, kernel_size: 3}}
"""
# One stage of 4x4 tokens, the pool mixer listed first: the search's warm start (the space's largest and
# smallest architectures) scores pool networks in its first two trials.
POOL_SPACE = """\
name: pool-tiny
input_size: 16
num_classes: 10
patch_size: 4
stages:
  - depth: [1]
    dim: [8, 16]
    heads: [2]
    mlp_ratio: [2.0]
    mixers: {pool: {pool_size: [3, 5]}, dwconv: {kernel_size: [3]}}
"""


@pytest.fixture(scope="module")
def pool_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/mixnas-pool-mixer installed by pip, offline, into a folder (built from a copy, so that the
    build leaves nothing in the working tree)."""
    root = tmp_path_factory.mktemp("pool")
    source = shutil.copytree(EXAMPLE, root / "source", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = root / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return site


def run(args: list[str], *sites: Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """A command with ``sites`` on PYTHONPATH (as a user's environment with those packages installed)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, sites), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def mixnas_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mixnas.cli", *args]


def plugin_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if WARNING_PREFIX in line]


@pytest.mark.slow
def test_profile_from_a_shell_knows_the_installed_plugin(pool_site: Path, tmp_path: Path) -> None:
    (tmp_path / "pool.yaml").write_text(POOL_ARCH)
    proc = run(mixnas_cli("profile", "pool.yaml", "--no-latency", "--json"), pool_site, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    profile = json.loads(proc.stdout)
    assert profile["params"] > 0 and profile["gflops"] > 0
    assert not plugin_warnings(proc.stderr), proc.stderr


@pytest.mark.slow
def test_a_broken_plugin_costs_one_line_and_mixnas_still_works(pool_site: Path, tmp_path: Path) -> None:
    broken = install_by_hand(tmp_path / "broken", "broken-mixer",
                             {"broken_mixer": "raise ImportError('needs a library this machine lacks')\n"},
                             {"broken": "broken_mixer:BrokenSpec"})
    (tmp_path / "pool.yaml").write_text(POOL_ARCH)
    proc = run(mixnas_cli("profile", "pool.yaml", "--no-latency", "--json"), pool_site, broken, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["params"] > 0  # the good plug-in beside it still works
    assert plugin_warnings(proc.stderr) == [
        "mixnas: mixer plug-in 'broken = broken_mixer:BrokenSpec' (from broken-mixer 0.1) not loaded: "
        "ImportError: needs a library this machine lacks"], proc.stderr


@pytest.mark.slow
def test_supernet_training_and_a_ray_search_use_the_plugin(pool_site: Path, tmp_path: Path) -> None:
    """The CLI trains, and Ray's worker processes (not the driver) score pool architectures: every process
    that imports mixnas knows the installed plug-in. About 40 s, most of it Ray starting."""
    (tmp_path / "space.yaml").write_text(POOL_SPACE)
    train = run(mixnas_cli("supernet", "train", "--space", "space.yaml", "--data", "digits", "--epochs", "1",
                           "--steps-per-epoch", "2", "--batch-size", "16", "--calib-batches", "1", "--out", "run",
                           "--quiet"), pool_site, cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-2000:]
    search = subprocess.Popen(
        mixnas_cli("search", "run", "--trials", "2", "--backend", "ray", "--address", "local",
                   "--max-concurrent", "2", "--cpus-per-trial", "1", "--latency", "none",
                   "--objectives", "accuracy,flops", "--val-limit", "16", "--flops-images", "1", "--quiet"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(pool_site), os.environ.get("PYTHONPATH", "")])),
    )
    try:
        out, err = search.communicate(timeout=300)
    finally:
        search.kill()
    assert search.returncode == 0, (out + err)[-3000:]
    assert not plugin_warnings(err), err
    table = pd.read_parquet(tmp_path / "run" / "trials.parquet")
    searched = table[~table["is_reference"]]
    assert len(searched) == 2 and (searched["state"] == "COMPLETE").all() and set(searched["backend"]) == {"ray"}
    mixers = [{s["mixer"]["type"] for s in json.loads(a)["stages"]} for a in searched["arch"]]
    assert any("pool" in m for m in mixers), mixers
    assert (searched["gflops"] > 0).all()
    reports = [json.loads((d / "result.json").read_text().splitlines()[-1])
               for d in sorted((tmp_path / "run" / "search" / "ray").glob("trial_*"))]
    assert len(reports) == 2 and all(r["pid"] != search.pid for r in reports)  # scored in Ray workers


@pytest.mark.slow
def test_the_mixer_contract_collects_and_passes_the_installed_plugin(pool_site: Path) -> None:
    """The contract's parameters come from ``mixer_names()`` at collection: the pool mixer is among them."""
    proc = run([sys.executable, "-m", "pytest", "tests/test_mixer_contract.py", "-rA", "-p", "no:cacheprovider",
                "-m", "not slow", "-k", "pool"], pool_site, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:]
    passed = [line for line in proc.stdout.splitlines() if line.startswith("PASSED ")]
    assert passed and all(line.endswith("[pool]") for line in passed), proc.stdout[-2000:]
