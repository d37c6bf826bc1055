"""Candidate evaluation, shared by every search backend.

For one architecture: take the supernet's weights for it (``Supernet.extract``), optionally fine-tune it
for a few epochs, recalibrate its BatchNorm on training batches, measure top-1 on the validation split,
count parameters and GFLOPs (DGE: mean, min and max over validation images) and measure latency on a
device or predict it from a lookup table. Every cached result is keyed to the supernet weights' digest, so
a supernet trained further never reuses an earlier score. A static network's GFLOPs come from the space's ``CostTable``
(exact, without tracing the network); an input-dependent one (DGE) is traced per image. Results are cached
by ``arch_id`` on disk (``RUN_DIR/search/cache/<arch_id>.json``), so an architecture suggested twice,
by a resumed search or by another Ray worker on the same storage, is evaluated once.

Scoring is deterministic on the CPU: an architecture gets the same accuracy and FLOPs in any process and
in any order of evaluation (the calibration batches are drawn afresh for each candidate from the
settings' seed, fine-tuning is seeded likewise, and every reduction runs in a fixed order on one
device). On a GPU, cuDNN and atomics may make the last digits of an accuracy differ between runs;
accuracy is a count of correct images, so it changes only when an image sits on a decision boundary.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mixnas.atomic import atomic_write_text
from mixnas.device import resolve_device
from mixnas.errors import CheckpointError, ConfigError, MixnasError
from mixnas.run_dir import RunDir
from mixnas.search.cost import is_input_dependent, model_gflops
from mixnas.search.cost_table import CostTable
from mixnas.search.latency_backends import check_backend
from mixnas.search.profiler import count_params, device_name
from mixnas.search.robust_latency import RobustLatency
from mixnas.search_space import ArchConfig
from mixnas.supernet import Supernet
from mixnas.supernet.checkpoint import load_weights
from mixnas.training import (
    LABEL_SMOOTHING,
    Schedule,
    StepInfo,
    StepResult,
    evaluate_accuracy,
    fit,
    read_config,
    read_space,
    recalibrate_batchnorm,
)


@dataclass(frozen=True)
class EvalSettings:
    """How candidates are scored.

    Args:
        device: where accuracy is measured and, with ``latency="measure"``, latency (cpu | cuda | auto).
        latency: ``measure`` on ``device``, ``lut`` (predict from ``latency_lut``) or ``none``.
        latency_lut: a lookup table built by ``mixnas latency build-lut``.
        latency_batch_size: images per timed forward pass.
        latency_runs: timed runs per candidate, split over ``latency_repeats`` interleaved rounds.
        latency_max_seconds: cap on the time spent timing one candidate (per attempt).
        latency_repeats: rounds per reading; the reading is the median of the rounds' medians
            (``mixnas.search.robust_latency``).
        latency_tolerance: a reading whose rounds disagree, or whose load probe ran slower, by more than
            this ratio is measured again (twice at most) and flagged ``latency_unstable`` if it stays so.
        latency_backend: how a candidate runs when its latency is measured: ``eager``, ``compile`` or
            ``onnxruntime`` (``mixnas.search.latency_backends``); a lookup table must have been built with it.
        calib_batches: training batches for BatchNorm recalibration.
        val_limit: evaluate on at most this many validation images (0 = all).
        flops_images: validation images whose FLOPs are averaged for input-dependent (DGE) models
            (0 = every scored validation image).
        train_epochs: fine-tune each candidate from its inherited weights for this many epochs first.
        finetune_lr: learning rate of that fine-tuning.
        finetune_steps: cap on fine-tuning steps per epoch (0 = a full pass over the training set).
        seed: seeds fine-tuning and data order.
    """

    device: str = "cpu"
    latency: str = "measure"
    latency_lut: str | None = None
    latency_batch_size: int = 1
    latency_runs: int = 20
    latency_max_seconds: float = 2.0
    latency_repeats: int = 3
    latency_tolerance: float = 1.5
    latency_backend: str = "eager"
    calib_batches: int = 10
    val_limit: int = 0
    flops_images: int = 0
    train_epochs: int = 0
    finetune_lr: float = 5e-4
    finetune_steps: int = 0
    seed: int = 0

    def cache_key(self) -> str:
        """Settings that change a result: a cached result is reused only under the same ones."""
        d = asdict(self)
        d.pop("latency_max_seconds")
        if self.latency != "measure":  # how latency would be timed changes nothing then
            d.pop("latency_repeats")
            d.pop("latency_tolerance")
        if self.latency == "none" or self.latency_backend == "eager":  # eager: as keyed before backends existed
            d.pop("latency_backend")
        return json.dumps(d, sort_keys=True)


class CandidateEvaluator:
    """Scores architectures of a trained supernet's space.

    Args:
        run_dir: a supernet run directory (``mixnas supernet train --out``): a ``RunDir`` or its path.
        settings: how to score.
    """

    def __init__(self, run_dir: RunDir | str | Path, settings: EvalSettings | None = None) -> None:
        from mixnas.data import load_dataset, make_loader

        self.run = RunDir.of(run_dir)
        self.run_dir = self.run.path
        self.settings = settings or EvalSettings()
        self.space = read_space(self.run)
        self.train_config = read_config(self.run)
        weights = self.run.weights
        if not weights.is_file():
            raise CheckpointError(f"{weights}: missing; train the supernet first (mixnas supernet train)")
        self.device = resolve_device(self.settings.device)
        self.supernet = load_weights(Supernet(self.space), weights).eval()
        self.weights_digest = self.run.weights_digest()
        self.data = load_dataset(self.train_config.data, self.space.input_size, seed=self.train_config.seed)
        val = self.data.val
        if self.settings.val_limit and self.settings.val_limit < len(val):
            val = torch.utils.data.Subset(val, range(self.settings.val_limit))
        self.val_loader = make_loader(val, 256, shuffle=False)
        n = self.settings.flops_images
        flops_set = val if not n or n >= len(val) else torch.utils.data.Subset(val, range(n))
        self.flops_loader = make_loader(flops_set, 256, shuffle=False)
        self.lut = None
        if self.settings.latency == "lut":
            from mixnas.search.latency_lut import LatencyTable

            if not self.settings.latency_lut:
                raise ConfigError("--latency-lut: required when latency is predicted from a lookup table")
            self.lut = LatencyTable.load(self.settings.latency_lut)
            if self.lut.batch_size != self.settings.latency_batch_size:
                raise ConfigError(
                    f"--latency-lut: {self.settings.latency_lut} was measured at batch {self.lut.batch_size}, "
                    f"but --latency-batch-size is {self.settings.latency_batch_size}; build a table at that batch"
                )
            self.lut.check_backend(self.settings.latency_backend)
        elif self.settings.latency == "measure":
            # Packages are checked where latency is measured: an evaluator that only re-creates scored
            # networks (mixnas export --weights) needs none.
            check_backend(self.settings.latency_backend, self.device, installed=False)
        self.cache_dir = self.run.cache_dir
        self._memory: dict[str, dict[str, Any]] = {}
        self._cost_table: CostTable | None = None
        s = self.settings
        self.timer = RobustLatency(device=str(self.device), batch_size=s.latency_batch_size, runs=s.latency_runs,
                                   repeats=s.latency_repeats, max_seconds=s.latency_max_seconds,
                                   tolerance=s.latency_tolerance, backend=s.latency_backend)

    @property
    def cost_table(self) -> CostTable:
        """The space's per-component FLOPs and parameters, counted once (kept in ``RUN_DIR/search``)."""
        if self._cost_table is None:
            self._cost_table = CostTable.for_space(self.space, self.run.cost_table)
        return self._cost_table

    def calibration_batches(self) -> Any:
        """The BatchNorm calibration batches: a fresh loader seeded by the settings, so that every candidate
        is calibrated on the same images whatever was evaluated before it, in whichever process."""
        from mixnas.data import make_loader

        return make_loader(self.data.calib, self.train_config.batch_size, shuffle=True, seed=self.settings.seed)

    # ------------------------------------------------------------------------------------------ cache
    def _cache_path(self, arch: ArchConfig) -> Path:
        return self.cache_dir / f"{arch.arch_id}.json"

    def cached(self, arch: ArchConfig) -> dict[str, Any] | None:
        if arch.arch_id in self._memory:
            return self._memory[arch.arch_id]
        path = self._cache_path(arch)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            return None  # a damaged cache entry is recomputed, never trusted
        result = entry.get("result") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or entry.get("settings") != self.settings.cache_key() \
                or entry.get("weights") != self.weights_digest \
                or not _valid_result(result) or _arch_id_of(entry.get("arch")) != arch.arch_id:
            return None  # another architecture's, other settings' or weights', or forged: recomputed
        self._memory[arch.arch_id] = result
        return result

    # ----------------------------------------------------------------------------------------- scoring
    def evaluate(self, arch: ArchConfig) -> dict[str, Any]:
        """Accuracy (%), params, GFLOPs (mean/min/max), latency (ms) and its source, evaluation seconds."""
        hit = self.cached(arch)
        if hit is not None:
            return dict(hit, cached=True)
        t0 = time.perf_counter()
        model = self.prepare(arch)
        accuracy = evaluate_accuracy(model, self.val_loader, self.device)
        model = model.cpu().eval()
        if is_input_dependent(arch):
            mean, lo, hi = model_gflops(model, arch, self.flops_loader)
        else:  # exact, and no trace: the space's per-component counts (a test checks they equal fvcore's)
            mean = lo = hi = self.cost_table.arch_cost(arch)[0]
        result: dict[str, Any] = {
            "accuracy": accuracy, "params": count_params(model), "gflops": mean, "gflops_min": lo, "gflops_max": hi,
        }
        result.update(self.latency(model, arch))
        result["eval_seconds"] = time.perf_counter() - t0
        if not math.isfinite(accuracy):
            raise FloatingPointError(f"accuracy is {accuracy}")
        self._memory[arch.arch_id] = result
        atomic_write_text(
            self._cache_path(arch),
            json.dumps({"arch": arch.to_dict(), "settings": self.settings.cache_key(), "weights": self.weights_digest,
                        "result": result}, indent=1),
        )
        return dict(result, cached=False)

    def prepare(self, arch: ArchConfig) -> torch.nn.Module:
        """The network scored for ``arch``: the supernet's weights, optionally fine-tuned, BatchNorm
        recalibrated; deterministic, so exporting it reproduces the recorded accuracy."""
        self.supernet.check(arch)
        torch.manual_seed(self.settings.seed)
        model = self.supernet.extract(arch).to(self.device)
        if self.settings.train_epochs > 0:
            finetune(model, self.data.train, self.settings, self.train_config.batch_size, self.device)
        recalibrate_batchnorm(model, self.calibration_batches(), self.settings.calib_batches)
        return model.eval()

    def latency(self, model: torch.nn.Module, arch: ArchConfig) -> dict[str, Any]:
        s = self.settings
        if s.latency == "none":
            return {"latency_ms": math.nan, "latency_p90_ms": math.nan, "latency_source": "none"}
        if self.lut is not None:
            median = self.lut.predict(arch)
            return {"latency_ms": median, "latency_p90_ms": math.nan, "latency_source": self.lut.source}
        reading = self.timer.measure(model, arch.input_size, in_chans=arch.in_chans)
        model.cpu()
        backend = "" if s.latency_backend == "eager" else f", {s.latency_backend}"
        return {
            "latency_ms": reading.median_ms, "latency_p90_ms": reading.p90_ms,
            "latency_source": f"measured: {device_name(str(self.device))}, batch {s.latency_batch_size}{backend}",
            "latency_unstable": reading.unstable, "latency_rounds_ms": ",".join(f"{r:.4g}" for r in reading.rounds_ms),
            "latency_load": reading.load, "latency_attempts": reading.attempts,
        }


def _arch_id_of(arch: Any) -> str | None:
    try:
        return ArchConfig.from_dict(arch).arch_id
    except (MixnasError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None


def _valid_result(result: Any) -> bool:
    """A cached result has every number the trial table reads, each a finite number (latency may be NaN)."""
    if not isinstance(result, dict):
        return False
    for key in ("accuracy", "params", "gflops", "gflops_min", "gflops_max"):
        value = result.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
    return 0 <= result["accuracy"] <= 100 and 0 <= result["params"] < 2**53


def save_settings(run_dir: RunDir | str | Path, settings: EvalSettings) -> None:
    """Record how a search scored its candidates (export re-creates the scored networks from it)."""
    run = RunDir.of(run_dir)
    run.write_settings(settings, run.eval_settings_file)


def load_settings(run_dir: RunDir | str | Path) -> EvalSettings:
    run = RunDir.of(run_dir)
    if not run.eval_settings_file.is_file():
        raise CheckpointError(f"{run.eval_settings_file}: missing; run mixnas search on this run directory first")
    return run.read_settings(EvalSettings, run.eval_settings_file)


def finetune(model: torch.nn.Module, train_set: Any, settings: EvalSettings, batch_size: int,
             device: torch.device) -> list[dict[str, Any]]:
    """Train an extracted subnet for ``settings.train_epochs`` epochs from its inherited weights, in memory,
    through the same loop as every other training (AdamW and cosine from timm, no warm-up, seeded by
    ``settings.seed``); ``settings.finetune_steps`` caps the steps of each epoch (0: a full pass)."""
    from timm.loss import LabelSmoothingCrossEntropy

    loss_fn = LabelSmoothingCrossEntropy(LABEL_SMOOTHING)
    schedule = Schedule(epochs=settings.train_epochs, batch_size=batch_size, lr=settings.finetune_lr,
                        warmup_epochs=0, seed=settings.seed,
                        steps_per_epoch=settings.finetune_steps, min_lr_ratio=0.0)

    def step(x: torch.Tensor, y: torch.Tensor, info: StepInfo) -> StepResult:
        loss = loss_fn(model(x), y)
        return StepResult(loss, loss.detach())

    history = fit(model, step, train_set, schedule, device, progress=False, desc="fine-tune")
    model.eval()
    return history
