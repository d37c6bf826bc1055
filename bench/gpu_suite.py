"""GPU truth in one command: what only a GPU can show, measured on the lent H200 in at most 8 minutes.

    PYTHONPATH=. python bench/gpu_suite.py [--out DIR]     # on the GPU machine; tables go to $OUT or DIR
    python bench/gpu_suite.py --smoke --out /tmp/smoke     # every part for a few iterations (CI, on the CPU)

Parts, each a Markdown table (the device and torch's version named in each):

1. ``references.md``: the reference architectures at batch 1 and 64, float32 and bf16 autocast: latency
   median and p90 (CUDA events after warm-up), throughput, peak memory; Spearman rank correlation of FLOPs
   and latency, and the outliers (latency per FLOP far from the median).
2. ``dge.md``: DGE's real saving: ``dge_deit_s`` with the router forced to each granularity and as
   initialised, sparse evaluation, against ``deit_s`` at 256 px: latency cut / FLOPs cut (goal >= 0.7), and
   the top kernels (torch.profiler) of the coarsest setting.
3. ``supernet_step.md``: supernet step overhead (``bench/supernet_step.py``'s measurement): the largest
   and the smallest architecture, supernet against standalone, and the sandwich (goal <= 1.1x largest).
4. ``latency_lut.md``: a latency table of the imagenet space at batch 64 (and 1) predicting 30 held-out
   architectures measured whole: MAPE, shares within 10% and 5%, against a FLOPs-only linear fit.
5. ``cuda_paths.md``: bf16 supernet training steps (finite loss, no GradScaler with bf16), ``mixnas
   profile --device cuda``, ``torch.compile`` of an exported model against eager.

Only ``mixnas.supernet``, ``mixnas.search.profiler``, the cost code and the latency tables are used:
no ray, optuna or plotly (the GPU machine lacks them; fvcore and its small dependencies are carried).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mixnas.packaged import load_arch, load_space, reference_names  # noqa: E402
from mixnas.search.profiler import count_flops, device_name, measure_latency  # noqa: E402
from mixnas.supernet import Supernet, build_model  # noqa: E402


def header(title: str, device: str) -> list[str]:
    return [f"# {title}", "", f"Measured {dt.date.today()} on {device_name(device)} with torch {torch.__version__} "
            f"by `bench/gpu_suite.py`.", ""]


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else math.nan


def peak_memory_mb(device: str, run: Callable[[], None]) -> float:
    if not device.startswith("cuda"):
        return math.nan
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    run()
    return torch.cuda.max_memory_allocated() / 2**20


# ------------------------------------------------------------------------------------------------ parts
def part_references(device: str, smoke: bool) -> str:
    batches = (1, 2) if smoke else (1, 64)
    names = ["deit_t", "swin_t"] if smoke else reference_names()
    runs, warmup = (3, 1) if smoke else (30, 10)
    lines = header("Reference architectures on the GPU", device)
    lines += ["| architecture | GFLOPs | dtype | batch | median ms | p90 ms | images/s | peak MB |",
              "|---|---:|---|---:|---:|---:|---:|---:|"]
    rows = []
    for name in names:
        arch = load_arch(name)
        torch.manual_seed(0)
        model = build_model(arch).eval()
        gflops = count_flops(model, torch.randn(1, 3, arch.input_size, arch.input_size)) / 1e9
        model.to(device)
        for amp in (None, torch.bfloat16):
            for b in batches:
                stats = measure_latency(model, arch.input_size, batch_size=b, device=device, runs=runs, warmup=warmup,
                                        amp_dtype=amp)
                x = torch.randn(b, 3, arch.input_size, arch.input_size, device=device)

                def forward(model=model, x=x, amp=amp) -> None:
                    with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=amp, enabled=amp is not None):
                        model(x)

                mem = peak_memory_mb(device, forward)
                rows.append((name, gflops, stats.dtype, b, stats.median_ms))
                lines.append(f"| {name} | {gflops:.2f} | {stats.dtype} | {b} | {stats.median_ms:.2f} | "
                             f"{stats.p90_ms:.2f} | {b / stats.median_ms * 1e3:.0f} | {mem:.0f} |")
        model.cpu()
    lines.append("")
    for dtype in ("float32", "bfloat16"):
        for b in batches:
            sel = [r for r in rows if r[2] == dtype and r[3] == b]
            rho = spearman([r[1] for r in sel], [r[4] for r in sel])
            per_flop = np.array([r[4] / r[1] for r in sel])
            med = float(np.median(per_flop))
            outliers = [f"{r[0]} ({p / med:.1f}x)" for r, p in zip(sel, per_flop) if p / med > 1.5 or p / med < 0.67]
            lines.append(f"* {dtype}, batch {b}: Spearman(FLOPs, latency) = {rho:.2f}; ms per GFLOP far from the "
                         f"median: {', '.join(outliers) or 'none'}")
    return "\n".join(lines) + "\n"


def force_router(model: torch.nn.Module, granularity: int | None) -> None:
    """Every DGE router of ``model`` sends every region to ``granularity`` (None: as initialised)."""
    for m in model.modules():
        if type(m).__name__ == "DynamicGrainedEncoder" and granularity is not None:
            with torch.no_grad():
                m.router.bias.fill_(-30.0)
                m.router.bias[granularity - 1] = 30.0


def part_dge(device: str, smoke: bool) -> str:
    batches = (1, 2) if smoke else (1, 64)
    runs, warmup = (3, 1) if smoke else (30, 10)
    dge_arch = load_arch("dge_deit_s")
    base = replace(load_arch("deit_s"), input_size=dge_arch.input_size)
    if smoke:  # a small stand-in with the same structure
        dge_arch = replace(dge_arch, input_size=64, stages=(replace(dge_arch.stages[0], depth=2, dim=96, heads=2),))
        base = replace(base, input_size=64, stages=(replace(base.stages[0], depth=2, dim=96, heads=2),))
    x1 = torch.randn(1, 3, base.input_size, base.input_size)
    torch.manual_seed(0)
    dense = build_model(base).eval()
    dense_gflops = count_flops(dense, x1) / 1e9
    lines = header("DGE: latency saved against FLOPs saved (sparse evaluation)", device)
    lines += [f"Against deit_s at {base.input_size} px ({dense_gflops:.3g} GFLOPs). Goal: latency cut / FLOPs "
              f"cut >= 0.7.", "", "| router | batch | GFLOPs | FLOPs cut | ms | deit_s ms | latency cut | ratio |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    dense_ms = {b: measure_latency(dense, base.input_size, b, device, runs, warmup).median_ms for b in batches}
    dense.cpu()
    profile_text = ""
    for g in (None, 4, 2, 1):
        torch.manual_seed(0)
        model = build_model(dge_arch).eval()
        force_router(model, g)
        gflops = count_flops(model, x1) / 1e9
        for b in batches:
            ms = measure_latency(model, dge_arch.input_size, b, device, runs, warmup).median_ms
            f_cut, l_cut = 1 - gflops / dense_gflops, 1 - ms / dense_ms[b]
            ratio = l_cut / f_cut if f_cut > 1e-6 else math.nan
            label = "as initialised" if g is None else f"forced to {g}"
            lines.append(f"| {label} | {b} | {gflops:.3g} | {f_cut:.0%} | {ms:.2f} | {dense_ms[b]:.2f} | "
                         f"{l_cut:.0%} | {ratio:.2f} |")
        if g == 1:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
            x = torch.randn(batches[-1], 3, dge_arch.input_size, dge_arch.input_size, device=device)
            model.to(device)
            with torch.no_grad(), profile(activities=activities) as prof:
                for _ in range(3):
                    model(x)
            key = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
            profile_text = prof.key_averages().table(sort_by=key, row_limit=12)
        model.cpu()
    lines += ["", "Top kernels, coarsest granularity, largest batch:", "", "```", profile_text.strip(), "```"]
    return "\n".join(lines) + "\n"


def part_supernet_step(device: str, smoke: bool) -> str:
    import supernet_step as bench_step  # bench/supernet_step.py

    args = bench_step.parse_args(["--device", device.split(":")[0], "--batch-size", "8" if smoke else "64",
                                  "--steps", "2" if smoke else "20", "--warmup", "1" if smoke else "5", "--no-train",
                                  "--threads", "1"])
    space = load_space(args.space).with_num_classes(10)
    steps = bench_step.compare_steps(space, args, torch.device(device))
    lines = header("Supernet step overhead", device)
    lines += ["| step | median ms | standalone largest ms | ratio |", "|---|---:|---:|---:|"]
    med = {w: {k: float(np.median(steps[w][k])) for k in ("supernet", "standalone")} for w in ("largest", "smallest")}
    for w in ("largest", "smallest"):
        lines.append(f"| supernet(x, {w}) vs extracted standalone | {med[w]['supernet']:.2f} | "
                     f"{med[w]['standalone']:.2f} | {med[w]['supernet'] / med[w]['standalone']:.2f}x |")
    sandwich = float(np.median(steps["sandwich_ms"]))
    lines.append(f"| sandwich (4 architectures) | {sandwich:.2f} | {med['largest']['standalone']:.2f} | "
                 f"{sandwich / med['largest']['standalone']:.2f}x |")
    ratio = med["largest"]["supernet"] / med["largest"]["standalone"]
    lines += ["", f"Goal <= 1.1x for the largest: {ratio:.2f}x ({'met' if ratio <= 1.1 else 'not met'})."]
    return "\n".join(lines) + "\n"


def part_latency_lut(device: str, smoke: bool) -> str:
    from mixnas.search.latency_lut import build_latency_table, measure_network_ms

    space = load_space("demo").with_num_classes(10) if smoke else load_space("imagenet")
    n_archs = 4 if smoke else 30
    batches = (1,) if smoke else (64, 1)
    runs = 3 if smoke else 20
    lines = header(f"Latency lookup table, space {space.name}", device)
    lines += ["| batch | build s | MAPE | within 10% | within 5% | FLOPs-only MAPE | FLOPs-only within 10% |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for b in batches:
        start = time.perf_counter()
        table = build_latency_table(space, device=device, batch_size=b, runs=runs, warmup=2,
                                    calibration_archs=2 if smoke else 8, progress=False, passes=1)
        build = time.perf_counter() - start
        rng = np.random.default_rng(1)
        archs = [space.sample(int(rng.integers(1 << 30))) for _ in range(n_archs)]
        measured = [measure_network_ms(a, device, b, runs, 3) for a in archs]
        predicted = [table.predict(a) for a in archs]
        x1 = torch.randn(1, 3, space.input_size, space.input_size)
        flops = [count_flops(build_model(a).eval(), x1) for a in archs]
        slope, offset = np.polyfit(flops, measured, 1)
        err = np.abs(np.array(predicted) - measured) / measured
        base_err = np.abs(slope * np.array(flops) + offset - measured) / measured
        lines.append(f"| {b} | {build:.0f} | {err.mean():.1%} | {(err <= 0.1).mean():.0%} | "
                     f"{(err <= 0.05).mean():.0%} | {base_err.mean():.1%} | {(base_err <= 0.1).mean():.0%} |")
    lines += ["", "Goal: >= 99% within 10% and >= 90% within 5% (nn-Meter: 99% within 10% on mobile CPUs). "
              "The FLOPs-only baseline is a least-squares line through the same measurements (fitted on them, "
              "so it flatters itself)."]
    return "\n".join(lines) + "\n"


def part_cuda_paths(device: str, smoke: bool) -> str:
    from timm.loss import SoftTargetCrossEntropy  # noqa: F401  (timm imports on the device)

    lines = header("CUDA code paths", device)
    space = load_space("demo").with_num_classes(10)
    torch.manual_seed(0)
    supernet = Supernet(space).to(device)
    opt = torch.optim.AdamW(supernet.parameters(), lr=1e-3)
    kind = device.split(":")[0]
    losses = []
    for step in range(2 if smoke else 10):
        x = torch.randn(8 if smoke else 64, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (x.shape[0],), device=device)
        archs = [space.largest(), space.smallest(), space.sample(step)]
        with torch.autocast(kind, dtype=torch.bfloat16):
            loss = sum(torch.nn.functional.cross_entropy(supernet(x, a), y) for a in archs)
        opt.zero_grad()
        loss.backward()  # bf16 keeps float32's exponent range: no GradScaler needed
        opt.step()
        losses.append(float(loss))
    lines.append(f"* bf16 autocast supernet steps: losses {', '.join(f'{v:.3f}' for v in losses)}; finite: "
                 f"{all(math.isfinite(v) for v in losses)} (no GradScaler: bf16 has float32's exponent range).")
    profile = subprocess.run([sys.executable, "-m", "mixnas.cli", "profile", "deit_t", "--json", "--device",
                              kind, "--runs", "3" if smoke else "20", "--warmup", "1"], cwd=ROOT,
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if profile.returncode == 0:
        p = json.loads(profile.stdout)
        lines.append(f"* `mixnas profile deit_t --device {kind}`: {p['latency_ms']['median']:.2f} ms median on "
                     f"{p['device']} ({p['gflops']:.2f} GFLOPs).")
    else:
        lines.append(f"* `mixnas profile --device {kind}` failed: {profile.stderr.strip().splitlines()[-1:]}")
    arch = space.largest()
    model = build_model(arch).eval().to(device)
    eager = measure_latency(model, 32, 64, device, 5 if smoke else 50, 2).median_ms
    if smoke and kind == "cpu":  # inductor's C++ build alone takes about a minute on 2 cores
        lines.append(f"* torch.compile: skipped in the CPU smoke run (eager {eager:.2f} ms).")
        return "\n".join(lines) + "\n"
    try:
        compiled = torch.compile(model)
        with torch.no_grad():
            compiled(torch.randn(64, 3, 32, 32, device=device))  # compile outside the timed runs
        fast = measure_latency(compiled, 32, 64, device, 5 if smoke else 50, 2).median_ms
        lines.append(f"* torch.compile of the demo space's largest architecture, batch 64: {fast:.2f} ms against "
                     f"{eager:.2f} ms eager ({eager / fast:.2f}x).")
    except Exception as e:  # the failure is the finding
        lines.append(f"* torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return "\n".join(lines) + "\n"


PARTS = {
    "references": part_references, "dge": part_dge, "supernet_step": part_supernet_step,
    "latency_lut": part_latency_lut, "cuda_paths": part_cuda_paths,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="a few iterations of every part (runs on the CPU)")
    p.add_argument("--out", type=Path, default=None, help="where the tables go (default $OUT, or docs/benchmarks/gpu)")
    p.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    args = p.parse_args(argv)
    out = args.out or Path(os.environ.get("OUT") or ROOT / "docs" / "benchmarks" / "gpu")
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        print("gpu_suite: no CUDA device here; run it on the GPU machine (or pass --smoke)", file=sys.stderr)
        return 2
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    status = 0
    for name in args.parts:
        start = time.perf_counter()
        try:
            text = PARTS[name](device, args.smoke)
        except Exception:  # one part's failure is reported, and the others still run
            text = f"# {name}: failed\n\n```\n{traceback.format_exc()}\n```\n"
            status = 1
        (out / f"{name}.md").write_text(text)
        print(f"{name}: {time.perf_counter() - start:.0f}s -> {out / (name + '.md')}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
