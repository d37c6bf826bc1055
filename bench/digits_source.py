"""What does loading the digits cost a fresh process, with and without importing ``sklearn.datasets``?

Every process that trains or scores on the embedded digits loads them once: each Ray worker, each torchrun
rank, each CLI command. ``load_dataset("digits", ...)`` used to read the source digits with
``sklearn.datasets.load_digits``, whose import brings in SciPy; it now reads scikit-learn's shipped file
itself (``mixnas.data.digits.source_digits``, the same arrays). This starts fresh Python processes in
alternating order and reads each one's CPU time and wall time from the operating system (``os.wait4``):

- ``imports only``: ``from mixnas.data import load_dataset`` (the floor every variant pays);
- ``sklearn.datasets imported (before)``: that, ``import sklearn.datasets``, then ``load_dataset``: what the
  old loader did, whose own reading of the file took milliseconds;
- ``now``: that without the ``sklearn.datasets`` import.

    python bench/digits_source.py [--runs 10] [--out docs/benchmarks/digits_source.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LOAD = "from mixnas.data import load_dataset\n"
VARIANTS = {
    "imports only": LOAD,
    "sklearn.datasets imported (before)": LOAD + "import sklearn.datasets\nload_dataset('digits', 32)\n",
    "now": LOAD + "load_dataset('digits', 32)\n",
}


def run_once(code: str) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of a fresh ``python -c code`` on one torch thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the variant failed:\n{code}")
    return usage.ru_utime + usage.ru_stime, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="processes of each variant, alternating")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "digits_source.md")
    args = parser.parse_args()
    names = list(VARIANTS)
    run_once(VARIANTS["now"])  # warm the file cache
    cpu: dict[str, list[float]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    for i in range(args.runs):
        for name in names if i % 2 == 0 else names[::-1]:
            c, w = run_once(VARIANTS[name])
            cpu[name].append(c)
            wall[name].append(w)
    med_cpu = {n: statistics.median(v) for n, v in cpu.items()}
    med_wall = {n: statistics.median(v) for n, v in wall.items()}
    floor = med_cpu["imports only"]
    before, now = med_cpu["sklearn.datasets imported (before)"], med_cpu["now"]
    print({n: (round(med_cpu[n], 2), round(med_wall[n], 2)) for n in names},
          f"loading: {before - floor:.2f} s -> {now - floor:.2f} s of CPU")
    rows = [f"| {n} | {med_cpu[n]:.2f} ({min(cpu[n]):.2f}-{max(cpu[n]):.2f}) | {med_wall[n]:.2f} | "
            f"{med_cpu[n] - floor:.2f} |" for n in names]
    lines = [
        "# Loading the digits in a fresh process, without importing sklearn.datasets",
        "",
        f"Measured {datetime.date.today()} with `bench/digits_source.py` on {platform.machine()} (the 2-core CPU"
        f" machine, shared; torch {torch.__version__}, Python {platform.python_version()}, one torch thread)."
        f" {args.runs} fresh processes of each variant in alternating order; CPU (user + system) and wall"
        " seconds of the whole process from the operating system, median (min-max). The last column is the"
        " median CPU above `imports only`: what loading the digits adds to a process.",
        "",
        "| variant | CPU s | wall s | CPU s above imports only |",
        "|---|---:|---:|---:|",
        *rows,
        "",
        f"Loading the 32 px digits in a fresh process: {before - floor:.2f} s of CPU before, {now - floor:.2f} s"
        f" now ({(before - floor) / max(now - floor, 1e-9):.1f}x less). Whole process: {before / now:.2f}x. What"
        " is left is rendering the canvases. Every Ray worker, torchrun rank and CLI command that loads the"
        " digits saves the difference once (a process keeps its renders for its next load, `loaders.py`).",
        "",
        "The arrays are scikit-learn's own (`tests/test_data.py` compares them with `load_digits()`, and the"
        " renders of seed 0 at 32 px and seed 3 at 24 px hash the same as with the old loader).",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
