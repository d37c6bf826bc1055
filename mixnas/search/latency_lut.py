"""Latency lookup tables: per-component latencies measured once on one device, summed to predict a network.

``mixnas latency build-lut --space SPACE.yaml --device cuda --batch-size 64 --out lut.json`` measures every
component that an architecture of the space can be made of, each as a standalone module built at exactly
its size and run on a tensor of the right shape, on the named device (DESIGN.md section 3: CUDA events on
a GPU, a monotonic clock on the CPU, after warm-up, median of the runs). A search on a machine without
that device then scores latency as ``LatencyTable.load("lut.json").predict(arch)``.

Components and their keys (each entry is the median latency in ms of one forward pass at the table's
batch size, float32, no grad):

- ``stem/res{R}/c{C}``: patch-embedding conv, then (as the space says) LayerNorm and position embedding,
  for every first-stage width C; R is the first stage's resolution (tokens on a side).
- ``merge/s{i}/res{R}/c{Cin}->c{Cout}``: stage i's patch merging (hierarchical layouts, i >= 1), for
  every pair of widths; R is the resolution it reads (the previous stage's).
- ``block/s{i}/res{R}/{mixer}/c{C}[/h{H}]/r{ratio}/{ffn}[/shifted]``: one block of stage i. ``{mixer}``
  is the mixer type with the parameters that change its cost, e.g. ``window_attn(window_size=4,
  rel_pos_bias=True)``; DGE's ``gamma`` (a training target) is left out, and a window at least the
  stage's resolution (global attention) is keyed as the resolution. ``/h{H}`` appears only where heads
  change the computation (window_attn, refiner, dge, inhomogeneous dyn_dwconv). ``/shifted`` marks the
  odd blocks of a shifted-window stage (window_attn or refiner with a window smaller than the
  resolution), which also roll the map and add the shift mask; other blocks cost the same at any index.
- ``head/res{R}/c{C}``: final LayerNorm, global average pool and classifier, per last-stage width.

A network's component sum is stem + head + for each stage (merging + its blocks, even and odd). The
prediction is ``scale * sum + offset_ms``, both fitted by least squares on whole networks measured while
building (``calibration_archs`` random architectures plus the space's largest and smallest): a component
timed alone, over and over, runs with its weights hot in cache and without the network's own overhead
(the framework's per-call work, the stem-to-head data flow), and the fit absorbs the difference. The
calibration networks are measured interleaved with the components, and with ``passes > 1`` everything is
measured in several passes in alternating order (the median of the pass medians is kept), so that on a
shared machine a burst of load falls on both alike rather than on a few entries or on the calibration.

On the CPU a table holds for the thread count it was built with (``device`` names it, as
``device_name`` does); set ``torch.set_num_threads`` alike when comparing.

A table holds for the latency backend it was measured with (``backend``: eager, compile or onnxruntime,
``mixnas.search.latency_backends``), components and calibration networks alike: each component is
compiled or exported on its own, with its real input as the graph's input (an input held as a constant
would let ONNX Runtime fold the whole component away). A search asking for another backend refuses the
table. Tables written before backends were offered were measured eagerly.

DGE's latency depends on the image through its router. Blocks and calibration networks are measured
with the router as initialised (small weights and a prior giving the finest granularity probability
0.95), under which evaluation sends every region to the finest granularity: the table predicts DGE at
its densest, an upper bound for a trained router. With the onnxruntime backend a DGE block runs its
export form, which computes every granularity whatever the router picks, so there the table predicts that
form's cost (sum(g^2) queries per region), the same for any router.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mixnas.atomic import atomic_write_text
from mixnas.errors import LUTError
from mixnas.search.latency_backends import BACKENDS, check_backend
from mixnas.search.profiler import device_name, latency_runner, measure_latency
from mixnas.search_space import ArchConfig, MixerConfig, SearchSpace, StageChoices, StageConfig
from mixnas.search_space.arch import stage_resolutions
from mixnas.supernet.backbone import Block, MixerNet, PatchMerging, StageLimits, build_model

LUT_FORMAT = "mixnas-latency-lut"
LUT_VERSION = 1
DEFAULT_RUNS = 20
DEFAULT_WARMUP = 5
CALIBRATION_WARN_PCT = 25.0  # build-lut warns when the calibration networks are this far (%) from the fit
# Fields of the space every architecture shares; a table answers only for architectures that match them.
GEOMETRY_FIELDS = ("input_size", "in_chans", "num_classes", "patch_size", "layout", "pos_embed", "stem_norm")

# How the network calls a component on its input: ``call(module, inputs)``.
ComponentCall = Callable[[nn.Module, Tensor], Tensor]


# ---------------------------------------------------------------------------------------- component keys
def mixer_key(mixer: MixerConfig, resolution: int) -> str:
    """The mixer and the parameters that change its cost (its spec's ``cost_key``), e.g. ``dwconv(kernel_size=5)``.

    Args:
        mixer: the mixer.
        resolution: its stage's resolution (tokens on a side); a larger window is global attention.
    """
    params = mixer.spec.cost_key(mixer, resolution)
    parts = [f"{name}={'-'.join(str(v) for v in value) if isinstance(value, tuple) else value}"
             for name, value in params.items()]
    return f"{mixer.type}({','.join(parts)})"


def stem_key(resolution: int, dim: int) -> str:
    return f"stem/res{resolution}/c{dim}"


def merge_key(stage_index: int, resolution_in: int, in_dim: int, out_dim: int) -> str:
    return f"merge/s{stage_index}/res{resolution_in}/c{in_dim}->c{out_dim}"


def head_key(resolution: int, dim: int) -> str:
    return f"head/res{resolution}/c{dim}"


def block_key(stage_index: int, resolution: int, stage: StageConfig, block_index: int) -> str:
    """Key of block ``block_index`` of a stage; depth is not part of it.

    Args:
        stage_index: the stage's position (0 = first).
        resolution: the stage's resolution (tokens on a side).
        stage: the stage's configuration.
        block_index: the block's index within the stage (its parity matters for shifted windows).
    """
    heads, shifted = heads_and_shift(stage, resolution, block_index)
    return (
        f"block/s{stage_index}/res{resolution}/{mixer_key(stage.mixer, resolution)}/c{stage.dim}{heads}"
        f"/r{stage.mlp_ratio:g}/{stage.ffn.short()}{shifted}"
    )


def heads_and_shift(stage: StageConfig, resolution: int, block_index: int) -> tuple[str, str]:
    """The parts of a block's key that its mixer's spec decides: ``/h{H}`` where heads change the
    computation, and ``/shifted`` for a block that rolls the map (each empty otherwise)."""
    m = stage.mixer
    heads = f"/h{stage.heads}" if m.spec.heads_matter(m) else ""
    shifted = "/shifted" if m.spec.shifted(m, resolution, block_index) else ""
    return heads, shifted


def arch_components(arch: ArchConfig) -> Counter[str]:
    """The components of an architecture: key -> how many times the network runs it."""
    resolutions = arch.resolutions
    counts: Counter[str] = Counter()
    counts[stem_key(resolutions[0], arch.stages[0].dim)] += 1
    for i, (stage, res) in enumerate(zip(arch.stages, resolutions)):
        if i > 0 and arch.layout == "hierarchical":
            counts[merge_key(i, resolutions[i - 1], arch.stages[i - 1].dim, stage.dim)] += 1
        for b in range(stage.depth):
            counts[block_key(i, res, stage, b)] += 1
    counts[head_key(resolutions[-1], arch.stages[-1].dim)] += 1
    return counts


# ------------------------------------------------------------------------------- standalone components
class _Call(nn.Module):
    """Runs one component on its input the way the network calls it, as a module of one tensor (which a
    backend can compile or export, the input being the graph's input).

    Args:
        component: the module, built at exactly the measured size.
        call: how the network calls it: ``call(component, inputs)``.
    """

    def __init__(self, component: nn.Module, call: ComponentCall) -> None:
        super().__init__()
        self.component = component
        self.call = call

    def forward(self, inputs: Tensor) -> Tensor:
        return self.call(self.component, inputs)


def _with_dim(space: SearchSpace, stage_index: int, dim: int) -> ArchConfig:
    """The space's smallest architecture with stage ``stage_index`` at width ``dim`` (to take its stem or
    head: a component is measured as the network's own module, running the network's own code)."""
    arch = space.smallest()
    stages = list(arch.stages)
    stages[stage_index] = replace(stages[stage_index], dim=dim)
    return replace(arch, stages=tuple(stages))


class _Part(nn.Module):
    """Some of a network's own modules, run by the network's own method (``MixerNet.embed`` or ``classify``).

    Args:
        model: the network they come from.
        names: the attributes to keep (modules or parameters).
        method: the MixerNet method that runs them.
    """

    def __init__(self, model: MixerNet, names: tuple[str, ...], method: Callable[..., Tensor]) -> None:
        super().__init__()
        for name in names:
            setattr(self, name, getattr(model, name))
        self.method = method

    def forward(self, *args: Any) -> Tensor:
        return self.method(self, *args)


def _stem_builder(space: SearchSpace, dim: int) -> Callable[[], tuple[nn.Module, ComponentCall]]:
    def build() -> tuple[nn.Module, ComponentCall]:
        part = _Part(build_model(_with_dim(space, 0, dim)), ("patch_embed", "stem_norm", "pos_embed"), MixerNet.embed)
        return part, lambda module, x: module(x, dim)

    return build


def _classify(part: nn.Module, tokens: Tensor) -> Tensor:
    """``MixerNet.classify`` on a part holding the head's modules."""
    return MixerNet.forward_head(part, part.norm(tokens))  # type: ignore[arg-type]


def _head_builder(space: SearchSpace, dim: int) -> Callable[[], tuple[nn.Module, ComponentCall]]:
    def build() -> tuple[nn.Module, ComponentCall]:
        part = _Part(build_model(_with_dim(space, len(space.stages) - 1, dim)),
                     ("norm", "head", "head_drop", "global_pool"), _classify)
        return part, lambda module, x: module(x)

    return build


@dataclass(frozen=True)
class _Component:
    """How to build and run one table entry.

    Args:
        key: the entry's key.
        kind: stem, merge, block or head.
        stage: stage index (stem: 0, head: the last).
        input_shape: the input's shape at the table's batch size.
        build: makes the module and the call that runs it on its input.
    """

    key: str
    kind: str
    stage: int
    input_shape: tuple[int, ...]
    build: Callable[[], tuple[nn.Module, ComponentCall]]


def _exact_limits(space: SearchSpace, stage: StageConfig, resolution: int) -> StageLimits:
    """The limits of a stage holding exactly ``stage`` (a block as ``build_model`` builds it)."""
    one = ArchConfig(**space.geometry(), stages=(stage,))
    return StageLimits.from_choices(SearchSpace.from_arch(one).stages[0], resolution)


def _block_builder(
    space: SearchSpace, stage: StageConfig, resolution: int, block_index: int
) -> Callable[[], tuple[nn.Module, ComponentCall]]:
    def build() -> tuple[nn.Module, ComponentCall]:
        block = Block(_exact_limits(space, stage, resolution), space.layer_norm_eps)
        return block, lambda module, x: module(x, stage, block_index, 0.0)[0]

    return build


def block_configs(choices: StageChoices, resolution: int) -> Iterator[tuple[StageConfig, tuple[int, ...]]]:
    """Every block a stage's choices offer: (the stage at depth 1, the block indices that differ: (0, 1) for
    a shifted-window mixer below the resolution, else (0,))."""
    for m in choices.mixers:
        for opt in m.options():
            parities = (0, 1) if opt.spec.shifted(opt, resolution, 1) else (0,)
            for dim in choices.dims:
                for heads in choices.heads:
                    for ratio in choices.mlp_ratios:
                        for ffn in choices.ffns_for(m.type):
                            yield StageConfig(1, dim, heads, ratio, ffn, opt), parities


def space_components(space: SearchSpace, batch_size: int = 1) -> list[_Component]:
    """Every component that an architecture of ``space`` can run, each once, in stage order.

    Args:
        space: the search space.
        batch_size: images per forward pass (the inputs' leading dimension).
    """
    resolutions = stage_resolutions(space.input_size, space.patch_size, space.layout, len(space.stages))
    out: dict[str, _Component] = {}

    def add(c: _Component) -> None:
        out.setdefault(c.key, c)

    b, res0 = batch_size, resolutions[0]
    for dim in space.stages[0].dims:
        add(_Component(
            stem_key(res0, dim), "stem", 0, (b, space.in_chans, space.input_size, space.input_size),
            _stem_builder(space, dim),
        ))
    for i, (st, res) in enumerate(zip(space.stages, resolutions)):
        if i > 0 and space.layout == "hierarchical":
            for in_dim in space.stages[i - 1].dims:
                for out_dim in st.dims:
                    add(_Component(
                        merge_key(i, resolutions[i - 1], in_dim, out_dim), "merge", i,
                        (b, resolutions[i - 1], resolutions[i - 1], in_dim),
                        lambda i_=in_dim, o=out_dim: (PatchMerging(i_, o, space.layer_norm_eps),
                                                      lambda module, x, o=o: module(x, o)),
                    ))
        for stage, parities in block_configs(st, res):
            for parity in parities:
                add(_Component(block_key(i, res, stage, parity), "block", i, (b, res, res, stage.dim),
                               _block_builder(space, stage, res, parity)))
    last = len(space.stages) - 1
    for dim in space.stages[-1].dims:
        add(_Component(
            head_key(resolutions[-1], dim), "head", last, (b, resolutions[-1], resolutions[-1], dim),
            _head_builder(space, dim),
        ))
    return list(out.values())


# ------------------------------------------------------------------------------------------------ table
@dataclass
class LatencyTable:
    """Per-component latencies (ms) on one device and a calibration fitted on whole networks.

    Args:
        entries: component key -> median latency (ms) of one forward pass at ``batch_size``.
        device: the device's name as ``device_name`` gives it (e.g. "NVIDIA H200").
        batch_size: images per forward pass.
        calibration: ``{"scale": a, "offset_ms": b, ...}``: a prediction is ``a * component sum + b`` (ms);
            it may also hold the fit's kind, its points and its error on them.
        device_type: "cpu" or "cuda".
        geometry: the space's fixed fields (input_size, patch_size, ...); architectures must match them.
        space_name: the space the table was built for (a label).
        meta: provenance (torch version, date, runs, warm-up, dtype, build seconds).
        path: the file it was loaded from or saved to, if any.
        backend: the latency backend every entry was measured with (eager, compile or onnxruntime).
    """

    entries: dict[str, float]
    device: str
    batch_size: int
    calibration: dict[str, Any]
    device_type: str = "cpu"
    geometry: dict[str, Any] = field(default_factory=dict)
    space_name: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    backend: str = "eager"

    # ------------------------------------------------------------------------------------------- I/O
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LUT_FORMAT,
            "version": LUT_VERSION,
            "device": self.device,
            "device_type": self.device_type,
            "backend": self.backend,
            "batch_size": self.batch_size,
            "space_name": self.space_name,
            "geometry": self.geometry,
            "meta": self.meta,
            "calibration": self.calibration,
            "entries": dict(sorted(self.entries.items())),
        }

    def save(self, path: str | Path) -> None:
        """Write the table as JSON, atomically (a reader sees the old file or the new one)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        self.path = str(path)

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Read a table written by ``save``; LUTError naming the file if it is missing, corrupt or foreign."""
        p = Path(path)
        if not p.is_file():
            raise LUTError(f"{p}: no such latency table; build one with mixnas latency build-lut")
        try:
            data = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError) as e:
            raise LUTError(f"{p}: cannot be read ({e.__class__.__name__})") from None
        except json.JSONDecodeError as e:
            raise LUTError(f"{p}: not valid JSON ({e.msg} at line {e.lineno}); rebuild the latency table") from None
        except RecursionError:
            raise LUTError(f"{p}: nested too deeply to be a latency table; rebuild it") from None
        if not isinstance(data, dict) or data.get("format") != LUT_FORMAT:
            raise LUTError(f"{p}: not a mixnas latency table (no \"format\": \"{LUT_FORMAT}\")")
        if data.get("version") != LUT_VERSION:
            raise LUTError(
                f"{p}: latency table version {data.get('version')!r}, this mixnas reads version {LUT_VERSION}; "
                f"rebuild it with mixnas latency build-lut"
            )
        try:
            return cls._from_dict(data, str(p))
        except (KeyError, TypeError, ValueError) as e:
            reason = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise LUTError(f"{p}: corrupt latency table ({e.__class__.__name__}: {reason})") from None

    @classmethod
    def _from_dict(cls, data: dict[str, Any], path: str) -> LatencyTable:
        entries = data["entries"]
        if not isinstance(entries, dict) or not entries:
            raise ValueError("'entries' must be a non-empty mapping of component to ms")
        clean: dict[str, float] = {}
        for key, ms in entries.items():
            if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) or ms < 0:
                raise ValueError(f"entry {key!r} is {ms!r}, not a latency in ms")
            clean[str(key)] = float(ms)
        cal = data["calibration"]
        if not isinstance(cal, dict):
            raise ValueError("'calibration' must be a mapping")
        for name in ("scale", "offset_ms"):
            v = cal[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"calibration {name} is {v!r}")
        if cal["scale"] <= 0:
            raise ValueError(f"calibration scale is {cal['scale']}, must be > 0")
        batch = data["batch_size"]
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch_size is {batch!r}")
        backend = data.get("backend", "eager")  # tables from before the backends were measured eagerly
        if backend not in BACKENDS:
            raise ValueError(f"backend is {backend!r}, not one of {', '.join(BACKENDS)}")
        return cls(
            entries=clean, device=str(data["device"]), batch_size=batch, calibration=cal,
            device_type=str(data.get("device_type", "cpu")), geometry=dict(data.get("geometry") or {}),
            space_name=data.get("space_name"), meta=dict(data.get("meta") or {}), path=path, backend=backend,
        )

    # ------------------------------------------------------------------------------------ prediction
    @property
    def source(self) -> str:
        """Where predictions come from, e.g. ``predicted: lut.json (cuda: NVIDIA H200, batch 64)``; a backend
        other than eager is named after the batch."""
        where = self.device if self.device.startswith(f"{self.device_type}:") else f"{self.device_type}: {self.device}"
        backend = "" if self.backend == "eager" else f", {self.backend}"
        return f"predicted: {self.path or 'in-memory table'} ({where}, batch {self.batch_size}{backend})"

    def _name(self) -> str:
        return self.path or "the latency table"

    def check_backend(self, backend: str) -> None:
        """LUTError unless the table was measured with the latency backend ``backend``."""
        if backend != self.backend:
            raise LUTError(
                f"{self._name()}: measured with the {self.backend} latency backend, but {backend} latency was asked "
                f"for (--latency-backend); build a table with mixnas latency build-lut --latency-backend {backend}"
            )

    def check_geometry(self, arch: ArchConfig) -> None:
        """LUTError if ``arch`` differs from the table's space in a fixed field (input size, patch, ...)."""
        for name, value in self.geometry.items():
            if name == "num_stages":
                if len(arch.stages) != value:
                    raise LUTError(f"{self._name()}: built for {value} stages, the architecture has {len(arch.stages)}")
            elif getattr(arch, name) != value:
                raise LUTError(
                    f"{self._name()}: built for {name} {value!r}, the architecture has {getattr(arch, name)!r}; "
                    f"build a table for its space"
                )

    def component_sum(self, arch: ArchConfig) -> float:
        """Sum (ms) of the architecture's components as measured standalone, before calibration.

        Raises LUTError naming the first component the table lacks (e.g. a table built for another space).
        """
        self.check_geometry(arch)
        total = 0.0
        for key, count in arch_components(arch).items():
            ms = self.entries.get(key)
            if ms is None:
                space = f" (space {self.space_name})" if self.space_name else ""
                raise LUTError(
                    f"{self._name()}{space} has no entry for component {key!r}; the architecture uses a choice "
                    f"the table was not built for: build a table for its space"
                )
            total += count * ms
        return total

    def predict(self, arch: ArchConfig) -> float:
        """Predicted median latency (ms) of one forward pass at the table's batch size, on its device."""
        return self.calibration["scale"] * self.component_sum(arch) + self.calibration["offset_ms"]


# ---------------------------------------------------------------------------------------------- building
def fit_calibration(component_sums: list[float], measured_ms: list[float], floor_sum: float) -> dict[str, Any]:
    """Least-squares ``measured = scale * sum + offset_ms`` over whole networks, kept physically sensible.

    The fit must give every architecture of the space a positive latency: when its offset is so negative
    that a network with the space's smallest component sum ``floor_sum`` would be predicted below half its
    scaled sum, the offset is pinned there and only the scale is fitted; a non-positive scale (noise on
    too few or too similar points) falls back to a fit through the origin.

    Args:
        component_sums: each calibration network's component sum (ms).
        measured_ms: each one's measured median latency (ms).
        floor_sum: the smallest component sum (ms) an architecture of the space can have (a lower bound).

    Returns:
        ``{"scale", "offset_ms", "fit", "mape_pct"}``: the fit's kind and its mean absolute percentage
        error on the calibration networks.
    """
    s, m = np.asarray(component_sums, float), np.asarray(measured_ms, float)
    if len(s) >= 2 and np.ptp(s) > 0:
        scale, offset = (float(v) for v in np.polyfit(s, m, 1))
        kind = "least-squares"
    else:
        scale, offset, kind = float(m.sum() / s.sum()), 0.0, "ratio"
    if scale > 0 and offset < -0.5 * scale * floor_sum:
        shifted = s - 0.5 * floor_sum
        scale = float((m * shifted).sum() / (shifted * shifted).sum())
        offset, kind = -0.5 * scale * floor_sum, "least-squares, offset pinned"
    if not scale > 0:
        scale, offset, kind = float((m * s).sum() / (s * s).sum()), 0.0, "ratio"
    mape = float(np.mean(np.abs(scale * s + offset - m) / m) * 100)
    return {"scale": scale, "offset_ms": offset, "fit": kind, "mape_pct": mape}


def _floor_sum(entries: dict[str, float], components: list[_Component], space: SearchSpace) -> float:
    """A lower bound (ms) on any architecture's component sum: the cheapest of each part, minimum depths."""
    def cheapest(kind: str, stage: int) -> float:
        return min((entries[c.key] for c in components if c.kind == kind and c.stage == stage), default=0.0)

    last = len(space.stages) - 1
    total = cheapest("stem", 0) + cheapest("head", last)
    for i, st in enumerate(space.stages):
        total += cheapest("merge", i) + min(st.depths) * cheapest("block", i)
    return total


def calibration_architectures(space: SearchSpace, count: int, seed: int) -> list[ArchConfig]:
    """``count`` distinct random architectures (seeded) plus the space's largest and smallest."""
    rng = random.Random(seed)
    archs: dict[str, ArchConfig] = {}
    for arch in (space.largest(), space.smallest()):
        archs.setdefault(arch.arch_id, arch)
    attempts = 0
    while len(archs) < count + 2 and attempts < 20 * (count + 2):
        arch = space.sample(rng)
        archs.setdefault(arch.arch_id, arch)
        attempts += 1
    return list(archs.values())


def measure_network_ms(
    arch: ArchConfig, device: str = "cpu", batch_size: int = 1, runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP, max_seconds: float | None = None, seed: int = 0, backend: str = "eager",
) -> float:
    """Median latency (ms) of the standalone network of ``arch`` (``build_model``), as the table measures it.

    Args:
        arch: the architecture.
        device: "cpu" or "cuda[:N]".
        batch_size: images per forward pass.
        runs: timed runs.
        warmup: untimed runs first.
        max_seconds: cap on the timed runs' total duration (s); None for no cap.
        seed: seeds the weights' initialisation.
        backend: the latency backend (eager, compile or onnxruntime).
    """
    torch.manual_seed(seed)
    model = build_model(arch)
    stats = measure_latency(
        model, arch.input_size, batch_size=batch_size, device=device, runs=runs, warmup=warmup,
        in_chans=arch.in_chans, max_seconds=max_seconds, backend=backend,
    )
    return stats.median_ms


def _measure_component(
    c: _Component, device: str, runs: int, warmup: int, max_seconds: float | None, seed: int, backend: str
) -> float:
    torch.manual_seed(seed)
    module, call = c.build()
    with latency_runner(_Call(module, call), c.input_shape, device, backend=backend) as runner:
        return runner.measure(runs, warmup, max_seconds).median_ms


def _interleaved(
    items: list, measure: Callable[[Any], float], passes: int, progress: bool, desc: str
) -> list[float]:
    """``measure`` each item in ``passes`` passes, alternately forwards and backwards; the median per item.

    A burst of load from another process then lands on one pass of a few items, not on every run of them.
    """
    per_item: list[list[float]] = [[] for _ in items]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=passes * len(items), desc=desc, unit="entry", file=sys.stderr, dynamic_ncols=True)
    for p in range(passes):
        order = range(len(items)) if p % 2 == 0 else range(len(items) - 1, -1, -1)
        for i in order:
            per_item[i].append(measure(items[i]))
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    return [float(np.median(v)) for v in per_item]


def build_latency_table(
    space: SearchSpace,
    device: str = "cpu",
    batch_size: int = 1,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    calibration_archs: int = 8,
    seed: int = 0,
    progress: bool = True,
    max_seconds_per_entry: float | None = None,
    passes: int = 1,
    backend: str = "eager",
) -> LatencyTable:
    """Measure every component of ``space`` on ``device`` and calibrate on whole networks.

    Args:
        space: the search space whose architectures the table must answer for.
        device: "cpu" or "cuda[:N]" (ValueError if CUDA is asked for and not available).
        batch_size: images per forward pass.
        runs: timed runs per component and per calibration network (the median is kept).
        warmup: untimed runs before them.
        calibration_archs: random architectures measured whole to fit the calibration, besides the
            space's largest and smallest.
        seed: seeds the calibration architectures and the modules' initialisation.
        progress: print the component count and show a progress bar on stderr.
        max_seconds_per_entry: cap (s) on the timed runs of one component or network (at least 5 runs);
            None for no cap.
        passes: measure every component and network this many times (``runs`` each), in alternating
            order, and keep the median of its medians. 1 suffices on an idle device; 3 makes a table
            built on a shared, noisy machine robust to bursts of load from other processes.
        backend: the latency backend every component and calibration network runs with (eager, compile or
            onnxruntime; ``mixnas.search.latency_backends``). compile and onnxruntime compile or export each
            one first (seconds each), and with ``passes > 1`` again in every pass.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    name = device_name(device)  # also rejects an unavailable device before anything is built
    check_backend(backend, device)
    start = time.perf_counter()
    components = space_components(space, batch_size)
    archs = calibration_architectures(space, calibration_archs, seed)
    if progress:
        kinds = Counter(c.kind for c in components)
        print(
            f"latency LUT: {len(components)} components ({kinds['block']} blocks, {kinds['merge']} mergings, "
            f"{kinds['stem']} stems, {kinds['head']} heads) and {len(archs)} calibration networks "
            f"on {name}, batch {batch_size}" + (f", {passes} passes" if passes > 1 else "")
            + ("" if backend == "eager" else f", {backend}"),
            file=sys.stderr,
        )
    # Calibration networks are spread among the components, so that both meet the same load.
    jobs: list[_Component | ArchConfig] = list(components)
    for j, arch in reversed(list(enumerate(archs))):
        jobs.insert(round((j + 0.5) * len(components) / len(archs)), arch)

    def measure(job: _Component | ArchConfig) -> float:
        if isinstance(job, ArchConfig):
            return measure_network_ms(job, device, batch_size, runs, warmup, max_seconds_per_entry, seed, backend)
        return _measure_component(job, device, runs, warmup, max_seconds_per_entry, seed, backend)

    results = list(zip(jobs, _interleaved(jobs, measure, passes, progress, "measuring")))
    entries = {job.key: ms for job, ms in results if isinstance(job, _Component)}
    networks = {job.arch_id: ms for job, ms in results if isinstance(job, ArchConfig)}
    table = LatencyTable(
        entries=entries, device=name, batch_size=batch_size, calibration={"scale": 1.0, "offset_ms": 0.0},
        device_type=torch.device(device).type,
        geometry={**{f: getattr(space, f) for f in GEOMETRY_FIELDS}, "num_stages": len(space.stages)},
        space_name=space.name, backend=backend,
    )
    measured = [networks[a.arch_id] for a in archs]
    sums = [table.component_sum(a) for a in archs]
    points = [
        {"arch": a.summary(), "component_sum_ms": total, "measured_ms": ms}
        for a, total, ms in zip(archs, sums, measured)
    ]
    floor = _floor_sum(entries, components, space)
    table.calibration = {**fit_calibration(sums, measured, floor), "floor_sum_ms": floor, "points": points}
    table.meta = {
        "torch": torch.__version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "dtype": "float32",
        "runs": runs,
        "warmup": warmup,
        "passes": passes,
        "seed": seed,
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    return table


__all__ = [
    "LUTError", "LatencyTable", "arch_components", "build_latency_table", "fit_calibration", "measure_network_ms",
    "space_components",
]
