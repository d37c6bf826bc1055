"""A seventh mixer, registered from this file alone, runs through everything: configs and spaces, sampling,
the supernet and extraction, ``mixnas profile``, training and a two-trial search; then it is removed."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from mixnas.cli import main
from mixnas.errors import ConfigError
from mixnas.search import CandidateEvaluator, EvalSettings, SearchSettings
from mixnas.search.optuna_runner import run_optuna_search
from mixnas.search_space import (
    ArchConfig,
    IntParam,
    MixerConfig,
    MixerSpec,
    SearchSpace,
    StageConfig,
    mixer_names,
    register_mixer,
    unregister_mixer,
)
from mixnas.supernet import MixerContext, Supernet, build_model
from mixnas.supernet.elastic import ElasticLinear

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class TokenShift(nn.Module):
    """A toy token mixer: each token takes its left neighbour ``shift`` columns away, then a Linear.

    Args:
        dim: largest width C.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = ElasticLinear(dim, dim)

    def forward(self, x: Tensor, ctx: MixerContext) -> Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        return self.proj(torch.roll(x, shifts=ctx.mixer.shift, dims=2), x.shape[-1])


class TokenShiftSpec(MixerSpec):
    name = "token_shift"
    abbreviation = "ts"
    color = "#8c564b"
    params = (IntParam("shift", 1, "columns each token is shifted by"),)
    uses_heads = False

    def label(self, mixer: MixerConfig) -> str:
        return f"ts{mixer.shift}"

    def check(self, mixer: MixerConfig, stage: StageConfig, resolution: int, path: str) -> None:
        if mixer.shift >= resolution:
            raise ConfigError(f"{path}.shift: {mixer.shift} must be below the stage resolution {resolution}")

    def build(self, dim: int, heads: int, limits: dict[str, Any], resolution: int) -> nn.Module:
        return TokenShift(dim)


SPACE: dict[str, Any] = {
    "name": "toy", "input_size": 32, "num_classes": 10, "patch_size": 8,
    "stages": [
        {"depth": [1, 2], "dim": [16, 24], "heads": [2], "mlp_ratio": [2.0],
         "mixers": {"token_shift": {"shift": [1, 2]}, "dwconv": {"kernel_size": [3]}}},
        {"depth": [1], "dim": [32], "heads": [2], "mlp_ratio": [2.0], "mixers": {"token_shift": {"shift": [1]}}},
    ],
}


@pytest.fixture(scope="module", autouse=True)
def registered() -> Iterator[None]:
    register_mixer(TokenShiftSpec)
    yield
    unregister_mixer("token_shift")
    assert "token_shift" not in mixer_names()


def test_config_space_and_sampling() -> None:
    space = SearchSpace.from_dict(SPACE)
    assert space.stages[0].mixer("token_shift").options() == [MixerConfig.of("token_shift", shift=1),
                                                                MixerConfig.of("token_shift", shift=2)]
    seen = {space.sample(i).stages[0].mixer.short() for i in range(60)}
    assert {"ts1", "ts2", "dw3"} <= seen
    assert space.largest().stages[0].mixer.shift == 2 and space.smallest().stages[0].mixer.shift == 1
    arch = space.largest()
    assert ArchConfig.from_dict(json.loads(arch.canonical_json())) == arch
    d = arch.to_dict()
    d["stages"][1]["mixer"]["shift"] = 9  # the stage is 2x2: the spec's own check refuses it
    with pytest.raises(ConfigError, match=r"stages\[1\].mixer.shift: 9 must be below the stage resolution 2"):
        ArchConfig.from_dict(d)


def test_supernet_and_extraction() -> None:
    torch.manual_seed(0)
    space = SearchSpace.from_dict(SPACE)
    supernet = Supernet(space).eval()
    x = torch.randn(2, 3, 32, 32)
    rng = random.Random(0)
    for arch in [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(4)]:
        sub = supernet.extract(arch).eval()
        with torch.no_grad():
            torch.testing.assert_close(sub(x), supernet(x, arch), rtol=1e-5, atol=1e-5)
        assert sum(p.numel() for p in sub.parameters()) == sum(p.numel() for p in build_model(arch).parameters())


def test_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "toy.yaml"
    SearchSpace.from_dict(SPACE).largest().to_yaml(path)
    assert main(["profile", str(path), "--no-latency", "--json"]) == 0
    profile = json.loads(capsys.readouterr().out)
    assert profile["params"] > 0 and profile["gflops"] > 0


def test_training_and_a_two_trial_search(trained_run, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run(SPACE, epochs=1, steps_per_epoch=2, batch_size=16, calib_batches=1), run)
    evaluator = CandidateEvaluator(run, EvalSettings(latency="none", calib_batches=1, val_limit=64, flops_images=2))
    settings = SearchSettings(trials=2, objectives=("accuracy", "gflops"), sampler="random", seed=0)
    table = run_optuna_search(run, settings, evaluator, progress=False)
    searched = table[~table["is_reference"]]
    assert len(searched) == 2 and (searched["state"] == "COMPLETE").all()
    assert set(table.loc[table["is_reference"], "label"]) == {"all token_shift"}
    assert table["accuracy"].between(0, 100).all() and (table["gflops"] > 0).all()
