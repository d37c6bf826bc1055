"""The reference configs reproduce the published parameter counts and FLOPs (DESIGN.md section 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mixnas import ArchConfig, build_model
from mixnas.search.profiler import count_flops, count_params, unsupported_ops

REFERENCE = Path(__file__).resolve().parents[1] / "mixnas" / "configs" / "reference"

# (params, GFLOPs) from the papers' READMEs; DeiT's parameters less the class token and its position
# embedding (2C), since mixnas pools globally instead.
PUBLISHED = {
    "swin_t": (28.29e6, 4.5),
    "dwnet_t": (24.17e6, 3.74),
    "ddwnet_t": (51.13e6, 3.77),
    "deit_t": (5.72e6 - 2 * 192, 1.26),
    "deit_s": (22.05e6 - 2 * 384, 4.6),
    "localvit_t": (5.91e6, 1.27),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_reference_matches_published_params_and_flops(name: str) -> None:
    arch = ArchConfig.from_yaml(REFERENCE / f"{name}.yaml")
    model = build_model(arch)
    params, gflops = PUBLISHED[name]
    n = count_params(model)
    assert abs(n - params) / params < 0.01, f"{name}: {n:,} parameters vs published {params:,.0f}"
    x = torch.randn(1, 3, arch.input_size, arch.input_size)
    g = count_flops(model, x) / 1e9
    assert abs(g - gflops) / gflops < 0.03, f"{name}: {g:.3f} GFLOPs vs published {gflops}"
    assert unsupported_ops(model, x) == {}


def test_extra_reference_variants_build_and_count() -> None:
    """The refiner and DGE variants: refinement costs FLOPs on top of DeiT-T; DGE at init routes almost
    every region to the finest granularity, so it costs about DeiT-S's FLOPs at 256 (6.1)."""
    deit_t = count_flops(build_model(ArchConfig.from_yaml(REFERENCE / "deit_t.yaml")), torch.randn(1, 3, 224, 224))
    refiner = build_model(ArchConfig.from_yaml(REFERENCE / "refiner_deit_t.yaml"))
    assert count_flops(refiner, torch.randn(1, 3, 224, 224)) > deit_t
    dge = ArchConfig.from_yaml(REFERENCE / "dge_deit_s.yaml")
    g = count_flops(build_model(dge), torch.randn(1, 3, 256, 256)) / 1e9
    assert 5.5 < g < 6.3
