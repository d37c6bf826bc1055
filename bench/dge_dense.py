"""What does computing DGE's dense form (training, export) as one query sequence save, against one
attention-and-FFN call per granularity?

DGE's dense form (``DynamicGrainedEncoder.dense``: supernet and standalone training, the export form)
computes every granularity's queries for every region. mixnas now puts the queries of every granularity
in one sequence (B, sum L_g, C) through attention and the FFN; before, each granularity had its own call.
This times a training step (forward, backward, AdamW) of whole all-DGE networks both ways, alternating, on
one torch thread, checks the outputs agree, and counts the operations ``torch.export`` traces in the
export form (the ONNX exporter's time grows with them).

    python bench/dge_dense.py [--repeats 21] [--out docs/benchmarks/dge_dense.md]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import types
from collections.abc import Callable
from pathlib import Path

import torch
from supernet_step import alternate  # bench/, this script's folder
from torch import Tensor

from mixnas import ArchConfig, build_model
from mixnas.supernet import budget_loss
from mixnas.supernet.mixers import export_form_of
from mixnas.supernet.mixers.dge import DynamicGrainedEncoder

ROOT = Path(__file__).resolve().parents[1]


def per_granularity(self: DynamicGrainedEncoder, x: Tensor, k: Tensor, v: Tensor, gates: Tensor, parts, heads: int,
                    gs: list[int], drop_prob: float) -> tuple[Tensor, int]:
    """The previous dense form: one attention-and-FFN call per granularity (same drop-path draws)."""
    b, h, w, c = x.shape
    s = max(gs)
    update = x.new_zeros(b, h, w, c)
    computed = 0
    for j, g in enumerate(gs):
        p = s // g
        tokens = self.pool_queries(x, s, g)
        hq, wq = tokens.shape[1], tokens.shape[2]
        q = tokens.reshape(b, -1, c)
        delta = self.query_update(q, k, v, parts, heads, self.drop_masks(q, [q.shape[1]], drop_prob))
        computed += delta.shape[0] * delta.shape[1]
        delta = delta.view(b, hq, 1, wq, 1, c).expand(b, hq, p, wq, p, c).reshape(b, h, w, c)
        gate = gates[..., j].repeat_interleave(s, 1).repeat_interleave(s, 2)[..., None]
        update = update + gate * delta
    return update, computed


def use(model: torch.nn.Module, per_group: bool) -> None:
    for m in model.modules():
        if isinstance(m, DynamicGrainedEncoder):
            if per_group:
                m.dense = types.MethodType(per_granularity, m)
            else:
                m.__dict__.pop("dense", None)


def tiny(granularities: list[list[int]]) -> ArchConfig:
    """The network of ``tests/test_dge_learning.py``: three DGE stages on 32 px digits (8x8, 4x4, 2x2 tokens)."""
    return ArchConfig.from_dict({"input_size": 32, "num_classes": 10, "patch_size": 4, "drop_path_rate": 0.1,
                                 "stages": [{"depth": 1, "dim": d, "heads": 2, "mlp_ratio": 2.0, "ffn": "mlp",
                                             "mixer": {"type": "dge", "granularities": g}}
                                            for d, g in zip((32, 64, 128), granularities)]})


def deit_like() -> ArchConfig:
    """A DeiT-S-shaped DGE network at 8 x 8 tokens (one stage of 4 blocks, {1, 2, 4})."""
    return ArchConfig.from_dict({"input_size": 64, "num_classes": 10, "patch_size": 8, "layout": "isotropic",
                                 "drop_path_rate": 0.1,
                                 "stages": [{"depth": 4, "dim": 384, "heads": 6, "mlp_ratio": 4.0, "ffn": "mlp",
                                             "mixer": {"type": "dge", "granularities": [1, 2, 4]}}]})


CASES = [("digits test network, {1, 2}", tiny([[1, 2]] * 3), 32),
         ("digits test network, {1, 2, 4} ({1, 2} at 2x2)", tiny([[1, 2, 4], [1, 2, 4], [1, 2]]), 32),
         ("DeiT-S-shaped, 4 blocks, {1, 2, 4}", deit_like(), 16)]


def train_step(model: torch.nn.Module, x: Tensor, y: Tensor, per_group: bool) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        use(model, per_group)
        logits, costs = model.forward_with_costs(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        budget = budget_loss(costs)
        optimizer.zero_grad()
        (loss if budget is None else loss + budget).backward()
        optimizer.step()

    return step


def traced_ops(model: torch.nn.Module, x: Tensor, per_group: bool) -> int:
    use(model, per_group)
    with export_form_of(model):
        program = torch.export.export(model.eval(), (x,), strict=False)
    use(model, False)
    return sum(1 for n in program.graph.nodes if n.op == "call_function")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21, help="alternating calls of each variant per case")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "dge_dense.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for label, arch, batch in CASES:
        torch.manual_seed(0)
        x, y = torch.randn(batch, 3, arch.input_size, arch.input_size), torch.randint(0, 10, (batch,))
        models = {}
        for name in ("per granularity", "one sequence"):
            torch.manual_seed(0)
            models[name] = build_model(arch).train()
        outs = []
        for name, model in models.items():
            use(model, name == "per granularity")
            torch.manual_seed(1)
            outs.append(model(x))
        diff = (outs[0] - outs[1]).abs().max().item()
        steps = {name: train_step(model, x, y, name == "per granularity") for name, model in models.items()}
        times = alternate(steps, argparse.Namespace(warmup=2, steps=args.repeats), torch.device("cpu"))
        med = {k: statistics.median(v) for k, v in times.items()}
        ops = {name: traced_ops(model, x[:2], name == "per granularity") for name, model in models.items()}
        rows.append((label, batch, med, ops, diff))
        print(label, {k: round(v, 1) for k, v in med.items()}, ops, f"max |diff| {diff:.1e}", flush=True)
    lines = [
        "# DGE's dense form: one query sequence against one call per granularity",
        "",
        f"Measured {datetime.date.today()} with `bench/dge_dense.py` on {platform.machine()} (1 torch thread,"
        f" torch {torch.__version__}, Python {platform.python_version()}), the 2-core CPU machine. Training"
        f" step (forward, backward, AdamW) of the whole network, median of {args.repeats} calls of each,"
        " alternating (`bench/supernet_step.py`'s `alternate`); operations traced by `torch.export` in the"
        " export form at batch 2.",
        "",
        "| network (batch) | per granularity (ms) | one sequence (ms) | speed-up | traced ops, before | traced ops,"
        " now | max abs difference of outputs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, batch, med, ops, diff in rows:
        before, now = med["per granularity"], med["one sequence"]
        lines.append(f"| {label} ({batch}) | {before:.1f} | {now:.1f} | {before / now:.2f}x |"
                     f" {ops['per granularity']} | {ops['one sequence']} | {diff:.1e} |")
    lines += [
        "",
        "Each query attends to the keys and values only, and the FFN and norms work per token, so the queries",
        "of all granularities can go through one call; the drop-path masks are drawn in the same order as",
        "before, so a seeded run drops the same updates. Evaluation's sparse form already gathered every chosen",
        "query into one batch and is unchanged.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
