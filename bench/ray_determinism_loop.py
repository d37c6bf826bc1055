"""Run the Ray-vs-Optuna comparison test again and again: it failed once in a fresh clone (the same
architecture scored differently in a Ray worker and in process). Not part of CI; writes one line per run.

    python bench/ray_determinism_loop.py [--runs 10] [--out docs/benchmarks/reliability_ray_loop.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = "tests/test_ray_runner.py::test_ray_search_restores_and_matches_the_optuna_table"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    rows = []
    for i in range(args.runs):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST], cwd=ROOT,
                             capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": str(i)})
        seconds = time.perf_counter() - start
        ok = out.returncode == 0
        rows.append((i + 1, ok, seconds))
        print(f"run {i + 1}: {'passed' if ok else 'FAILED'} ({seconds:.0f}s)", flush=True)
        if not ok:
            print(out.stdout[-3000:])
    passed = sum(ok for _, ok, _ in rows)
    text = "\n".join([
        f"# `{TEST}` run {args.runs} times in a row",
        "",
        f"Run {date.today()} on {platform.machine()} ({os.cpu_count()} cores) with `bench/ray_determinism_loop.py`, "
        "each run a fresh pytest process (its own supernet training, Ray instance and evaluations).",
        "",
        "| run | outcome | seconds |",
        "|---:|---|---:|",
        *[f"| {n} | {'passed' if ok else 'FAILED'} | {s:.0f} |" for n, ok, s in rows],
        "",
        f"{passed} of {args.runs} passed.",
    ]) + "\n"
    if args.out:
        args.out.write_text(text)
    return 0 if passed == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
