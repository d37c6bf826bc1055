"""The contract every registered mixer keeps, built-in or plug-in, as timm's tests/test_models.py holds every
model of ``list_models()`` to one contract.

The tests are parametrized over ``mixer_names()`` at collection time, so a mixer installed as a plug-in (a
``mixnas.mixers`` entry point, tests/test_plugins.py) is covered without editing this file: run it with
the plug-in importable. For each mixer a tiny network is derived from its spec alone: its parameters at
their defaults, at the first small geometry its ``check`` accepts, and a space that also offers a second
configuration (one cost-affecting parameter changed) and two widths. Each mixer is then checked for a
forward and backward pass reaching every parameter, exact extraction from the supernet, FLOPs equal to the
cost table's independent count with no op left uncounted, an entry in a latency table, its export name,
round trips (YAML, Optuna parameters, the guided sampler's genomes), its labels and colour, and (slow)
ONNX export equal to eager PyTorch. Behaviour specific to one mixer is tested in tests/test_mixers.py.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import torch
from torch import Tensor

from mixnas.errors import ConfigError
from mixnas.results.export import export_name
from mixnas.search.cost_table import CostTable
from mixnas.search.encoding import ArchCodec
from mixnas.search.latency_lut import arch_components, build_latency_table
from mixnas.search.profiler import count_flops, count_params, unsupported_ops
from mixnas.search_space import (
    ArchConfig,
    BoolParam,
    FloatParam,
    IntParam,
    MixerConfig,
    MixerSpec,
    Param,
    SearchSpace,
    SetParam,
    get_mixer,
    mixer_names,
)
from mixnas.supernet import Supernet, budget_loss, build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

MIXERS = mixer_names()  # at collection: the built-ins and every installed plug-in
# First-stage resolutions (tokens on a side) tried in turn, two stages (the second at half) or one: the
# first geometry the mixer's defaults pass its own check at. 14 serves a window of 7 (Swin's default).
GEOMETRIES = [(8, 2), (14, 2), (16, 2), (12, 2), (7, 1), (8, 1), (14, 1), (16, 1)]
WIDTHS = (8, 16)  # the first stage's choices; the second stage is 16 wide
PATCH = 2


@dataclass(frozen=True)
class Case:
    """A mixer's tiny networks.

    Args:
        arch: the mixer at its defaults in every stage, at the larger width.
        space: ``arch``'s space, also offering ``alternative`` and the smaller width in the first stage.
        archs: every architecture of ``space``.
        alternative: the second configuration of the mixer (None when no parameter can change).
    """

    arch: ArchConfig
    space: SearchSpace
    archs: tuple[ArchConfig, ...]
    alternative: MixerConfig | None


def alternatives(p: Param) -> list[Any]:
    """Values other than ``p``'s default to try, nearest first (each still goes through ``p.parse``)."""
    d = p.default
    if isinstance(p, BoolParam):
        return [not d]
    if isinstance(p, IntParam):
        return [d - 2, d + 2, d - 1, d + 1, d * 2, d // 2, p.minimum]
    if isinstance(p, FloatParam):
        return [d / 2, d * 2, (d + p.high) / 2 if p.high is not None else d + 1]
    if isinstance(p, SetParam):  # one element left out, the largest first
        return [[g for g in d if g != left_out] for left_out in sorted(d, reverse=True) if len(d) > 1]
    return []


def arch_dict(spec: MixerSpec, mixer: dict[str, Any], resolution: int, stages: int, dim: int = WIDTHS[-1],
              first: dict[str, Any] | None = None) -> dict[str, Any]:
    """A network of ``stages`` stages (2 blocks, then 1), ``mixer`` in each (``first`` in the first)."""
    ffn = spec.ffn_types[0] if spec.ffn_types else "mlp"
    return {
        "input_size": resolution * PATCH, "num_classes": 5, "patch_size": PATCH,
        "layout": "hierarchical" if stages > 1 else "isotropic",
        "stages": [{"depth": 2 if i == 0 else 1, "dim": dim if i == 0 else WIDTHS[-1], "heads": 2,
                    "mlp_ratio": 2.0, "ffn": ffn, "mixer": (first or mixer) if i == 0 else mixer}
                   for i in range(stages)],
    }


def valid(d: dict[str, Any]) -> bool:
    try:
        ArchConfig.from_dict(d)
    except ConfigError:
        return False
    return True


@functools.cache
def case(name: str) -> Case:
    spec = get_mixer(name)
    default = MixerConfig.of(name).to_dict()
    geometry = next((g for g in GEOMETRIES if valid(arch_dict(spec, default, *g))), None)
    assert geometry is not None, (
        f"mixer {name!r}: its defaults pass its check at none of the resolutions {GEOMETRIES}; "
        "give its parameters defaults that run on a small map")
    other = None
    for p in (p for p in spec.params if p.affects_cost):
        for value in alternatives(p):
            try:
                parsed = p.parse(value, p.name)
            except ConfigError:
                continue
            if parsed != p.default and valid(arch_dict(spec, default, *geometry,
                                                       first={**default, p.name: p.to_yaml(parsed)})):
                other = MixerConfig.of(name).with_params(**{p.name: parsed})
                break
        if other is not None:
            break
    arch = ArchConfig.from_dict(arch_dict(spec, default, *geometry))
    space_dict = {**arch_dict(spec, default, *geometry), "name": f"contract-{name}"}
    for i, stage in enumerate(space_dict["stages"]):
        options = [MixerConfig.of(name)] + ([other] if other is not None and i == 0 else [])
        stage.update(
            depth=[stage["depth"]], dim=list(WIDTHS) if i == 0 else [stage["dim"]], heads=[2], mlp_ratio=[2.0],
            ffn=[stage["ffn"]],
            mixers={name: {p.name: [p.to_yaml(v) for v in dict.fromkeys(o.get(p.name) for o in options)]
                           for p in spec.params}},
        )
        del stage["mixer"]
    space = SearchSpace.from_dict(space_dict)
    archs = []
    for mixer in [MixerConfig.of(name)] + ([other] if other is not None else []):
        for dim in WIDTHS:
            first = replace(arch.stages[0], dim=dim, mixer=mixer)
            archs.append(replace(arch, stages=(first, *arch.stages[1:])))
    assert all(space.contains(a) for a in archs) and space.contains(arch)
    return Case(arch, space, tuple(archs), other)


def images(arch: ArchConfig, batch: int = 2) -> Tensor:
    return torch.randn(batch, 3, arch.input_size, arch.input_size, generator=torch.Generator().manual_seed(0))


def mixer_params(arch: ArchConfig) -> list[dict[str, Any]]:
    return [s.mixer.to_dict() for s in arch.stages]


# --------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", MIXERS)
def test_forward_and_backward_reach_every_parameter(name: str) -> None:
    arch = case(name).arch
    torch.manual_seed(0)
    model = build_model(arch).train()
    x = images(arch)
    res = arch.resolutions[-1]
    assert model.forward_features(x).shape == (2, res, res, arch.stages[-1].dim)
    logits, costs = model.forward_with_costs(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    assert bool(costs) == get_mixer(name).input_dependent_cost  # only input-dependent mixers report a cost
    loss = (logits * torch.randn_like(logits)).sum()
    budget = budget_loss(costs)
    (loss if budget is None else loss + budget).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a (finite) gradient: {missing}"


@pytest.mark.parametrize("name", MIXERS)
def test_extraction_from_the_supernet_is_exact(name: str) -> None:
    """Every architecture of a space with two configurations and two widths: the standalone network
    ``extract`` hands out computes what the supernet computes for it, with the parameters of ``build_model``."""
    c = case(name)
    torch.manual_seed(0)
    supernet = Supernet(c.space).eval()
    with torch.no_grad():  # move every weight and statistic off its initial value, so that slicing shows
        for key, t in supernet.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if key.endswith("running_var") else t + 0.1 * torch.randn_like(t))
    x = images(c.arch)
    for arch in c.archs:
        sub = supernet.extract(arch).eval()
        with torch.no_grad():
            torch.testing.assert_close(sub(x), supernet(x, arch), rtol=1e-5, atol=1e-5,
                                       msg=lambda m, a=arch: f"{mixer_params(a)}, dim {a.stages[0].dim}: {m}")
        assert count_params(sub) == count_params(build_model(arch))


@pytest.mark.parametrize("name", MIXERS)
def test_flops_are_counted_and_equal_the_cost_table(name: str) -> None:
    c = case(name)
    model = build_model(c.arch).eval()
    x = images(c.arch, 1)
    assert unsupported_ops(model, x) == {}, "ops the FLOP count leaves out (register a handle or list them free)"
    assert count_flops(model, x) > 0
    if get_mixer(name).input_dependent_cost:
        pytest.skip("input-dependent cost: the table counts the densest routing; tests/test_cost.py and "
                    "tests/test_guided_search.py compare it with the per-image counts")
    table = CostTable(c.space)
    # the defaults at the larger width, the alternative at the smaller
    for arch in dict.fromkeys((c.archs[1], c.archs[-2])):
        model = build_model(arch).eval()
        gflops, params = table.arch_cost(arch)
        assert gflops == pytest.approx(count_flops(model, x) / 1e9, rel=1e-12), mixer_params(arch)
        assert params == count_params(model)


@pytest.mark.parametrize("name", MIXERS)
def test_the_latency_table_has_an_entry_for_it(name: str) -> None:
    c = case(name)
    table = build_latency_table(c.space, runs=1, warmup=0, calibration_archs=0, progress=False)
    for arch in c.archs:
        keys = arch_components(arch)
        assert set(keys) <= set(table.entries)
        assert any(f"/{name}(" in k for k in keys)
        assert math.isfinite(table.predict(arch)) and table.predict(arch) > 0


@pytest.mark.parametrize("name", MIXERS)
def test_export_name_and_round_trips(name: str, tmp_path: Path) -> None:
    """The export file name, the ArchConfig and SearchSpace YAML, Optuna's parameters and the guided
    sampler's genomes all give the mixer's configurations back."""
    c = case(name)
    spec = get_mixer(name)
    row = pd.Series({"number": 3, "accuracy": 50.0, "gflops": 0.001})
    assert export_name(row, c.arch).endswith("_" + "-".join([spec.abbreviation] * len(c.arch.stages)))
    SearchSpace.from_dict(c.space.to_dict()).to_yaml(tmp_path / "space.yaml")
    assert SearchSpace.from_yaml(tmp_path / "space.yaml") == c.space
    codec = ArchCodec(c.space)
    for i, arch in enumerate(c.archs):
        arch.to_yaml(tmp_path / f"{i}.yaml")
        again = ArchConfig.from_yaml(tmp_path / f"{i}.yaml")
        assert again == arch and again.arch_id == arch.arch_id
        assert c.space.suggest(optuna.trial.FixedTrial(c.space.params_of(arch))) == arch
        assert codec.decode(codec.encode(arch)) == arch


@pytest.mark.parametrize("name", MIXERS)
def test_labels_and_colour(name: str) -> None:
    c = case(name)
    spec = get_mixer(name)
    assert spec.name == name and re.fullmatch(r"[a-z0-9_]+", spec.abbreviation), spec.abbreviation
    assert re.fullmatch(r"#[0-9a-fA-F]{6}", spec.color), spec.color
    labels = {a.stages[0].mixer.short() for a in c.archs}
    assert all(label and not re.search(r"[\s/]", label) for label in labels), labels
    if c.alternative is not None:  # two configurations of different cost read differently in tables
        assert len(labels) == 2, labels


@pytest.mark.slow
@pytest.mark.parametrize("name", MIXERS)
def test_onnx_export_equals_eager(name: str, tmp_path: Path) -> None:
    """About 3 s a network (tests/test_deploy.py exports the references and random architectures)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from mixnas.supernet.deploy import export_onnx, onnx_run, onnx_session

    arch = case(name).arch
    torch.manual_seed(0)
    model = build_model(arch).train()
    with torch.no_grad():
        model(images(arch, 4))  # BatchNorm statistics off their defaults, as a trained network's are
    model.eval()
    x = images(arch, 3)
    path = export_onnx(model, tmp_path / f"{name}.onnx")
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(onnx_run(onnx_session(path), x), expected, rtol=1e-4, atol=1e-4)
