"""Latency readings a search can trust on a shared machine: interleaved repeats, a load probe, re-measurement.

One timing of a candidate on a busy machine can be 50x its true latency (a search recorded 206 ms beside
neighbours at 2-5 ms). ``RobustLatency.measure`` therefore:

1. times the candidate in ``repeats`` separate rounds (each ``runs / repeats`` timed runs of one
   ``latency_runner``, so a compiled or exported network is built once), interleaved with a fixed probe
   workload (a small matrix product, about a millisecond);
2. takes the reading as the median of the rounds' medians, and the p90 over the rounds' p90s;
3. calls the reading unstable when its rounds disagree (the slowest round's median more than
   ``tolerance`` times the fastest's) or when a probe beside it ran more than ``tolerance`` times slower
   than the fastest probe this process has seen (the machine was busy, even if every round was slowed
   alike);
4. measures an unstable reading again, up to ``retries`` times, after a short pause, and keeps the first
   stable attempt; one that stays unstable is returned flagged (``unstable``), with the least disturbed
   attempt's value, so that the table and the pages can say so instead of silently using it.

On a GPU the probe runs on the same device. The timing itself is ``measure_latency``'s (CUDA events on a
GPU, a monotonic clock on the CPU), of the network as ``backend`` runs it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mixnas.search.profiler import LatencyRunner, latency_runner

DEFAULT_TOLERANCE = 1.5


@dataclass(frozen=True)
class LatencyReading:
    """A latency reading and how far to trust it.

    Args:
        median_ms: median of the rounds' medians (ms).
        p90_ms: median of the rounds' 90th percentiles (ms).
        rounds_ms: each round's median (ms), of the attempt kept.
        load: the slowest probe beside the kept attempt over the fastest probe seen (1.0: an idle machine).
        attempts: attempts made (1 + re-measurements).
        unstable: no attempt was stable (rounds disagreed or the machine was busy throughout).
    """

    median_ms: float
    p90_ms: float
    rounds_ms: tuple[float, ...]
    load: float
    attempts: int
    unstable: bool

    @property
    def spread(self) -> float:
        """Slowest round over fastest round."""
        return max(self.rounds_ms) / max(min(self.rounds_ms), 1e-9)


@dataclass
class RobustLatency:
    """Measures candidates' latency with interleaved repeats and a load probe (module docstring).

    Args:
        device: "cpu" or "cuda[:N]".
        batch_size: images per forward pass.
        runs: timed runs per attempt, split over the rounds.
        repeats: rounds per attempt.
        max_seconds: cap on one attempt's timed runs (s), split over the rounds.
        tolerance: the largest ratio (rounds' spread, probe slowdown) a stable reading may show.
        retries: re-measurements of an unstable reading.
        pause_s: seconds to wait before a re-measurement (a burst of load may pass).
        use_probe: time the probe workload between rounds (off: only the rounds' agreement counts).
        backend: how the network runs as deployed: "eager", "compile" or "onnxruntime"
            (``mixnas.search.latency_backends``).
    """

    device: str = "cpu"
    batch_size: int = 1
    runs: int = 20
    repeats: int = 3
    max_seconds: float | None = 2.0
    tolerance: float = DEFAULT_TOLERANCE
    retries: int = 2
    pause_s: float = 0.2
    use_probe: bool = True
    backend: str = "eager"
    _probe_best_ms: float = field(default=float("inf"), repr=False)
    _probe_x: torch.Tensor | None = field(default=None, repr=False)

    def probe(self) -> float:
        """Time the fixed probe workload (ms) and return its slowdown over the fastest probe seen."""
        if not self.use_probe:
            return 1.0
        if self._probe_x is None:
            gen = torch.Generator().manual_seed(0)
            self._probe_x = torch.randn(192, 192, generator=gen).to(self.device)
        x = self._probe_x
        best = float("inf")
        with torch.no_grad():
            for _ in range(3):  # the fastest of three: a single slow call is not yet load
                if x.is_cuda:
                    torch.cuda.synchronize(x.device)
                t0 = time.perf_counter()
                y = x
                for _ in range(8):
                    y = torch.tanh(y @ x)
                if x.is_cuda:
                    torch.cuda.synchronize(x.device)
                best = min(best, (time.perf_counter() - t0) * 1e3)
        self._probe_best_ms = min(self._probe_best_ms, best)
        return best / self._probe_best_ms

    def _attempt(self, runner: LatencyRunner, warmup: int) -> tuple[list[float], list[float], float]:
        per_round = max(1, self.runs // self.repeats)
        cap = None if self.max_seconds is None else self.max_seconds / self.repeats
        medians, p90s, loads = [], [], [self.probe()]
        for r in range(self.repeats):
            stats = runner.measure(runs=per_round, warmup=warmup if r == 0 else 1, max_seconds=cap)
            medians.append(stats.median_ms)
            p90s.append(stats.p90_ms)
            loads.append(self.probe())
        return medians, p90s, max(loads)

    def measure(self, model: nn.Module, input_size: int, in_chans: int = 3, warmup: int = 3) -> LatencyReading:
        """The reading for ``model`` (module docstring); the model is left on ``device``. With a backend other
        than eager the network is compiled or exported once, before the first round, and every round times it."""
        shape = (self.batch_size, in_chans, input_size, input_size)
        with latency_runner(model, shape, self.device, backend=self.backend) as runner:
            return self._measure(runner, warmup)

    def _measure(self, runner: LatencyRunner, warmup: int) -> LatencyReading:
        best: tuple[float, list[float], list[float], float] | None = None  # (badness, medians, p90s, load)
        attempts = 0
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.pause_s)
            attempts += 1
            medians, p90s, load = self._attempt(runner, warmup)
            spread = max(medians) / max(min(medians), 1e-9)
            badness = max(spread, load)
            if best is None or badness < best[0]:
                best = (badness, medians, p90s, load)
            if badness <= self.tolerance:
                break
        badness, medians, p90s, load = best
        return LatencyReading(
            median_ms=float(np.median(medians)), p90_ms=float(np.median(p90s)), rounds_ms=tuple(medians),
            load=float(load), attempts=attempts, unstable=bool(badness > self.tolerance),
        )


__all__ = ["DEFAULT_TOLERANCE", "LatencyReading", "RobustLatency"]
