"""What does weight sharing cost a training step?

1. One training step (forward, backward, AdamW step) of the supernet running its largest architecture,
   ``supernet(x, largest)``, against the standalone largest model, ``supernet.extract(largest)`` (the same
   weights), on the same batch. The two alternate step by step after a warm-up (A B, B A, ...), so drifts of
   a shared machine's load hit both alike; the table gives each one's median and the ratio.
2. Peak memory of each variant, each measured in a fresh process that builds only that variant: on CUDA
   ``torch.cuda.max_memory_allocated``; on the CPU the peak of live tensor bytes in torch.profiler's memory
   timeline (the same quantity), and, coarser, the rise of the process's peak resident set size
   (``getrusage``) over its RSS before the model is built. Both cover weights, gradients, AdamW state and
   activations.
3. The whole sandwich step as training runs it: largest + smallest + 2 random architectures in one
   ``SandwichLoss`` forward, one backward, gradient clipping, AdamW.
4. The space's training on ``digits`` with ``train_supernet`` (batch 64): images/s from its metrics, and
   minutes per epoch, measured over a full epoch (``--train-steps 0``, the default) or extrapolated from
   ``--train-steps`` steps; plus the end-of-epoch validation (recalibrate and evaluate the largest and
   the smallest architecture), timed separately. Once per thread count in ``--train-threads`` (default:
   1 and torch's default), since on a small shared machine the count changes the answer.

Goal: overhead (1) at most 1.2x on the CPU and 1.1x on a GPU. Writes ``docs/benchmarks/supernet.md``.

    python bench/supernet_step.py [--space mixnas/configs/spaces/demo.yaml] [--batch-size 64] [--steps 20]
                                  [--device cpu|cuda] [--threads 1] [--train-steps 0]
                                  [--out docs/benchmarks/supernet.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from torch import Tensor, nn

from mixnas.run_dir import RunDir
from mixnas.search.profiler import count_params, device_name
from mixnas.search_space import SearchSpace
from mixnas.supernet import Supernet, build_model
from mixnas.supernet.checkpoint import load_weights
from mixnas.training import SandwichLoss, TrainConfig, subnet_accuracy, train_supernet

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPACE = ROOT / "mixnas" / "configs" / "spaces" / "demo.yaml"
DEFAULT_OUT = ROOT / "docs" / "benchmarks" / "supernet.md"
CPU_GOAL, GPU_GOAL = 1.2, 1.1
DEFAULT_THREADS = torch.get_num_threads()  # before --threads changes it


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", type=Path, default=DEFAULT_SPACE, help="search space YAML")
    p.add_argument("--batch-size", type=int, default=64, help="images per step")
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads for the step comparison (1: steadiest on a shared machine)")
    p.add_argument("--train-steps", type=int, default=0,
                   help="steps of the digits training measurement (0: a full epoch)")
    p.add_argument("--train-threads", type=int, nargs="+", default=None,
                   help="torch threads for the training measurement, one run each (default: 1 and torch's)")
    p.add_argument("--no-train", action="store_true", help="skip the digits training measurement")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown file to write")
    p.add_argument("--memory-probe", choices=["supernet", "standalone"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ a step
def make_batch(space: SearchSpace, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, space.in_chans, space.input_size, space.input_size, generator=g)
    y = torch.randint(0, space.num_classes, (batch_size,), generator=g)
    return x.to(device), y.to(device)


def adamw(model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer training uses (timm's AdamW: no weight decay on norms and biases)."""
    return create_optimizer_v2(model, opt="adamw", lr=2e-3, weight_decay=0.05)


def timed_step(step: Callable[[], None], device: torch.device) -> float:
    """Run one training step; its wall time in ms (CUDA synchronised on both ends)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def plain_step(forward: Callable[[Tensor], Tensor], optimizer: torch.optim.Optimizer, x: Tensor,
               y: Tensor) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(forward(x), y).backward()
        optimizer.step()

    return step


def sandwich_step(supernet: Supernet, space: SearchSpace, optimizer: torch.optim.Optimizer, x: Tensor,
                  y: Tensor, seed: int = 0) -> Callable[[], None]:
    """One step of train_supernet: largest, smallest and 2 random architectures, clip 5, AdamW."""
    loss = SandwichLoss(supernet, label_smoothing=0.1, distill=True, budget_weight=1.0)
    rng = random.Random(seed)

    def step() -> None:
        archs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(2)]
        total, _ = loss(x, y, archs)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(supernet.parameters(), 5.0)
        optimizer.step()

    return step


def alternate(steps: dict[str, Callable[[], None]], args: argparse.Namespace,
              device: torch.device) -> dict[str, list[float]]:
    """Warm up, then time the steps in alternating order (A B, B A, ...); ms per step of each."""
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.steps):
        for name in names if i % 2 == 0 else names[::-1]:
            times[name].append(timed_step(steps[name], device))
    return times


def compare_steps(space: SearchSpace, args: argparse.Namespace, device: torch.device) -> dict:
    """Step times (ms) of ``supernet(x, arch)`` and ``supernet.extract(arch)`` for the largest and the
    smallest architecture, and of the whole sandwich step."""
    torch.manual_seed(0)
    supernet = Supernet(space).to(device).train()
    x, y = make_batch(space, args.batch_size, device)
    out: dict = {"params_supernet": count_params(supernet), "load": os.getloadavg()[0]}
    for which, arch in (("largest", space.largest()), ("smallest", space.smallest())):
        standalone = supernet.extract(arch).to(device).train()
        times = alternate({
            "supernet": plain_step(lambda t, arch=arch: supernet(t, arch), adamw(supernet), x, y),
            "standalone": plain_step(standalone, adamw(standalone), x, y),
        }, args, device)
        out[which] = {**times, "params_standalone": count_params(standalone)}

    sandwich = sandwich_step(supernet, space, adamw(supernet), x, y)
    for _ in range(args.warmup):
        sandwich()
    out["sandwich_ms"] = [timed_step(sandwich, device) for _ in range(args.steps)]
    return out


# --------------------------------------------------------------------------------------------- memory
def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def tensor_memory_peak_cpu(step: Callable[[], None]) -> int | None:
    """Peak bytes of live CPU tensors during one ``step``, from torch.profiler's memory timeline.

    The timeline counts every tensor alive during the step (weights, gradients, optimizer state, inputs,
    activations, temporaries), so its peak is the CPU analogue of ``torch.cuda.max_memory_allocated``.
    ``export_memory_timeline`` is deprecated in recent torch; None when it is unavailable.
    """
    from torch.profiler import ProfilerActivity, profile

    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                         with_stack=True) as prof:
                step()
            path = Path(tmp) / "memory.json"
            prof.export_memory_timeline(str(path), device="cpu")
            _, sizes = json.loads(path.read_text())  # [times], [[bytes per category] per time]
    except (AttributeError, RuntimeError, ValueError, OSError):
        return None
    return int(max(sum(s) for s in sizes))


def memory_probe(space: SearchSpace, variant: str, args: argparse.Namespace, device: torch.device) -> dict:
    """In this (fresh) process: build one variant, run a few steps, report its peak memory in bytes.

    ``peak_bytes``: CUDA ``max_memory_allocated`` on a GPU, the profiler's tensor-memory peak on the CPU.
    ``rss_rise_bytes`` (CPU): peak resident set size (getrusage) minus the RSS before the model was built;
    it adds what the runtime allocates on first use (oneDNN, autograd threads, allocator caches).
    """
    x, y = make_batch(space, args.batch_size, device)
    largest = space.largest()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    base_rss = current_rss_bytes()
    torch.manual_seed(0)
    if variant == "supernet":
        supernet = Supernet(space).to(device).train()
        step = plain_step(lambda t: supernet(t, largest), adamw(supernet), x, y)
    else:
        model = build_model(largest).to(device).train()
        step = plain_step(model, adamw(model), x, y)
    for _ in range(2):  # AdamW's state exists from the first step on
        step()
    out: dict = {"variant": variant}
    if device.type == "cuda":
        step()
        torch.cuda.synchronize(device)
        out["peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
    else:
        out["rss_rise_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss  # KiB on Linux
        out["peak_bytes"] = tensor_memory_peak_cpu(step)
    return out


def peak_memory(variant: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--memory-probe", variant, "--space", str(args.space),
        "--batch-size", str(args.batch_size), "--device", args.device,
    ]
    if args.threads:
        command += ["--threads", str(args.threads)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ digits training
def measure_training(space: SearchSpace, args: argparse.Namespace, threads: int) -> dict:
    """Train one epoch (or ``--train-steps`` steps of it) on digits; images/s and minutes per full epoch."""
    torch.set_num_threads(threads)
    load = os.getloadavg()[0]
    from mixnas.data import load_dataset, make_loader

    config = TrainConfig(data="digits", epochs=1, batch_size=64, steps_per_epoch=args.train_steps)
    bundle = load_dataset("digits", space.input_size, seed=config.seed)
    full_steps = len(bundle.train) // config.batch_size  # drop_last, as training does
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = RunDir(Path(tmp) / "run")
        row = train_supernet(space, run, config, device=args.device, progress=False)[-1]
        call_s = time.perf_counter() - t0
        supernet = Supernet(space)
        load_weights(supernet, run.weights)
    device = torch.device(args.device)
    supernet = supernet.to(device)
    val = make_loader(bundle.val, 256, shuffle=False)
    t0 = time.perf_counter()
    for arch in (space.largest(), space.smallest()):
        calib = make_loader(bundle.calib, config.batch_size, shuffle=True, seed=0)
        subnet_accuracy(supernet, arch, calib, val, device, config.calib_batches)
    val_s = time.perf_counter() - t0
    steps_run = full_steps if not args.train_steps else min(args.train_steps, full_steps)
    images_per_s = float(row["images_per_s"])
    train_s = full_steps * config.batch_size / images_per_s
    return {
        "images_per_s": images_per_s, "steps_run": steps_run, "full_steps": full_steps,
        "train_min_per_epoch": train_s / 60, "val_s": val_s, "min_per_epoch": (train_s + val_s) / 60,
        "call_s": call_s, "extrapolated": steps_run < full_steps, "train_images": len(bundle.train),
        "val_images": len(bundle.val), "calib_batches": config.calib_batches, "threads": threads, "load": load,
    }


# ---------------------------------------------------------------------------------------------- report
def summary(ms: list[float]) -> tuple[float, float]:
    """(median, p90) in ms."""
    ordered = sorted(ms)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


def render(space: SearchSpace, args: argparse.Namespace, machine: str, steps: dict, memory: dict[str, dict],
           training: list[dict]) -> str:
    device = torch.device(args.device)
    goal = GPU_GOAL if device.type == "cuda" else CPU_GOAL
    sup, sup90 = summary(steps["largest"]["supernet"])
    std, std90 = summary(steps["largest"]["standalone"])
    small_sup, small_sup90 = summary(steps["smallest"]["supernet"])
    small_std, small_std90 = summary(steps["smallest"]["standalone"])
    sw, sw90 = summary(steps["sandwich_ms"])
    ratio = sup / std
    mib = lambda b: "-" if b is None else f"{b / 2**20:.1f} MiB"  # noqa: E731
    over = lambda key: (  # noqa: E731
        "-" if not memory["standalone"].get(key) or memory["supernet"].get(key) is None
        else f"**{memory['supernet'][key] / memory['standalone'][key]:.2f}x**"
    )
    cuda = device.type == "cuda"
    mem_head = "peak memory (max_memory_allocated)" if cuda else "peak tensor memory | peak RSS rise"
    mem = lambda v: (mib(memory[v]["peak_bytes"]) if cuda  # noqa: E731
                     else f"{mib(memory[v]['peak_bytes'])} | {mib(memory[v]['rss_rise_bytes'])}")
    mem_ratio = over("peak_bytes") if cuda else f"{over('peak_bytes')} | {over('rss_rise_bytes')}"
    mem_note = (
        "Peak memory is `torch.cuda.max_memory_allocated`"
        if cuda else
        "Peak tensor memory is the maximum, over one step, of the bytes of all live tensors in torch.profiler's "
        "memory timeline (`profile_memory=True`, `export_memory_timeline(device='cpu')`), the CPU analogue of "
        "`torch.cuda.max_memory_allocated`. Peak RSS rise is `getrusage` max RSS minus the RSS before the model "
        "was built: what the OS sees, including the runtime's one-time allocations on the first step (oneDNN, "
        "autograd threads, allocator caches), so it is coarser and its ratio is pulled towards 1"
    )
    lines = [
        "# Supernet training step: overhead of weight sharing",
        "",
        f"Written by `bench/supernet_step.py` on {datetime.date.today().isoformat()}.",
        "",
        f"- machine: {machine}",
        f"- torch {torch.__version__}, space `{args.space.name}` ({space.name}), batch {args.batch_size}, "
        f"{args.steps} timed steps per variant after {args.warmup} warm-up steps, float32",
        f"- **this machine is shared with other jobs and noisy** (1-min load average {steps['load']:.1f} when "
        "the steps were timed): read the ratios, measured alternately, rather than the absolute times",
        "",
        "## One training step of the largest architecture (forward + backward + AdamW)",
        "",
        f"| variant | params | median ms | p90 ms | {mem_head} |",
        "|---|---:|---:|---:|---:|" + ("" if cuda else "---:|"),
        f"| supernet(x, largest) | {steps['params_supernet'] / 1e6:.2f}M | {sup:.1f} | {sup90:.1f} | "
        f"{mem('supernet')} |",
        f"| standalone largest (extract) | {steps['largest']['params_standalone'] / 1e6:.2f}M | {std:.1f} | "
        f"{std90:.1f} | {mem('standalone')} |",
        f"| **ratio** | {steps['params_supernet'] / steps['largest']['params_standalone']:.2f}x | "
        f"**{ratio:.2f}x** | | {mem_ratio} |",
        "",
        f"Goal: time ratio at most {goal}x on this device: **{'met' if ratio <= goal else 'not met'}**.",
        "",
        f"{mem_note}. Each variant is measured in a fresh process that builds only that variant; the numbers "
        "include weights, gradients and AdamW state, so the supernet's extra parameters count (every mixer "
        "and FFN choice of every stage, held at the largest size; only the active ones get gradients and "
        "optimizer state).",
        "",
        "For the largest architecture every elastic layer runs its whole held weight (`active_slice` returns the "
        "tensor itself). A smaller architecture runs slices (views; their backward allocates a zero gradient of "
        "the held size) and AdamW updates the held tensors, which is where slicing can cost time:",
        "",
        "| smallest architecture | median ms | p90 ms |",
        "|---|---:|---:|",
        f"| supernet(x, smallest) | {small_sup:.1f} | {small_sup90:.1f} |",
        f"| standalone smallest (extract) | {small_std:.1f} | {small_std90:.1f} |",
        f"| **ratio** | **{small_sup / small_std:.2f}x** | |",
        "",
        "## The whole sandwich step",
        "",
        "Largest + smallest + 2 random architectures in one `SandwichLoss` forward (in-place distillation), one "
        "backward, gradient clipping, AdamW; as `train_supernet` runs it.",
        "",
        "| step | median ms | p90 ms | / standalone largest step |",
        "|---|---:|---:|---:|",
        f"| sandwich (4 architectures) | {sw:.1f} | {sw90:.1f} | {sw / std:.2f}x |",
        "",
    ]
    if training:
        first = training[0]
        how = (f"extrapolated from {first['steps_run']} steps to the full {first['full_steps']}"
               if first["extrapolated"] else f"measured over the full {first['full_steps']} steps")
        lines += [
            "## Training the space on `digits`",
            "",
            f"`train_supernet` (sandwich rule, batch 64, defaults otherwise) on the embedded digits task: "
            f"{first['train_images']} training images, one epoch = {first['full_steps']} steps; the training time "
            f"per epoch is {how}. Validation at the end of each epoch recalibrates BatchNorm on "
            f"{first['calib_batches']} batches and evaluates the largest and the smallest architecture on "
            f"{first['val_images']} images; it is timed separately and added. `mixnas supernet train` uses "
            f"torch's default thread count ({DEFAULT_THREADS} here) unless `OMP_NUM_THREADS` says otherwise.",
            "",
            "| torch threads | load avg before | images/s (training) | training min/epoch | validation s/epoch "
            "| min/epoch |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {t['threads']} | {t['load']:.1f} | {t['images_per_s']:.1f} | {t['train_min_per_epoch']:.2f} | "
            f"{t['val_s']:.1f} | {t['min_per_epoch']:.2f} |"
            for t in training
        ]
        lines += [
            "",
            f"The load average (1 min, {os.cpu_count()} cores) is that of the whole machine when the run started. "
            "How many threads pay off depends on it: with other jobs busy, several threads make every op wait "
            "for its slowest one, and one thread can train several times faster.",
        ]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available on this machine", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    space = SearchSpace.from_yaml(args.space)
    if space.num_classes_auto:  # the benchmarks run on digits
        space = space.with_num_classes(10)
    if args.memory_probe:
        print(json.dumps(memory_probe(space, args.memory_probe, args, device)))
        return 0

    machine = device_name(args.device)  # with the thread count the steps are timed with
    memory = {variant: peak_memory(variant, args) for variant in ("supernet", "standalone")}
    print(f"peak memory: {memory}", flush=True)
    steps = compare_steps(space, args, device)
    for which in ("largest", "smallest"):
        print(f"{which}: supernet {summary(steps[which]['supernet'])} ms, "
              f"standalone {summary(steps[which]['standalone'])} ms", flush=True)
    print(f"sandwich {summary(steps['sandwich_ms'])} ms", flush=True)
    thread_counts = args.train_threads or ([DEFAULT_THREADS] if args.device == "cuda" else [1, DEFAULT_THREADS])
    training = []
    for threads in ([] if args.no_train else dict.fromkeys(thread_counts)):
        training.append(measure_training(space, args, threads))
        print(f"training: {training[-1]}", flush=True)
    text = render(space, args, machine, steps, memory, training)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

