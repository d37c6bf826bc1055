"""Deployment: every mixer's export form equals its evaluation; ONNX Runtime equals eager PyTorch within 1e-4
on every shipped reference and 20 random architectures of each shipped space; a saved torch.export program
round-trips; the export command writes the files and refuses what it cannot do, before writing anything.

The references and random architectures are reduced (8 channels a head, at most 2 blocks a stage for the
references, so that shifted windows alternate, and 1 for the random ones; 10 classes): their mixers, mixer
parameters, layout and input size are kept.
The exporter's time grows with the operations traced (about 3 s a network here), not with the widths."""

from __future__ import annotations

import builtins
import random
from pathlib import Path

import onnx
import pytest
import torch
from shipped import reduced
from torch import nn

from mixnas import ArchConfig, build_model
from mixnas.cli import main
from mixnas.packaged import load_arch, load_space, reference_names, space_names
from mixnas.supernet import deploy
from mixnas.supernet.checkpoint import load_weights
from mixnas.supernet.deploy import (
    DeployError,
    export_onnx,
    onnx_run,
    onnx_session,
    require,
    save_program,
)
from mixnas.supernet.mixers import export_form_of
from tests.test_search import copy_run

pytestmark = pytest.mark.usefixtures("one_thread")
TOLERANCE = 1e-4
RANDOM_PER_SPACE = 20


def random_archs(space_name: str, n: int = RANDOM_PER_SPACE) -> list[ArchConfig]:
    space = load_space(space_name)
    space = space.with_num_classes(10) if space.num_classes is None else space
    rng = random.Random(11)
    return [reduced(space.sample(rng), max_depth=1) for _ in range(n)]


def images(arch: ArchConfig, n: int = 3) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(n, arch.in_chans, arch.input_size, arch.input_size)


def trained_like(arch: ArchConfig) -> nn.Module:
    """The network with its BatchNorm statistics moved off their defaults, as a trained network's are."""
    model = build_model(arch)
    model.train()
    with torch.no_grad():
        model(images(arch, 4))
    return model.eval()


@pytest.mark.parametrize("space_name", space_names())
def test_export_forms_equal_evaluation(space_name: str) -> None:
    """Every mixer's export form (DGE's static routing, the spelled-out attention, the shifted-copy dynamic
    conv) gives the evaluation's outputs, in PyTorch, on the shipped references and random architectures."""
    archs = random_archs(space_name) + ([reduced(load_arch(n)) for n in reference_names()]
                                         if space_name == space_names()[0] else [])
    for arch in archs:
        model = trained_like(arch)
        x = images(arch)
        with torch.no_grad():
            expected = model(x)
            with export_form_of(model) as switched:
                got = model(x)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=lambda m, a=arch: f"{a.summary()}: {m}")
        assert not any(getattr(m, "export_form", False) for m in model.modules())  # restored
        assert all(isinstance(name, str) for name in switched)


@pytest.mark.slow
@pytest.mark.parametrize("name", reference_names())
def test_onnx_runtime_equals_eager_on_every_reference(name: str, tmp_path: Path) -> None:
    arch = reduced(load_arch(name))
    model = trained_like(arch)
    path = export_onnx(model, tmp_path / f"{name}.onnx")
    x = images(arch, 3)  # exported at batch 2: the batch dimension is dynamic
    with torch.no_grad():
        expected = model(x)
    got = onnx_run(onnx_session(path, threads=1), x)
    assert (got - expected).abs().max().item() <= TOLERANCE
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no temporary left
    # No node carries the stack trace of mixnas's code (this machine's file paths; torch's own passes still
    # name their relative paths), and tracing records them again afterwards.
    traces = [p.value for n in onnx.load(path).graph.node for p in n.metadata_props if "stack_trace" in p.key]
    assert traces and not [t for t in traces if 'File "/' in t or "mixnas" in t], traces[:3]
    assert not torch.fx.config.do_not_emit_stack_traces


class _Several(nn.Module):
    """Several networks taking the same images, exported as one graph (the exporter's fixed cost paid once)."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(m(x) for m in self.models)


@pytest.mark.slow
@pytest.mark.parametrize("space_name", space_names())
def test_onnx_runtime_equals_eager_on_random_architectures(space_name: str, tmp_path: Path) -> None:
    archs = random_archs(space_name)
    models = [trained_like(a) for a in archs]
    several = _Several(models).eval()
    several.pretrained_cfg = models[0].pretrained_cfg  # the input size they share
    # Unoptimised: the exporter's graph optimizer (run for the references) is superlinear in a graph this large.
    path = export_onnx(several, tmp_path / "several.onnx", optimize=False)
    session = onnx_session(path, threads=1)
    x = images(archs[0], 3)
    outputs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert len(outputs) == len(archs)
    for arch, model, out in zip(archs, models, outputs):
        with torch.no_grad():
            diff = (torch.from_numpy(out) - model(x)).abs().max().item()
        assert diff <= TOLERANCE, f"{space_name}: {arch.summary()}: {diff:.2e}"


@pytest.mark.slow
def test_saved_torch_export_program_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    programs: list[object] = []  # what export_program returned to save_program, each time
    real = deploy.export_program
    monkeypatch.setattr(deploy, "export_program", lambda *a, **k: programs.append(real(*a, **k)) or programs[-1])
    for name in ("deit_t_dge", "ddwnet_t"):
        arch = reduced(load_arch(name))
        model = trained_like(arch)
        path = save_program(model, tmp_path / f"{name}.pt2")
        loaded = torch.export.load(path).module()
        x = images(arch, 5)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-5)
    assert len(programs) == 2 and all(isinstance(p, torch.export.ExportedProgram) for p in programs)


def test_missing_deploy_extra_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_onnx(name: str, *args, **kwargs):
        if name.split(".")[0] in ("onnx", "onnxruntime", "onnxscript"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    monkeypatch.delitem(__import__("sys").modules, "onnx", raising=False)
    monkeypatch.delitem(__import__("sys").modules, "onnxruntime", raising=False)
    with pytest.raises(DeployError, match=r"pip install 'mixnas\[deploy\]'") as info:
        require("onnx")
    assert "\n" not in str(info.value)
    with pytest.raises(DeployError, match="onnxruntime"):
        onnx_session("whatever.onnx")


def test_cli_export_onnx_and_torch_export(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(tiny_run, tmp_path)
    assert main(["search", str(run), "--trials", "2", "--objectives", "accuracy,flops", "--latency", "none",
                 "--val-limit", "64", "--quiet", "--seed", "3"]) == 0
    out = tmp_path / "deploy"
    # Refused before anything is written: a format without weights.
    assert main(["export", str(run), "--trial", "0", "--format", "onnx", "--out", str(out), "--quiet"]) == 2
    assert "--weights" in capsys.readouterr().err and not out.exists()
    assert main(["export", str(run), "--trial", "0", "--weights", "--format", "onnx", "--format", "torch-export",
                 "--out", str(out), "--quiet"]) == 0
    yaml_path = next(out.glob("trial0000_*.yaml"))
    stem = yaml_path.with_suffix("")
    for suffix in (".safetensors", ".onnx", ".pt2"):
        assert Path(str(stem) + suffix).is_file(), suffix
    manifest = (out / "exported.csv").read_text()
    assert ".onnx" in manifest and ".pt2" in manifest
    arch = ArchConfig.from_yaml(yaml_path)
    model = load_weights(build_model(arch), Path(str(stem) + ".safetensors")).eval()
    x = images(arch, 4)
    with torch.no_grad():
        expected = model(x)
    assert (onnx_run(onnx_session(Path(str(stem) + ".onnx"), 1), x) - expected).abs().max().item() <= TOLERANCE
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(Path(str(stem) + ".pt2")).module()(x), expected,
                                   atol=1e-5, rtol=1e-5)
