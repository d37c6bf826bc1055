"""The cost of one architecture: parameters, GFLOPs (mean/min/max over inputs for DGE) and latency.

``mixnas profile`` prints this; the search's evaluator records the same numbers for every candidate.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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
            out["latency_ms"].update(runs=lat["runs"], warmup=lat["warmup"], dtype=lat["dtype"],
                                     backend=lat["backend"])
        return out


def is_input_dependent(arch: ArchConfig) -> bool:
    """True when the FLOPs depend on the image (a mixer whose spec says so: DGE routes regions per image)."""
    return any(s.mixer.spec.input_dependent_cost for s in arch.stages)


def model_gflops(
    model: nn.Module, arch: ArchConfig, images: torch.Tensor | Iterable | None = None
) -> tuple[float, float, float]:
    """(mean, min, max) GFLOPs at batch 1; over ``images`` (a tensor or a loader; default 8 random
    images) when the cost is input-dependent (DGE)."""
    if not is_input_dependent(arch):
        x = torch.randn(1, arch.in_chans, arch.input_size, arch.input_size)
        g = count_flops(model, x.to(next(model.parameters()).device)) / 1e9
        return g, g, g
    if images is None:
        images = torch.randn(8, arch.in_chans, arch.input_size, arch.input_size)
    per_image = flops_per_image(model, arch, images)
    return sum(per_image) / len(per_image) / 1e9, min(per_image) / 1e9, max(per_image) / 1e9


def _batches(images: torch.Tensor | Iterable, batch_size: int) -> Iterator[torch.Tensor]:
    """Image batches from a tensor (B, C, H, W) or an iterable of tensors or (images, labels) pairs."""
    if isinstance(images, torch.Tensor):
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size]
        return
    for batch in images:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def flops_per_image(
    model: nn.Module, arch: ArchConfig, images: torch.Tensor | Iterable, batch_size: int = 128
) -> list[int]:
    """FLOPs of each image for a model with input-dependent (DGE) blocks, tracing as few images as possible.

    A DGE block's FLOPs are affine in the number of queries it computes (every per-query cost, the
    projections, attention rows, norms and FFN, is linear in it; the router and the keys and values are
    fixed), and the rest of the network does not depend on the image. So fvcore's per-module counts of
    two traces with different query counts give each block's line, and any other image only needs its
    query counts, which ``forward_with_costs`` returns for a whole batch. An image is traced whenever a
    block's count cannot be placed on a known line; the result equals tracing every image
    (``flops_summary``), which the tests check.

    Args:
        model: the network of ``arch`` (a ``MixerNet``).
        arch: its architecture (which stages are input-dependent).
        images: a tensor (N, C, H, W), or an iterable of batches (a DataLoader), on the model's device.
        batch_size: forward batch size when ``images`` is a tensor.
    """
    from mixnas.search.profiler import flops_by_module
    from mixnas.supernet import dynamic_block_names

    blocks = dynamic_block_names(arch)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    points: dict[str, dict[int, int]] = {name: {} for name in blocks}  # queries -> block FLOPs
    base: int | None = None
    out = []
    for batch in _batches(images, batch_size):
        batch = batch.to(device)
        _, costs = model.forward_with_costs(batch)
        queries = {name: [int(round(float(q))) for q in cost.queries] for name, cost in zip(blocks, costs)}
        for i in range(batch.shape[0]):
            q_i = {name: queries[name][i] for name in blocks}
            known = all(q in points[n] or len(points[n]) >= 2 for n, q in q_i.items())
            if base is None or not known:
                counts = flops_by_module(model, batch[i : i + 1])
                for name in blocks:
                    points[name][q_i[name]] = counts[name]
                base = counts[""] - sum(counts[name] for name in blocks)
                out.append(counts[""])
                continue
            total = base
            for name, q in q_i.items():
                if q in points[name]:
                    total += points[name][q]
                else:
                    (q1, f1), (q2, f2) = list(points[name].items())[:2]
                    total += round(f1 + (f2 - f1) * (q - q1) / (q2 - q1))
            out.append(int(total))
    model.train(was_training)
    if not out:
        raise ValueError("no images to count FLOPs on")
    return out


def architecture_cost(
    model: nn.Module, arch: ArchConfig, device: str = "cpu", batch_size: int = 1, latency: bool = True,
    runs: int = 50, warmup: int = 10, max_seconds: float | None = None, amp_dtype: torch.dtype | None = None,
    images: torch.Tensor | None = None, latency_backend: str = "eager",
) -> ArchCost:
    """Measure ``model`` (the network of ``arch``): FLOPs on the CPU copy, latency on ``device`` as
    ``latency_backend`` runs it (eager, compile or onnxruntime: ``mixnas.search.latency_backends``)."""
    mean, lo, hi = model_gflops(model, arch, images)
    stats = None
    if latency:
        stats = measure_latency(
            model, arch.input_size, batch_size=batch_size, device=device, runs=runs, warmup=warmup,
            in_chans=arch.in_chans, amp_dtype=amp_dtype, max_seconds=max_seconds, backend=latency_backend,
        )
    return ArchCost(count_params(model), mean, lo, hi, stats)
