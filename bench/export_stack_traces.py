"""What does recording every traced operation's Python stack trace cost an ONNX export?

``mixnas.supernet.deploy`` now traces with ``torch.fx.config.do_not_emit_stack_traces`` set: before, every
node of the exported graph carried the exporting machine's stack trace (its file paths) in its ONNX
metadata (``pkg.torch.onnx.stack_trace``). This times ``export_onnx`` both ways, alternating, on random
architectures of the demo space exported as one graph (as ``tests/test_deploy.py`` does), one torch thread,
and reports the file sizes and that ONNX Runtime gives the same outputs.

    python bench/export_stack_traces.py [--archs 6] [--repeats 3] [--out docs/benchmarks/export_stack_traces.md]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import random
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from supernet_step import alternate  # bench/, this script's folder
from torch import nn

import mixnas.supernet.deploy as deploy
from mixnas import build_model
from mixnas.packaged import load_space

ROOT = Path(__file__).resolve().parents[1]


class Several(nn.Module):
    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)
        self.pretrained_cfg = models[0].pretrained_cfg

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(m(x) for m in self.models)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=6, help="random demo architectures in the exported graph")
    parser.add_argument("--repeats", type=int, default=3, help="alternating exports of each variant")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "export_stack_traces.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    space = load_space("demo")
    space = space.with_num_classes(10) if space.num_classes is None else space
    rng = random.Random(11)
    torch.manual_seed(0)
    model = Several([build_model(space.sample(rng)).eval() for _ in range(args.archs)]).eval()
    folder = Path(tempfile.mkdtemp(prefix="mixnas-bench-"))
    without = deploy._without_stack_traces
    paths = {"with stack traces (before)": folder / "with.onnx", "without (now)": folder / "without.onnx"}

    def export(name: str) -> None:
        deploy._without_stack_traces = without if name == "without (now)" else contextlib.nullcontext
        try:
            deploy.export_onnx(model, paths[name], optimize=False)
        finally:
            deploy._without_stack_traces = without

    times = alternate({name: (lambda n=name: export(n)) for name in paths},
                      argparse.Namespace(warmup=0, steps=args.repeats), torch.device("cpu"))
    x = torch.randn(3, 3, space.input_size, space.input_size)
    outs = {name: deploy.onnx_session(p, threads=1).run(None, {"images": x.numpy()}) for name, p in paths.items()}
    a, b = outs.values()
    diff = max(float(abs(u - v).max()) for u, v in zip(a, b))
    med = {k: statistics.median(v) / 1000 for k, v in times.items()}
    size = {k: p.stat().st_size / 1e6 for k, p in paths.items()}
    before, now = med["with stack traces (before)"], med["without (now)"]
    print({k: round(v, 2) for k, v in med.items()}, f"{before / now:.2f}x", size, f"max |diff| {diff:.1e}")
    lines = [
        "# ONNX export without each operation's Python stack trace",
        "",
        f"Measured {datetime.date.today()} with `bench/export_stack_traces.py` on {platform.machine()} (1 torch"
        f" thread, torch {torch.__version__}, Python {platform.python_version()}), the 2-core CPU machine."
        f" `export_onnx(..., optimize=False)` of {args.archs} random demo-space architectures as one graph, median"
        f" of {args.repeats} alternating exports of each variant (`bench/supernet_step.py`'s `alternate`).",
        "",
        "| variant | export (s) | speed-up | file (MB) |",
        "|---|---:|---:|---:|",
    ]
    for name in paths:
        lines.append(f"| {name} | {med[name]:.1f} | {before / med[name]:.2f}x | {size[name]:.2f} |")
    lines += [
        "",
        f"ONNX Runtime's outputs of the two files: max abs difference {diff:.1e}. With stack traces, every node's",
        "`pkg.torch.onnx.stack_trace` metadata held the Python stack of the call that made it, file paths of the",
        "exporting machine included; a deployment file has no use for them. `tests/test_deploy.py` checks that",
        "no exported reference carries one.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
