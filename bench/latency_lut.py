"""How far does a latency lookup table's prediction land from measurement?

Builds a table for a search space (``mixnas/configs/spaces/demo.yaml`` by default) on a device, then for random
architectures of the space that the table was not calibrated on, measures each whole network
(``build_model``, ``measure_latency``: median of the timed runs, ms) and compares it with
``LatencyTable.predict``. Prints the mean absolute percentage error (MAPE) and the share of architectures
predicted within 10%, and adds a row to ``docs/benchmarks/latency_lut.md``.

Drift on a shared machine (other jobs starting and stopping) would otherwise fall on the table and the
measurements unequally, so the networks are measured in ``--passes`` passes, the first before the table
is built and the others after it, in alternating order, and each network's latency is the median of its
pass medians (the table is built with the same number of interleaved passes). How far one pass lands from
that median is reported too ("repeat"): the measurement's own noise, a floor for the table's error.

    .venv/bin/python bench/latency_lut.py                          # CPU, batch 1, 30 architectures
    .venv/bin/python bench/latency_lut.py --device cuda --batch-size 64 --note "H200, idle"
    .venv/bin/python bench/latency_lut.py --threads 1 --clock thread    # a busy CPU: see --clock

``--clock thread`` (CPU only, with ``--threads 1``) times each run with the thread's CPU time instead of
the monotonic wall clock. It is not DESIGN.md's latency convention, but on a machine shared with other
jobs it is immune to preemption, which inflates a long run (a network) far more than a short one (a
component); it then tells how good the table's decomposition is apart from the machine's load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

import mixnas.search.profiler as profiler
from mixnas.atomic import atomic_write_text
from mixnas.search.latency_lut import build_latency_table, calibration_architectures, measure_network_ms
from mixnas.search.profiler import device_name
from mixnas.search_space import ArchConfig, SearchSpace

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- rows: bench/latency_lut.py adds one per run -->", "<!-- end of rows -->"
HEADER = (
    "| date | space | device | torch | batch | clock | archs | components | passes x runs | build s | MAPE % "
    "| within 10% | repeat % | note |\n|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"
)
INTRO = """# Latency lookup table: prediction against measurement

`mixnas latency build-lut` measures every block choice of a search space (and each stem, patch merging and
head) on one device and calibrates their sum on whole networks, so that a search on another machine can
score latency on that device (`--latency lut`). `bench/latency_lut.py` builds a table, then for random
architectures of the space, none of them among the networks the table was calibrated on, compares the
table's prediction with the measured median latency of the whole network (ms, float32, no grad).

- **MAPE %**: mean over architectures of |predicted - measured| / measured.
- **within 10%**: share of architectures predicted within 10% of their measurement.
- **passes x runs**: each network is measured in this many passes of that many timed runs (the first
  pass before the table is built, the others after it, in alternating order) and its latency is the
  median of its pass medians; the table's components and calibration networks are measured in as many
  interleaved passes.
- **repeat %**: mean over networks and passes of |pass median - network latency| / network latency:
  the measurement's own noise, and so a floor for the table's error.
- **clock**: `wall`, the monotonic clock of DESIGN.md's convention (CUDA events on a GPU); `thread`, a
  diagnostic for busy CPUs: each run timed by the thread's CPU time (one torch thread), which preemption
  by other processes does not inflate (caches and cores shared with them still do).
- **build s**: wall-clock seconds to build the table (components and calibration networks).
- DGE blocks are measured with the router as initialised (every region at the finest granularity).

On a shared CPU the measurement itself is noisy: when the repeat % is close to the MAPE, the error is the
machine's as much as the table's. Rows noted "shared 2-core VM" come from a development VM where other
jobs kept the load average at 1.5-2.5 times the core count; a row from an idle GPU is the meaningful one.

Reproduce: `.venv/bin/python bench/latency_lut.py [--device cuda] [--batch-size N] [--threads N]`.
"""


def _thread_time_run_ms(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.thread_time_ns()
    model(x)
    return (time.thread_time_ns() - start) / 1e6


def held_out_architectures(space: SearchSpace, count: int, seed: int, exclude: set[str]) -> list[ArchConfig]:
    """``count`` distinct random architectures, none of them in ``exclude`` (arch ids)."""
    rng = random.Random(f"bench-latency-lut-{seed}")
    archs: dict[str, ArchConfig] = {}
    for _ in range(100 * count):
        arch = space.sample(rng)
        if arch.arch_id not in exclude:
            archs.setdefault(arch.arch_id, arch)
        if len(archs) == count:
            break
    return list(archs.values())


def measure_pass(archs: list[ArchConfig], backwards: bool, args: argparse.Namespace, label: str) -> list[float]:
    """Median latency (ms) of each architecture, measured in order or backwards; returned in the archs' order."""
    out = [0.0] * len(archs)
    order = range(len(archs) - 1, -1, -1) if backwards else range(len(archs))
    for n, i in enumerate(order, 1):
        out[i] = measure_network_ms(archs[i], args.device, args.batch_size, args.runs, args.warmup)
        print(f"\r{label}: {n}/{len(archs)} networks", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return out


def write_row(doc: Path, row: str | None) -> None:
    """Append ``row`` (if any) to the table in ``doc``, keeping earlier rows; rewrites the text around it."""
    rows: list[str] = []
    if doc.is_file():
        text = doc.read_text()
        if BEGIN in text and END in text:
            body = text.split(BEGIN, 1)[1].split(END, 1)[0]
            rows = [line for line in body.splitlines() if line.startswith("| ") and not line.startswith("| date")]
    if row is not None:
        rows.append(row)
    atomic_write_text(doc, f"{INTRO}\n{BEGIN}\n{HEADER}\n" + "\n".join(rows) + f"\n{END}\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", type=Path, default=ROOT / "mixnas/configs/spaces/demo.yaml", help="search space YAML")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where latency is measured")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    p.add_argument("--archs", type=int, default=30, help="architectures compared (at least 30 for the doc)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per component and per network (median)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs before them")
    p.add_argument("--passes", type=int, default=3, help="interleaved passes over the networks and the table")
    p.add_argument("--calibration-archs", type=int, default=8, help="random networks the table calibrates on")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    p.add_argument("--seed", type=int, default=0, help="seeds the table's calibration and the compared archs")
    p.add_argument("--lut-out", type=Path, default=None, help="also save the table here (JSON)")
    p.add_argument("--doc", type=Path, default=ROOT / "docs/benchmarks/latency_lut.md", help="Markdown page")
    p.add_argument("--no-doc", action="store_true", help="print only; leave the page alone")
    p.add_argument("--clock", choices=["wall", "thread"], default="wall",
                   help="CPU timer: monotonic wall clock (the convention) or the thread's CPU time (diagnostic)")
    p.add_argument("--note", default="", help="a remark for the row (machine load, ...)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available on this machine")
    if args.clock == "thread":
        if args.device != "cpu" or torch.get_num_threads() != 1:
            p.error("--clock thread: only with --device cpu and --threads 1 (it times the calling thread)")
        profiler._cpu_run_ms = _thread_time_run_ms  # the one CPU timer measure_latency calls

    space = SearchSpace.from_yaml(args.space)
    if space.num_classes_auto:  # the benchmarks run on digits
        space = space.with_num_classes(10)
    calibrated = {a.arch_id for a in calibration_architectures(space, args.calibration_archs, args.seed)}
    archs = held_out_architectures(space, args.archs, args.seed, calibrated)
    passes = [measure_pass(archs, False, args, "networks, pass 1 (before the table)")]
    start = time.perf_counter()
    table = build_latency_table(
        space, device=args.device, batch_size=args.batch_size, runs=args.runs, warmup=args.warmup,
        calibration_archs=args.calibration_archs, seed=args.seed, progress=True, passes=args.passes,
    )
    build_s = time.perf_counter() - start
    if args.lut_out:
        table.save(args.lut_out)
    for n in range(1, args.passes):
        passes.append(measure_pass(archs, n % 2 == 1, args, f"networks, pass {n + 1}"))

    per_pass = np.asarray(passes)  # (passes, archs) ms
    measured = np.median(per_pass, axis=0)
    predicted = np.asarray([table.predict(a) for a in archs])
    err = np.abs(predicted - measured) / measured
    repeat = np.abs(per_pass - measured) / measured
    mape, within, repeat_pct = float(err.mean() * 100), float((err <= 0.10).mean() * 100), float(repeat.mean() * 100)

    print(f"{'measured ms':>12} {'predicted ms':>13} {'error %':>8}  architecture")
    for a, m, pr, e in sorted(zip(archs, measured, predicted, err), key=lambda t: -t[3]):
        print(f"{m:>12.3f} {pr:>13.3f} {e * 100:>8.1f}  {a.summary()}")
    cal = table.calibration
    print(
        f"\n{len(archs)} architectures on {table.device}, batch {args.batch_size}: MAPE {mape:.1f}%, "
        f"{within:.0f}% within 10%, repeat {repeat_pct:.1f}% ({args.passes} passes); "
        f"table: {len(table.entries)} components built in {build_s:.0f} s, "
        f"calibration {cal['scale']:.3f} x sum {cal['offset_ms']:+.3f} ms ({cal['fit']})"
    )
    if not args.no_doc:
        row = (
            f"| {dt.date.today().isoformat()} | {space.name or args.space.stem} | {device_name(args.device)} | "
            f"{torch.__version__} | {args.batch_size} | {args.clock} | {len(archs)} | {len(table.entries)} | "
            f"{args.passes} x {args.runs} | {build_s:.0f} | {mape:.1f} | {within:.0f}% | {repeat_pct:.1f} | "
            f"{args.note} |"
        )
        write_row(args.doc, row)
        print(f"added a row to {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
