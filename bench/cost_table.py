"""How long does counting a space's cost table take, with whole blocks against a block's two halves?

``CostTable`` counts every component of a space once with fvcore. Before, a block was counted whole for
every combination of mixer option, width, heads, MLP ratio, FFN and shift; now a block whose mixer does not
wrap it is counted as its mixing half (per option, width, heads and shift) plus its FFN half (per width,
ratio, FFN and norm), and the table adds them (``mixnas.search.cost_table``). This times both ways on each
shipped space, alternating, on one torch thread, and checks that the two give every one of N random
architectures the same FLOPs and parameters.

    python bench/cost_table.py [--repeats 3] [--archs 200] [--out docs/benchmarks/cost_table.md]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mixnas.packaged import load_space, space_names
from mixnas.search import cost_table
from mixnas.search.latency_lut import arch_components, space_components
from mixnas.search_space import SearchSpace

ROOT = Path(__file__).resolve().parents[1]


def whole_blocks(space: SearchSpace) -> dict[str, tuple[int, int]]:
    """The previous count: every component of the latency table, blocks whole."""
    return cost_table.count_each(space_components(space, batch_size=1))


def halves(space: SearchSpace) -> dict[str, tuple[int, int]]:
    cost_table._counted.clear()  # count, not the process's kept counts
    return cost_table.count_components(space)


def timed(fn: Callable[[SearchSpace], dict], space: SearchSpace) -> tuple[float, dict]:
    start = time.process_time()
    counts = fn(space)
    return time.process_time() - start, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="alternating counts of each way per space")
    parser.add_argument("--archs", type=int, default=200, help="random architectures compared per space")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "cost_table.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in space_names():
        space = load_space(name)
        space = space.with_num_classes(1000) if space.num_classes is None else space
        times: dict[str, list[float]] = {"whole": [], "halves": []}
        for i in range(args.repeats):
            for way in ("whole", "halves") if i % 2 == 0 else ("halves", "whole"):
                seconds, counts = timed(whole_blocks if way == "whole" else halves, space)
                times[way].append(seconds)
                if way == "whole":
                    whole = counts
                else:
                    parts = counts
        table = cost_table.CostTable(space, parts)
        rng = random.Random(0)
        same = 0
        for _ in range(args.archs):
            arch = space.sample(rng)
            flops = params = 0
            for key, n in arch_components(arch).items():
                flops, params = flops + n * whole[key][0], params + n * whole[key][1]
            gflops, p = table.arch_cost(arch)
            same += round(gflops * 1e9) == flops and p == params
        before, now = statistics.median(times["whole"]), statistics.median(times["halves"])
        rows.append((name, len(whole), len(parts), before, now, same))
        print(name, len(whole), len(parts), f"{before:.1f} s -> {now:.1f} s", f"{before / now:.2f}x",
              f"{same}/{args.archs} equal")
    lines = [
        "# Counting a space's cost table: whole blocks against a block's two halves",
        "",
        f"Measured {datetime.date.today()} with `bench/cost_table.py` on {platform.machine()} (the 2-core CPU"
        f" machine, shared; torch {torch.__version__}, Python {platform.python_version()}, one torch thread)."
        f" CPU seconds of counting every component of each shipped space with fvcore (1000 classes where the"
        f" space leaves them open), median of {args.repeats} alternating counts of each way in one process.",
        "",
        "| space | counts, whole blocks (before) | counts, halves (now) | CPU s before | CPU s now | speed-up |"
        " random architectures with the same FLOPs and parameters |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *[f"| {n} | {a} | {b} | {t0:.1f} | {t1:.1f} | {t0 / t1:.2f}x | {s} of {args.archs} |"
          for n, a, b, t0, t1, s in rows],
        "",
        "A search counts the table once per run directory (`search/cost_table.json`), before its first proposal"
        " (the guided sampler prices 10,000 candidates a trial with it), and a process keeps the counts of the"
        " spaces it counted. Stems, mergings, heads and block-wrapping mixers' blocks (DGE) are counted as"
        " before; the architectures' costs are the sums of whole-block counts exactly (last column).",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
