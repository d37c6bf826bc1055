"""FLOPs of input-dependent (DGE) models: the fast per-image count equals tracing every image."""

from __future__ import annotations

import torch

from mixnas import ArchConfig, build_model
from mixnas.search.cost import flops_per_image, model_gflops
from mixnas.search.profiler import count_flops
from mixnas.supernet.mixers.dge import DynamicGrainedEncoder

ARCH = {
    "input_size": 32, "num_classes": 10, "patch_size": 4,
    "stages": [
        {"depth": 2, "dim": 32, "heads": 2, "mlp_ratio": 2.0, "mixer": {"type": "dge", "granularities": [1, 2, 4]}},
        {"depth": 1, "dim": 48, "heads": 2, "mlp_ratio": 2.0, "mixer": {"type": "dwconv", "kernel_size": 3}},
        {"depth": 2, "dim": 64, "heads": 4, "mlp_ratio": 2.0,
         "mixer": {"type": "dge", "granularities": [1, 2], "kv_reduction": 2}},
    ],
}


def test_fast_dge_flops_equal_tracing_every_image() -> None:
    torch.manual_seed(0)
    arch = ArchConfig.from_dict(ARCH)
    model = build_model(arch).eval()
    for m in model.modules():
        if isinstance(m, DynamicGrainedEncoder):
            torch.nn.init.normal_(m.router.weight, std=3.0)  # route images differently
    images = torch.randn(10, 3, 32, 32)
    fast = flops_per_image(model, arch, images, batch_size=4)  # batched forwards, padded queries
    slow = [count_flops(model, images[i : i + 1]) for i in range(10)]
    assert fast == slow
    assert len(set(slow)) >= 3  # the images were routed differently, so the interpolation was exercised
    mean, lo, hi = model_gflops(model, arch, images)
    assert lo * 1e9 == min(slow) and hi * 1e9 == max(slow) and abs(mean * 1e9 - sum(slow) / 10) < 1
