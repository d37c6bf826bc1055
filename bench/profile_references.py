"""Latency of every reference architecture against its FLOPs: does the FLOPs ranking predict speed?

On a GPU: batch 1 and 64, float32 and bfloat16 autocast, CUDA events. On the CPU: batch 1 and 8,
float32. Writes docs/benchmarks/profile_<device>.md with the date and machine, and the Spearman rank
correlation between measured latency and GFLOPs for each setting.

    .venv/bin/python bench/profile_references.py [--device cpu|cuda] [--runs 30]
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
import torch

from mixnas import ArchConfig, build_model
from mixnas.search.cost import model_gflops
from mixnas.search.profiler import count_params, device_name, measure_latency

ROOT = Path(__file__).resolve().parents[1]


def ranks(values: list[float]) -> np.ndarray:
    order = np.argsort(values)
    r = np.empty(len(values))
    r[order] = np.arange(len(values))
    return r


def spearman(a: list[float], b: list[float]) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--max-seconds", type=float, default=20.0, help="cap per architecture and setting")
    args = parser.parse_args()
    settings = (
        [(1, None), (64, None), (1, torch.bfloat16), (64, torch.bfloat16)] if args.device == "cuda"
        else [(1, None), (8, None)]
    )
    rows = []
    for path in sorted((ROOT / "mixnas" / "configs" / "reference").glob("*.yaml")):
        arch = ArchConfig.from_yaml(path)
        torch.manual_seed(0)
        model = build_model(arch).eval()
        gflops, lo, hi = model_gflops(model, arch)
        row = {"name": arch.name, "params": count_params(model), "gflops": gflops}
        for batch, amp in settings:
            stats = measure_latency(model, arch.input_size, batch_size=batch, device=args.device, runs=args.runs,
                                    warmup=5, amp_dtype=amp, max_seconds=args.max_seconds)
            row[(batch, amp)] = stats
            print(f"{arch.name:16s} batch {batch:3d} {str(amp):15s} {stats.median_ms:9.2f} ms", flush=True)
        model.cpu()
        rows.append(row)
    header = ["architecture", "params (M)", "GFLOPs"] + [
        f"batch {b} {'bf16' if a else 'fp32'} median / p90 (ms)" for b, a in settings
    ]
    lines = [
        f"# Reference architectures: latency against FLOPs on {args.device}",
        "",
        f"Measured {dt.date.today().isoformat()} on {device_name(args.device)}, torch {torch.__version__}, "
        f"by `bench/profile_references.py`: warm-up, then median and p90 of up to {args.runs} runs "
        f"({'CUDA events' if args.device == 'cuda' else 'monotonic clock'}). GFLOPs are multiply-adds at batch 1.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in rows:
        cells = [r["name"], f"{r['params'] / 1e6:.2f}", f"{r['gflops']:.3f}"]
        cells += [f"{r[s].median_ms:.2f} / {r[s].p90_ms:.2f}" for s in settings]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Spearman rank correlation between GFLOPs and measured latency:", ""]
    flops = [r["gflops"] for r in rows]
    for s in settings:
        rho = spearman(flops, [r[s].median_ms for r in rows])
        by_latency = ", ".join(r["name"] for r in sorted(rows, key=lambda r: r[s].median_ms))
        lines.append(f"* batch {s[0]} {'bf16' if s[1] else 'fp32'}: rho = {rho:.2f}; fastest to slowest: {by_latency}")
    by_flops = ", ".join(r["name"] for r in sorted(rows, key=lambda r: r["gflops"]))
    lines += ["", f"By GFLOPs, cheapest first: {by_flops}.", ""]
    out = ROOT / "docs" / "benchmarks" / f"profile_{args.device}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
