"""The cost of one architecture: parameters, GFLOPs (mean/min/max over inputs for DGE) and latency.

``mixnas profile`` prints this; the search's evaluator records the same numbers for every candidate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from mixnas.search.profiler import LatencyStats, count_flops, count_params, measure_latency
from mixnas.search_space import ArchConfig


@dataclass
class ArchCost:
    """Parameters, FLOPs (multiply-adds, batch 1, in GFLOPs) and latency (ms) of one architecture."""

    params: int
    gflops: float
    gflops_min: float
    gflops_max: float
    latency: LatencyStats | None

    def to_dict(self) -> dict:
        out = {
            "params": self.params,
            "gflops": self.gflops,
            "gflops_min": self.gflops_min,
            "gflops_max": self.gflops_max,
        }
        if self.latency is not None:
            lat = asdict(self.latency)
            out["latency_ms"] = {"median": lat.pop("median_ms"), "p90": lat.pop("p90_ms"), "mean": lat.pop("mean_ms")}
            out["device"] = lat.pop("device")
            out["batch_size"] = lat.pop("batch_size")
            out["latency_ms"].update(runs=lat["runs"], warmup=lat["warmup"], dtype=lat["dtype"])
        return out


def is_input_dependent(arch: ArchConfig) -> bool:
    """True when the FLOPs depend on the image (DGE routes regions per image)."""
    return any(s.mixer.type == "dge" for s in arch.stages)


def model_gflops(model: nn.Module, arch: ArchConfig, images: torch.Tensor | None = None) -> tuple[float, float, float]:
    """(mean, min, max) GFLOPs at batch 1; over ``images`` (or 8 random ones) when input-dependent."""
    if not is_input_dependent(arch):
        x = torch.randn(1, arch.in_chans, arch.input_size, arch.input_size) if images is None else images[:1]
        g = count_flops(model, x.to(next(model.parameters()).device)) / 1e9
        return g, g, g
    if images is None:
        images = torch.randn(8, arch.in_chans, arch.input_size, arch.input_size)
    per_image = dge_flops_per_image(model, arch, images.to(next(model.parameters()).device))
    return sum(per_image) / len(per_image) / 1e9, min(per_image) / 1e9, max(per_image) / 1e9


@torch.no_grad()
def dge_flops_per_image(model: nn.Module, arch: ArchConfig, images: torch.Tensor) -> list[int]:
    """FLOPs of each image for a model with DGE blocks, tracing as few images as possible.

    A DGE block's FLOPs are affine in the number of queries it computes (every per-query cost, the
    projections, attention rows, norms and FFN, is linear in it; the router and the keys and values are
    fixed), and the rest of the network does not depend on the image. So fvcore's per-module counts of
    two traces with different query counts give each block's line, and any other image only needs a
    forward pass to read its query counts. An image is traced whenever a block's count cannot be placed
    on a known line; the result equals tracing every image (``flops_summary``), which the tests check.
    """
    from mixnas.search.profiler import flops_by_module
    from mixnas.supernet.dge import DynamicGrainedEncoder

    blocks = [f"stages.{i}.blocks.{j}" for i, s in enumerate(arch.stages) if s.mixer.type == "dge"
              for j in range(s.depth)]
    dge = {name: model.get_submodule(f"{name}.mixers.dge") for name in blocks}
    assert all(isinstance(m, DynamicGrainedEncoder) for m in dge.values())
    was_training = model.training
    model.eval()
    points: dict[str, dict[int, int]] = {name: {} for name in blocks}  # queries -> block FLOPs
    base: int | None = None
    out = []
    for i in range(images.shape[0]):
        x = images[i : i + 1]
        model(x)
        queries = {name: dge[name].num_queries for name in blocks}
        known = all(q in points[n] or len(points[n]) >= 2 for n, q in queries.items())
        if base is None or not known:
            counts = flops_by_module(model, x)
            for name in blocks:
                points[name][queries[name]] = counts[name]
            base = counts[""] - sum(counts[name] for name in blocks)
            out.append(counts[""])
            continue
        total = base
        for name, q in queries.items():
            if q in points[name]:
                total += points[name][q]
            else:
                (q1, f1), (q2, f2) = list(points[name].items())[:2]
                total += round(f1 + (f2 - f1) * (q - q1) / (q2 - q1))
        out.append(int(total))
    model.train(was_training)
    return out


def architecture_cost(
    model: nn.Module, arch: ArchConfig, device: str = "cpu", batch_size: int = 1, latency: bool = True,
    runs: int = 50, warmup: int = 10, max_seconds: float | None = None, amp_dtype: torch.dtype | None = None,
    images: torch.Tensor | None = None,
) -> ArchCost:
    """Measure ``model`` (the network of ``arch``): FLOPs on the CPU copy, latency on ``device``."""
    mean, lo, hi = model_gflops(model, arch, images)
    stats = None
    if latency:
        stats = measure_latency(
            model, arch.input_size, batch_size=batch_size, device=device, runs=runs, warmup=warmup,
            in_chans=arch.in_chans, amp_dtype=amp_dtype, max_seconds=max_seconds,
        )
    return ArchCost(count_params(model), mean, lo, hi, stats)
