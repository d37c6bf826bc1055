"""How long the main job takes: `mixnas run --preset demo` from an empty run directory.

Runs the command in a subprocess, timestamps the start of each stage from its output, and writes the
table to docs/benchmarks/demo.md with the date and the machine. The goal is at most 10 minutes on the
2-core CPU machine.

    .venv/bin/python bench/demo_time.py [--out /tmp/demo-bench] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from mixnas.search.profiler import device_name

ROOT = Path(__file__).resolve().parents[1]
STAGES = re.compile(r"^\[(\d)/4\] (.*)$")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/mixnas-demo-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks" / "demo.md")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    cmd = [sys.executable, "-m", "mixnas.cli", "run", "--preset", "demo", "--out", str(args.out)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    marks: list[tuple[str, float]] = []
    tail: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            m = STAGES.match(line)
            if m:
                marks.append((m.group(2), time.perf_counter() - t0))
                print(f"{time.perf_counter() - t0:7.1f}s  {line}", flush=True)
            tail = (tail + [line])[-40:]
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"the demo failed (exit {proc.returncode}):\n" + "\n".join(tail))
    marks.append(("end", total))
    rows = [(marks[i][0], marks[i + 1][1] - marks[i][1]) for i in range(len(marks) - 1)]
    metrics = (args.out / "metrics.csv").read_text().strip().splitlines()
    last = dict(zip(metrics[0].split(","), metrics[-1].split(",")))
    lines = [
        "# `mixnas run --preset demo`: wall time",
        "",
        f"Measured {dt.date.today().isoformat()} on {device_name('cpu')}, torch {torch.__version__}, "
        f"by `bench/demo_time.py` (a fresh run directory). The goal is at most 10 minutes on the 2-core machine.",
        "",
        "| stage | minutes |",
        "|---|---|",
        *[f"| {name} | {sec / 60:.2f} |" for name, sec in rows],
        f"| **total** | **{total / 60:.2f}** |",
        "",
        f"Supernet after {last.get('epoch')} epochs: val top-1 of the largest architecture "
        f"{float(last.get('val_acc_largest', 'nan')):.1f}%, "
        f"of the smallest {float(last.get('val_acc_smallest', 'nan')):.1f}% "
        f"(chance: 10%); training ran at {float(last.get('images_per_s', 'nan')):.0f} images/s "
        f"(each step runs four architectures).",
        "",
        "The machine is shared with other work; figures vary by about +-20% from run to run.",
        "",
    ]
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text("\n".join(lines))
    print("\n".join(lines))
    if not args.keep:
        shutil.rmtree(args.out)


if __name__ == "__main__":
    main()
