"""The cost of one architecture: parameters, GFLOPs (mean/min/max over inputs for DGE) and latency.

``mixnas profile`` prints this; the search's evaluator records the same numbers for every candidate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from mixnas.search.profiler import LatencyStats, count_flops, count_params, flops_summary, measure_latency
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
    summary = flops_summary(model, images.to(next(model.parameters()).device))
    return summary["mean"] / 1e9, summary["min"] / 1e9, summary["max"] / 1e9


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
