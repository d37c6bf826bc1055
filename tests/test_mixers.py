"""Tests of the mixers and FFNs: shapes, gradients, determinism, Swin's shifted windows, DGE's two paths
and its query counts, and the supernet's consistency with the standalone models it hands out.

Architectures are small: 32x32 images, patch 4 (8x8 tokens, 4x4 after a patch merging), widths 16-32.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mixnas.search.profiler import count_params
from mixnas.search_space import ArchConfig, MixerConfig, SearchSpace
from mixnas.supernet import BlockParts, MixerContext, budget_loss
from mixnas.supernet.backbone import Block, MixerNet, build_model
from mixnas.supernet.ffn import ElasticMlp, LocalFFN
from mixnas.supernet.mixers.dge import DynamicGrainedEncoder, router_prior
from mixnas.supernet.mixers.dwconv import DWConvMixer
from mixnas.supernet.mixers.dyn_dwconv import DynamicDWConvMixer
from mixnas.supernet.mixers.refiner import RefinerAttention
from mixnas.supernet.mixers.window_attn import WindowAttention, effective_window
from mixnas.supernet.supernet import Supernet

INPUT = 32
PATCH = 4
RES = INPUT // PATCH  # tokens per side in the first stage

WINDOW_ATTN = {"type": "window_attn", "window_size": 4}  # shifted in odd blocks of the 8x8 stage
MIXERS: dict[str, dict[str, Any]] = {
    "window_attn": WINDOW_ATTN,
    "window_attn-nobias": {"type": "window_attn", "window_size": 4, "rel_pos_bias": False},
    "global_attn": {"type": "window_attn", "window_size": 8},
    "dwconv": {"type": "dwconv", "kernel_size": 3},
    "dyn_dwconv": {"type": "dyn_dwconv", "kernel_size": 3},
    "dyn_dwconv-inhomogeneous": {"type": "dyn_dwconv", "kernel_size": 5, "inhomogeneous": True},
    "refiner": {"type": "refiner", "window_size": 4, "expansion_ratio": 2, "kernel_size": 3},
    "dge": {"type": "dge", "granularities": [1, 2]},
    "dge-kv2": {"type": "dge", "granularities": [1, 2], "kv_reduction": 2},
    "dge-set24": {"type": "dge", "granularities": [2, 4]},  # router rows of g = 1 and 3 unused
}
# (mixer, ffn) pairs run end to end; every mixer with mlp, the local FFN with an attention and a conv mixer.
CASES = [(m, "mlp") for m in MIXERS] + [
    ("window_attn", {"type": "local", "se": False}),
    ("window_attn", {"type": "local", "se": True}),
    ("dwconv", {"type": "local", "se": True}),
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make_arch(
    mixer: dict[str, Any], ffn: Any = "mlp", stages: int = 2, depth: int = 2, dim: int = 16,
    drop_path_rate: float = 0.0,
) -> ArchConfig:
    """Stage i has width dim * 2**i and 2 heads; mlp ratio 2."""
    return ArchConfig.from_dict({
        "input_size": INPUT, "num_classes": 5, "patch_size": PATCH, "drop_path_rate": drop_path_rate,
        "stages": [
            {"depth": depth, "dim": dim * 2**i, "heads": 2, "mlp_ratio": 2.0, "ffn": ffn, "mixer": mixer}
            for i in range(stages)
        ],
    })


def images(batch: int = 2, seed: int = 0) -> Tensor:
    return torch.randn(batch, 3, INPUT, INPUT, generator=torch.Generator().manual_seed(seed))


def dge_modules(model: MixerNet) -> list[DynamicGrainedEncoder]:
    return [m for m in model.modules() if isinstance(m, DynamicGrainedEncoder)]


def call(mixer: torch.nn.Module, x: Tensor, config: dict[str, Any], heads: int = 2, block_index: int = 0) -> Tensor:
    """A mixer's forward as a block calls it: ``mixer(x, MixerContext(...))``."""
    return mixer(x, MixerContext(MixerConfig.from_dict(config), heads, block_index))


def window(mixer: torch.nn.Module, x: Tensor, heads: int, window_size: int, block_index: int,
           rel_pos_bias: bool = True) -> Tensor:
    return call(mixer, x, {"type": "window_attn", "window_size": window_size, "rel_pos_bias": rel_pos_bias},
                heads, block_index)


def dge_call(dge: DynamicGrainedEncoder, x: Tensor, block: Block, heads: int, hidden: int,
             granularities: Any, kv_reduction: int = 1, choice: Tensor | None = None) -> tuple[Tensor, Any]:
    """DGE wraps its block: it gets the block's norms and FFN; returns (output, DynamicCost)."""
    parts = BlockParts(block.norm1, block.norm2, lambda t: block.ffns["mlp"](t, hidden), hidden)
    config = MixerConfig.from_dict({"type": "dge", "granularities": list(granularities), "kv_reduction": kv_reduction,
                                    "pos_conv": dge.pos_conv is not None})
    return dge(x, MixerContext(config, heads, 0, 0.0, parts), choice=choice)


# A bias right before a BatchNorm that uses batch statistics has, analytically, zero gradient in training
# (the norm subtracts the per-channel mean). Such parameters must still get a gradient in eval mode.
BIAS_BEFORE_BN = ("mixers.dwconv.conv.bias", "mixers.dyn_dwconv.static_bias", "mixers.dyn_dwconv.i_reduce.bias")


# ----------------------------------------------------------------------------------------------------
# Every mixer and FFN end to end


def case_id(mixer: str, ffn: Any) -> str:
    return f"{mixer}-" + (ffn if isinstance(ffn, str) else ffn["type"] + ("-se" if ffn["se"] else ""))


@pytest.mark.parametrize("mixer, ffn", CASES, ids=[case_id(m, f) for m, f in CASES])
def test_shapes_gradients_and_determinism(mixer: str, ffn: Any) -> None:
    torch.manual_seed(0)
    arch = make_arch(MIXERS[mixer], ffn)
    model = build_model(arch).train()
    x = images()
    assert model.forward_features(x, arch).shape == (2, RES // 2, RES // 2, 32)

    y, costs = model.forward_with_costs(x)
    assert y.shape == (2, 5)
    loss = (y * torch.randn_like(y)).sum()
    budget = budget_loss(costs)
    assert (budget is None) == (not mixer.startswith("dge"))
    if budget is not None:
        loss = loss + budget
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        if name.endswith("mixers.dge.router.weight") or name.endswith("mixers.dge.router.bias"):
            used = torch.tensor([g - 1 for g in arch.stages[0].mixer.granularities])
            unused = torch.ones(p.shape[0], dtype=torch.bool)
            unused[used] = False
            assert (p.grad[unused] == 0).all(), name  # rows of granularities outside the set
            assert (p.grad[used].abs().reshape(len(used), -1).sum(1) > 0).all(), name
        elif not name.endswith(BIAS_BEFORE_BN):
            assert p.grad.abs().sum() > 0, name

    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    if mixer.startswith("dyn_dwconv") or mixer == "dwconv":
        model.zero_grad()
        model(x).sum().backward()
        for name, p in model.named_parameters():
            if name.endswith(BIAS_BEFORE_BN):
                assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "module, config",
    [
        (WindowAttention(16, 2, 4), {"type": "window_attn", "window_size": 4}),
        (RefinerAttention(16, 2, 4, 3, 3), {"type": "refiner", "window_size": 4, "expansion_ratio": 3,
                                            "kernel_size": 3}),
        (DWConvMixer(16, 5), {"type": "dwconv", "kernel_size": 5}),
        (DynamicDWConvMixer(16, 3), {"type": "dyn_dwconv", "kernel_size": 3}),
        (DynamicDWConvMixer(16, 3, False, True, 8), {"type": "dyn_dwconv", "kernel_size": 3, "inhomogeneous": True}),
        (ElasticMlp(16, 24), {"hidden": 24}),
        (LocalFFN(16, 32, se=True), {"hidden": 32, "se": True}),
    ],
    ids=["window_attn", "refiner", "dwconv", "dyn_dwconv", "dyn_dwconv-inhomogeneous", "mlp", "local-se"],
)
def test_direct_call_shapes(module: torch.nn.Module, config: dict[str, Any]) -> None:
    """Mixers and FFNs map channels-last tokens (B, H, W, C) to the same shape (convs: non-square too)."""
    attention = isinstance(module, (WindowAttention, RefinerAttention))
    x = torch.randn(2, 8, 8, 16) if attention else torch.randn(2, 8, 4, 16)
    if "type" in config:  # a mixer: module(x, MixerContext); heads 2 (channels per group when inhomogeneous)
        assert call(module, x, config, heads=2, block_index=1).shape == x.shape
    else:  # an FFN
        assert module(x, **config).shape == x.shape


# ----------------------------------------------------------------------------------------------------
# Window attention: shifts, masks, relative position bias


def test_effective_window() -> None:
    assert effective_window(4, 8, 0) == (4, 0)
    assert effective_window(4, 8, 1) == (4, 2)
    assert effective_window(4, 8, 3) == (4, 2)
    assert effective_window(4, 4, 1) == (4, 0)  # the window is the whole map: no shift
    assert effective_window(7, 4, 1) == (4, 0)  # larger than the map: global attention


def influenced(mixer: WindowAttention, block_index: int, token: tuple[int, int]) -> set[tuple[int, int]]:
    """Output positions that change when the input token at ``token`` changes (8x8 map, window 4)."""
    x = torch.randn(1, 8, 8, 16, generator=torch.Generator().manual_seed(0))
    x2 = x.clone()
    x2[0, token[0], token[1]] += 1.0
    with torch.no_grad():
        diff = (window(mixer, x2, 2, 4, block_index) - window(mixer, x, 2, 4, block_index)).abs().amax(-1)[0]
    return {(int(i), int(j)) for i, j in (diff > 1e-6).nonzero()}


def square(rows: range, cols: range) -> set[tuple[int, int]]:
    return {(i, j) for i in rows for j in cols}


def test_shifted_windows_attend_within_shifted_regions() -> None:
    """Block 0 attends within the 4x4 windows; block 1 rolls by 2, so its windows straddle block 0's, and
    the mask keeps tokens that the roll brought from the opposite border apart."""
    torch.manual_seed(0)
    mixer = WindowAttention(16, 2, 4)
    assert influenced(mixer, 0, (3, 3)) == square(range(0, 4), range(0, 4))
    assert influenced(mixer, 1, (3, 3)) == square(range(2, 6), range(2, 6))
    # (0, 0) lands in the last rolled window with rows and columns 6, 7 (the other border): only the 2x2
    # corner it came from is in its region.
    assert influenced(mixer, 0, (0, 0)) == square(range(0, 4), range(0, 4))
    assert influenced(mixer, 1, (0, 0)) == square(range(0, 2), range(0, 2))
    assert influenced(mixer, 1, (7, 0)) == square(range(6, 8), range(0, 2))
    assert influenced(mixer, 1, (5, 0)) == square(range(2, 6), range(0, 2))
    assert influenced(mixer, 2, (3, 3)) == square(range(0, 4), range(0, 4))  # even blocks do not shift


def test_shift_applied_in_odd_blocks_only_when_map_exceeds_window() -> None:
    torch.manual_seed(0)
    mixer = WindowAttention(16, 2, 4)
    with torch.no_grad():
        x = torch.randn(2, 8, 8, 16)
        assert not torch.allclose(window(mixer, x, 2, 4, 1), window(mixer, x, 2, 4, 0))
        assert torch.equal(window(mixer, x, 2, 4, 2), window(mixer, x, 2, 4, 0))
        small = torch.randn(2, 4, 4, 16)  # a 4x4 stage with window 4: one window, never shifted
        assert torch.equal(window(mixer, small, 2, 4, 1), window(mixer, small, 2, 4, 0))


def test_shift_in_model_blocks() -> None:
    """In a built model, the 8x8 stage's block at index 1 shifts: run at index 0 it gives another output."""
    torch.manual_seed(0)
    arch = make_arch(WINDOW_ATTN, stages=1)
    model = build_model(arch).eval()
    block = model.stages[0].blocks[1]
    x = torch.randn(2, 8, 8, 16)
    with torch.no_grad():
        assert not torch.allclose(block(x, arch.stages[0], 1, 0.0)[0], block(x, arch.stages[0], 0, 0.0)[0])


def test_relative_position_bias() -> None:
    torch.manual_seed(0)
    mixer = WindowAttention(16, 2, 4)
    x = torch.randn(2, 8, 8, 16)
    with torch.no_grad():
        with_bias = window(mixer, x, 2, 4, 1, rel_pos_bias=True)
        assert not torch.allclose(with_bias, window(mixer, x, 2, 4, 1, rel_pos_bias=False))
        mixer.rel_pos.table.zero_()
        assert torch.allclose(window(mixer, x, 2, 4, 1, rel_pos_bias=True),
                              window(mixer, x, 2, 4, 1, rel_pos_bias=False))
    no_table = build_model(make_arch(MIXERS["window_attn-nobias"]))
    with_table = build_model(make_arch(WINDOW_ATTN))
    assert not any("rel_pos" in n for n, _ in no_table.named_parameters())
    # One (2w-1)^2 x heads table per block: the 8x8 stage has w 4, the 4x4 stage w 4 too.
    assert count_params(with_table) - count_params(no_table) == 4 * 7 * 7 * 2


def test_refiner_identity_refinement_is_attention() -> None:
    """With identity expansion, a centre-only local kernel and an averaging reduction, the refined maps are
    the attention maps, so the refiner equals window attention with the same weights."""
    torch.manual_seed(0)
    refiner = RefinerAttention(16, 2, 4, 2, 3)
    attn = WindowAttention(16, 2, 4)
    attn.load_state_dict(refiner.attn.state_dict())
    with torch.no_grad():
        refiner.expand.weight.copy_(torch.eye(2).repeat(2, 1)[:, :, None, None])  # head h -> maps h and 2+h
        refiner.local.weight.zero_()
        refiner.local.weight[:, :, 1, 1] = 1.0
        refiner.reduce.weight.copy_(0.5 * torch.eye(2).repeat(1, 2)[:, :, None, None])
        x = torch.randn(2, 8, 8, 16)
        config = {"type": "refiner", "window_size": 4, "expansion_ratio": 2, "kernel_size": 3}
        for block_index in (0, 1):
            torch.testing.assert_close(call(refiner, x, config, 2, block_index), window(attn, x, 2, 4, block_index))


# ----------------------------------------------------------------------------------------------------
# DGE


def dge_setup(granularities: list[int], kv_reduction: int = 1, depth: int = 1,
              pos_conv: bool = False) -> tuple[ArchConfig, MixerNet]:
    """A one-stage DGE network; without the positional conv unless asked (its BatchNorm differs between
    training and evaluation, which the routing tests compare)."""
    arch = make_arch({"type": "dge", "granularities": granularities, "kv_reduction": kv_reduction,
                      "pos_conv": pos_conv}, stages=1, depth=depth)
    return arch, build_model(arch)


@pytest.mark.parametrize("granularities", [[1, 2], [1, 2, 4], [2, 4], [1, 4]])
def test_dge_router_init(granularities: list[int]) -> None:
    """As the official code: weights trunc_normal(std 0.01), and the finest granularity of the call's own
    set at probability 0.95 (exactly, once the small weights are zeroed; within 0.01 as initialised)."""
    torch.manual_seed(0)
    _, model = dge_setup(granularities)
    dge = dge_modules(model)[0]
    weight = dge.router.weight.detach()
    assert weight.abs().max() > 0 and 0.005 < float(weight.std()) < 0.015  # timm's trunc_normal_, std 0.01
    x = torch.randn(2, 8, 8, 16)
    with torch.no_grad():
        probs = dge.route(x, granularities).softmax(-1)  # (B, H/S, W/S, |set|)
        assert (probs[..., -1] - 0.95).abs().max() < 0.01
        dge.router.weight.zero_()
        probs = dge.route(x, granularities).softmax(-1)
    torch.testing.assert_close(probs[..., -1], torch.full_like(probs[..., -1], 0.95))
    torch.testing.assert_close(probs[..., :-1].sum(-1), torch.full_like(probs[..., -1], 0.05))


def test_dge_router_starts_at_the_finest_of_the_subnets_own_set() -> None:
    """A supernet serving {1, 2, 4} and {1, 2}: a subnet using {1, 2} starts at 0.95 on 2 (not at even
    odds, as a prior tied to the union of the sets would give), and its extracted model agrees."""
    torch.manual_seed(0)
    space = SearchSpace.from_dict({
        "input_size": INPUT, "num_classes": 5, "patch_size": PATCH,
        "stages": [{"depth": [1], "dim": [16], "heads": [2],
                    "mixers": {"dge": {"granularities": [[1, 2, 4], [1, 2]]}}}],
    })
    supernet = Supernet(space)
    small = next(a for a in (space.sample(i) for i in range(100)) if a.stages[0].mixer.granularities == (1, 2))
    dge = dge_modules(supernet)[0]
    x = torch.randn(2, 8, 8, 16)
    with torch.no_grad():
        probs = dge.route(x, [1, 2]).softmax(-1)
        sub = dge_modules(supernet.extract(small))[0]
        torch.testing.assert_close(sub.route(x, [1, 2]), dge.route(x, [1, 2]))
    assert (probs[..., -1] - 0.95).abs().max() < 0.01
    torch.testing.assert_close(router_prior([1, 2]).softmax(-1), torch.tensor([0.05, 0.95]))


def test_dge_train_routing_is_stochastic_eval_deterministic() -> None:
    torch.manual_seed(0)
    arch, model = dge_setup([1, 2])
    dge = dge_modules(model)[0]
    with torch.no_grad():
        dge.router.bias.copy_(-router_prior([1, 2]))  # even odds, so that two draws over 32 regions differ surely
    x = images()
    model.train()
    outputs = [model(x), model(x)]
    assert not torch.equal(outputs[0], outputs[1])
    # The only randomness is the routing: with the choice forced, training is deterministic.
    block = model.stages[0].blocks[0]
    tokens = torch.randn(2, 8, 8, 16)
    choice = torch.randint(0, 2, (2, 4, 4))
    a, _ = dge_call(dge, tokens, block, 2, 32, (1, 2), choice=choice)
    b, _ = dge_call(dge, tokens, block, 2, 32, (1, 2), choice=choice)
    assert torch.equal(a, b)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    "granularities, kv_reduction", [([1, 2], 1), ([1, 2], 2), ([1, 2, 4], 1), ([2, 4], 2)],
)
def test_dge_dense_equals_sparse(granularities: list[int], kv_reduction: int) -> None:
    """Training (every granularity computed, gates select) and evaluation (only the chosen queries) agree
    for the same choices; images with different numbers of queries exercise the padded batch."""
    torch.manual_seed(0)
    _, model = dge_setup(granularities, kv_reduction)
    block = model.stages[0].blocks[0]
    dge = block.mixers["dge"]
    s = max(granularities)
    x = torch.randn(3, 8, 8, 16)
    choice = torch.randint(0, len(granularities), (3, 8 // s, 8 // s))
    choice[0] = 0  # coarsest everywhere
    choice[1] = len(granularities) - 1  # finest everywhere
    args = (block, 2, 32, granularities, kv_reduction)
    block.train()
    dense, dense_cost = dge_call(dge, x, *args, choice=choice)
    block.eval()
    sparse, sparse_cost = dge_call(dge, x, *args, choice=choice)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(sparse, x, atol=1e-3)  # the block did something

    regions = (8 // s) ** 2
    assert dense_cost.computed == 3 * regions * sum(g * g for g in granularities)
    chosen = torch.tensor([g * g for g in granularities])[choice]
    assert sparse_cost.computed == int(chosen.sum())
    torch.testing.assert_close(sparse_cost.queries, chosen.sum((1, 2)).float())


def test_dge_model_train_equals_eval_for_same_routing(monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end over two DGE stages: with the Gumbel noise removed, training's hard gates are the
    router's argmax, which evaluation takes, and the dense and sparse models give the same logits."""
    torch.manual_seed(0)
    arch = make_arch({"type": "dge", "granularities": [1, 2], "kv_reduction": 2, "pos_conv": False}, stages=2)
    model = build_model(arch)
    with torch.no_grad():
        for dge in dge_modules(model):
            dge.router.weight.normal_(std=3.0)  # routes differ between regions
    monkeypatch.setattr(
        F, "gumbel_softmax", lambda logits, tau, hard: F.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    )
    x = images(3)
    model.train()
    dense, dense_costs = model.forward_with_costs(x)
    model.eval()
    with torch.no_grad():
        sparse, sparse_costs = model.forward_with_costs(x)
    torch.testing.assert_close(sparse, dense.detach(), rtol=1e-5, atol=1e-5)
    assert sum(c.computed for c in sparse_costs) < sum(c.computed for c in dense_costs)


@pytest.mark.parametrize("g", [1, 2, 4])
def test_dge_query_counts_forcing_one_granularity(g: int) -> None:
    """Forced g everywhere: (H/S)*(W/S)*g*g queries per image and block in evaluation; training computes
    every granularity of the set."""
    granularities = [1, 2, 4]
    arch = make_arch({"type": "dge", "granularities": granularities}, stages=2, depth=2)  # maps 8x8, 4x4
    model = build_model(arch)
    with torch.no_grad():
        for dge in dge_modules(model):
            dge.router.bias.fill_(-10.0)
            dge.router.bias[g - 1] = 10.0
    batch = 2
    x = images(batch)
    per_image_block = [(8 // 4) ** 2, (4 // 4) ** 2]  # regions per block in each stage
    model.eval()
    with torch.no_grad():
        _, costs = model.forward_with_costs(x)
    assert sum(c.computed for c in costs) == batch * 2 * sum(r * g * g for r in per_image_block)
    for cost, regions in zip(costs, [4, 4, 1, 1]):
        assert cost.computed == batch * regions * g * g
    model.train()
    _, costs = model.forward_with_costs(x)
    assert sum(c.computed for c in costs) == batch * 2 * sum(r * (1 + 4 + 16) for r in per_image_block)


def test_dge_budget_loss_trains_router() -> None:
    """The official form (vtpack engine.py): one ratio per batch, sum over blocks of the batch-mean dynamic
    FLOPs over the sum of static FLOPs, squared gap to gamma; checked against a hand computation."""
    torch.manual_seed(0)
    arch, model = dge_setup([1, 2, 4], depth=2)
    with torch.no_grad():
        for dge in dge_modules(model):
            dge.router.weight.normal_(std=3.0)  # images and blocks route differently
    model.train()
    _, costs = model.forward_with_costs(images())
    assert len(costs) == 2 and all(c.dynamic.shape == (2,) for c in costs)
    # By hand: 8x8 tokens, C 16, hidden 32, keys and values over all 64 tokens.
    per_query = 2 * 16 * 16 + 2 * 64 * 16 + 2 * 16 * 32
    fixed = 2 * 64 * 16 * 16
    static = 64 * per_query + fixed
    queries = torch.stack([c.queries for c in costs])  # (blocks, images), from the hard gates
    assert ((queries >= 4) & (queries <= 64)).all() and len(set(queries.flatten().tolist())) > 1
    ratio = (queries * per_query + fixed).mean(1).sum() / (2 * static)
    loss = budget_loss(costs)
    torch.testing.assert_close(loss, (ratio - 0.5) ** 2)
    # Not the per-image, per-block average of squares, which also penalises routing that varies.
    per_image = (((queries * per_query + fixed) / static - 0.5) ** 2).mean()
    assert not torch.isclose(loss.detach(), per_image)
    loss.backward()
    # The budget depends on the routing only: the routers (and, through their inputs, what comes before
    # them) get gradients; what no router reads (the last block's attention and FFN, the head) gets none.
    last = "stages.0.blocks.1."
    for name, p in model.named_parameters():
        if ".router." in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        elif (name.startswith(last) and ".router." not in name) or name.startswith(("head.", "norm.")):
            assert p.grad is None or not p.grad.any(), name


def test_dge_drop_path_only_in_training() -> None:
    torch.manual_seed(0)
    arch = make_arch({"type": "dge", "granularities": [1, 2]}, stages=1, depth=2, drop_path_rate=0.9)
    model = build_model(arch).eval()
    reference = build_model(make_arch({"type": "dge", "granularities": [1, 2]}, stages=1, depth=2))
    reference.load_state_dict(model.state_dict())
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference.eval()(x))


# ----------------------------------------------------------------------------------------------------
# Supernet: every mixer at several sizes, extracted subnets equal the supernet's outputs


SPACE_MIXERS: dict[str, tuple[dict[str, list], dict[str, list]]] = {
    # mixer -> (choices in the 8x8 stage, choices in the 4x4 stage)
    "window_attn": ({"window_size": [2, 4, 8], "rel_pos_bias": [True, False]}, {"window_size": [2, 4]}),
    "dwconv": ({"kernel_size": [3, 5]}, {"kernel_size": [1, 3]}),
    "dyn_dwconv": ({"kernel_size": [3, 5], "inhomogeneous": [False, True]},
                   {"kernel_size": [3, 5], "inhomogeneous": [True, False]}),
    "refiner": ({"window_size": [4, 8], "expansion_ratio": [2, 3], "kernel_size": [1, 3]},
                {"window_size": [2, 4], "expansion_ratio": [1, 3], "kernel_size": [3]}),
    "dge": ({"granularities": [[1, 2], [1, 2, 4], [2, 4]], "kv_reduction": [1, 2]},
            {"granularities": [[1, 2], [1, 4]], "kv_reduction": [1, 2]}),
}


def mixer_space(mixer: str) -> SearchSpace:
    first, second = SPACE_MIXERS[mixer]
    ffns = ["mlp"] if mixer == "dge" else ["mlp", "local", {"type": "local", "se": True}]
    return SearchSpace.from_dict({
        "input_size": INPUT, "num_classes": 5, "patch_size": PATCH,
        "stages": [
            {"depth": [1, 2], "dim": [16, 24], "heads": [2, 4], "mlp_ratio": [1.5, 2.0], "ffn": ffns,
             "mixers": {mixer: first}},
            {"depth": [1, 2], "dim": [24, 32], "heads": [2, 4], "mlp_ratio": [2.0, 3.0], "ffn": ffns,
             "mixers": {mixer: second}},
        ],
    })


@torch.no_grad()
def perturb(model: torch.nn.Module) -> None:
    """Move every parameter and BatchNorm statistic off its initial value, so that a wrong slice shows."""
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.add_(0.05 * torch.randn(p.shape, generator=gen))
    for name, buf in model.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(0.1 * torch.randn(buf.shape, generator=gen))
        elif name.endswith("running_var"):
            buf.copy_(0.5 + torch.rand(buf.shape, generator=gen))


@pytest.mark.parametrize("mixer", list(SPACE_MIXERS))
def test_supernet_extract_matches(mixer: str) -> None:
    torch.manual_seed(0)
    space = mixer_space(mixer)
    supernet = Supernet(space)
    perturb(supernet)
    if mixer == "dge":
        with torch.no_grad():
            for dge in dge_modules(supernet):
                dge.router.weight.normal_(std=3.0)  # regions take different granularities
    supernet.eval()
    rng = random.Random(0)
    archs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(3)]
    x = images()
    outputs = []
    for arch in archs:
        sub = supernet.extract(arch).eval()
        assert count_params(sub) == count_params(build_model(arch))
        with torch.no_grad():
            expected = supernet(x, arch)
            torch.testing.assert_close(sub(x), expected, rtol=1e-5, atol=1e-5)
        outputs.append(expected)
    assert not torch.allclose(outputs[0], outputs[1])  # the archs do run different networks


# ----------------------------------------------------------------------------------------------------
# Fidelity to the papers' code (the mixer-fidelity issue)


def test_refiner_keeps_the_shift_mask_after_refinement(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refinement's convolutions would move weight back onto pairs the shift mask separated (tokens the
    cyclic roll brought together from opposite borders); the refined maps are masked again, so those pairs
    weigh exactly zero. The depth-wise conv over the maps has no bias (as released): a bias would add weight
    to every entry, masked ones included."""
    import types

    import mixnas.supernet.mixers.refiner as refiner_module
    from mixnas.supernet.mixers.window_attn import shift_attention_mask

    torch.manual_seed(0)
    refiner = RefinerAttention(16, 2, 4, 3, 3)
    assert refiner.local.bias is None
    with torch.no_grad():
        for conv in (refiner.expand, refiner.local, refiner.reduce):
            conv.weight.normal_(std=0.5)  # a refinement that mixes heads and neighbouring pairs strongly
    maps: list[Tensor] = []

    def matmul(a: Tensor, b: Tensor) -> Tensor:
        maps.append(a.detach())
        return torch.matmul(a, b)

    class TorchWithMatmul(types.SimpleNamespace):
        def __getattr__(self, name: str):  # everything but matmul from torch itself
            return getattr(torch, name)

    monkeypatch.setattr(refiner_module, "torch", TorchWithMatmul(matmul=matmul))
    config = {"type": "refiner", "window_size": 4, "expansion_ratio": 3, "kernel_size": 3}
    with torch.no_grad():
        call(refiner, torch.randn(2, 8, 8, 16), config, 2, block_index=1)  # odd block: shifted by 2
    (refined,) = maps  # (B, nW, heads, N, N)
    masked = (shift_attention_mask(8, 8, 4, 2) != 0)[None, :, None].expand_as(refined)
    assert masked.any() and (refined[masked] == 0).all()
    assert (refined[~masked] != 0).float().mean() > 0.99  # allowed pairs keep their (refined) weight


def test_dge_drop_path_applies_to_attention_and_ffn_separately(monkeypatch: pytest.MonkeyPatch) -> None:
    import mixnas.supernet.mixers.dge as dge_module

    calls: list[tuple[list[int], float, Any]] = []
    original = dge_module.DynamicGrainedEncoder.drop_masks

    def spy(self: Any, like: Tensor, lengths: list[int], prob: float) -> Any:
        masks = original(self, like, lengths, prob)
        calls.append((list(lengths), prob, masks))
        return masks

    monkeypatch.setattr(dge_module.DynamicGrainedEncoder, "drop_masks", spy)
    torch.manual_seed(0)
    model = build_model(make_arch({"type": "dge", "granularities": [1, 2]}, stages=1, depth=2,
                                  drop_path_rate=0.5)).train()
    model(images())
    # Two blocks (rates 0 and 0.5), the queries of both granularities in one call each.
    assert [p for _, p, _ in calls] == [0.0, 0.5]
    lengths, _, masks = calls[1]
    assert len(lengths) == 2 and lengths[1] == 4 * lengths[0]  # g = 1 and g = 2: 1 and 4 queries a region
    assert calls[0][2] is None and masks is not None
    attn, ffn = masks
    assert attn.shape == ffn.shape == (images().shape[0], sum(lengths), 1)
    assert not torch.equal(attn, ffn)  # the attention update and the FFN update of a query: separate draws


def test_dge_kv_reduction_is_a_learned_strided_conv_then_layer_norm() -> None:
    torch.manual_seed(0)
    _, model = dge_setup([1, 2], kv_reduction=2)
    dge = dge_modules(model)[0]
    conv = dge.kv_reduce["2"]
    assert conv.weight.shape == (16, 16, 2, 2) and conv.stride == 2 and conv.bias is not None
    assert dge.kv_norm is not None and dge.kv_norm.eps == 1e-5  # PVT's plain nn.LayerNorm
    model.eval()
    x = images()
    with torch.no_grad():
        before = model(x)
        conv.weight.mul_(2.0)
        assert not torch.allclose(model(x), before)  # the reduction is a learned layer, not a fixed pool


def unfold_reference(x: Tensor, kernels: Tensor, k: int) -> Tensor:
    """The per-position depth-wise conv as F.unfold computes it (a k*k-fold copy of x)."""
    b, c, h, w = x.shape
    g = kernels.shape[1]
    patches = F.unfold(x, k, padding=k // 2).view(b, g, c // g, k * k, h * w)
    return torch.einsum("bgckn,bgkn->bgcn", patches, kernels.view(b, g, k * k, h * w)).reshape(b, c, h, w)


@pytest.mark.parametrize("k, groups", [(3, 4), (5, 2), (7, 16)])
def test_inhomogeneous_dwconv_equals_the_unfolded_computation(k: int, groups: int) -> None:
    from mixnas.supernet.mixers.dyn_dwconv import per_position_dwconv

    gen = torch.Generator().manual_seed(k)
    x = torch.randn(2, 16, 7, 6, generator=gen, requires_grad=True)
    kernels = torch.randn(2, groups, k * k, 7, 6, generator=gen, requires_grad=True)
    ours = per_position_dwconv(x, kernels, k)
    ref = unfold_reference(x, kernels, k)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    g1 = torch.autograd.grad(ours.square().sum(), (x, kernels))
    g2 = torch.autograd.grad(ref.square().sum(), (x, kernels))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_inhomogeneous_dwconv_groups_are_dim_over_heads() -> None:
    """As the official code: heads are channels per group, so a 16-channel stage with 2 heads predicts
    8 kernels per position, each shared by 2 neighbouring channels."""
    arch = make_arch({"type": "dyn_dwconv", "kernel_size": 3, "inhomogeneous": True}, stages=1)
    model = build_model(arch)
    generator = model.stages[0].blocks[0].mixers["dyn_dwconv"].i_generate
    assert generator.weight.shape[0] == 16 // 2


def test_heads_are_sliced_head_by_head() -> None:
    """Fixed heads, shrinking width (3 heads, dims 72 / 96): a subnet's head j is the supernet's head j
    narrowed to its leading channels, not a mix of two supernet heads."""
    torch.manual_seed(0)
    space = SearchSpace.from_dict({
        "input_size": INPUT, "num_classes": 5, "patch_size": PATCH,
        "stages": [{"depth": [1], "dim": [72, 96], "heads": [3], "mixers": {"window_attn": {"window_size": [8]}}}],
    })
    supernet = Supernet(space)
    small = space.smallest()
    sub = supernet.extract(small)
    held = supernet.stages[0].blocks[0].mixers["window_attn"].qkv.weight  # (3, 96, 96): q, k, v
    got = sub.stages[0].blocks[0].mixers["window_attn"].qkv.weight  # (3, 72, 72)
    for head in range(3):
        torch.testing.assert_close(got[:, head * 24:(head + 1) * 24], held[:, head * 32:head * 32 + 24, :72])
    proj_held = supernet.stages[0].blocks[0].mixers["window_attn"].proj.weight  # (96, 96)
    proj = sub.stages[0].blocks[0].mixers["window_attn"].proj.weight  # (72, 72)
    torch.testing.assert_close(proj[:, 24:48], proj_held[:72, 32:56])
    supernet.eval()
    with torch.no_grad():
        torch.testing.assert_close(sub.eval()(images()), supernet(images(), small), rtol=1e-5, atol=1e-5)


def test_local_ffn_has_no_drop_path(monkeypatch: pytest.MonkeyPatch) -> None:
    import mixnas.supernet.backbone as backbone

    rates: list[float] = []
    original = backbone.drop_path

    def spy(x: Tensor, prob: float = 0.0, training: bool = False, **kw: Any) -> Tensor:
        rates.append(prob)
        return original(x, prob, training, **kw)

    monkeypatch.setattr(backbone, "drop_path", spy)
    model = build_model(make_arch(WINDOW_ATTN, {"type": "local", "se": False}, stages=1, drop_path_rate=0.5))
    model.train()(images())
    assert rates == [0.0, 0.5]  # the mixer's update in each of the two blocks; the local FFN takes none


def test_dge_drop_path_drops_query_tokens_not_whole_images() -> None:
    """The official DGE code drops each query's update on its own: at rate 0.5 part of every image's queries
    keeps its update and part loses it (timm's per-image drop-path keeps all or none of an image's)."""
    from mixnas.supernet.mixers.dge import DynamicGrainedEncoder

    dge = DynamicGrainedEncoder(8, 2, 2).train()
    like = torch.zeros(6, 1, 8)
    torch.manual_seed(0)
    attn, ffn = dge.drop_masks(like, [16, 48], 0.5)
    for mask in (attn, ffn):
        dropped = mask[..., 0] == 0  # (B, L)
        assert (dropped.any(1) & ~dropped.all(1)).all()  # every image: some queries dropped, some kept
        assert set(mask.unique().tolist()) == {0.0, 2.0}  # kept updates scaled by 1 / (1 - 0.5)
    # Drawn as one drop-path pair per granularity would draw them: group by group, attention's first.
    torch.manual_seed(0)
    draws = [torch.empty(6, n, 1).bernoulli_(0.5) for n in (16, 16, 48, 48)]
    assert torch.equal(attn, torch.cat(draws[0::2], 1) / 0.5) and torch.equal(ffn, torch.cat(draws[1::2], 1) / 0.5)
    assert dge.eval().drop_masks(like, [16, 48], 0.5) is None and dge.train().drop_masks(like, [16], 0.0) is None


def test_refiner_on_shifted_windows_mixes_no_regions() -> None:
    """With shifted windows, a token's output depends on no token of another region of its window (as in
    Swin): the refinement's conv reads only entries of the entry's own region pair. The ungated conv
    reached across the roll's seam (cross-region sensitivity up to 0.65 of the within-region one)."""
    from mixnas.supernet.mixers.window_attn import shift_regions

    torch.manual_seed(0)
    refiner = RefinerAttention(16, 2, 4, 3, 3)
    with torch.no_grad():
        for conv in (refiner.expand, refiner.local, refiner.reduce):
            conv.weight.normal_(std=0.5)
    config = {"type": "refiner", "window_size": 4, "expansion_ratio": 3, "kernel_size": 3}
    h = w = 8
    window, shift = 4, 2
    # Token positions in the rolled map's last window (bottom right): four regions meet there.
    regions = shift_regions(h, w, window, shift)[-1].view(window, window)
    x = torch.randn(1, h, w, 16, requires_grad=True)
    out = call(refiner, x, config, 2, block_index=1)  # odd block: shifted
    # Output token at rolled position (r, c) of the last window is map position (r + shift) % h, ...
    cross, within = 0.0, 0.0
    for r in range(window):
        for c in range(window):
            i = ((h - window + r + shift) % h, (w - window + c + shift) % w)
            (grad,) = torch.autograd.grad(out[0, i[0], i[1]].sum(), x, retain_graph=True)
            sens = grad[0].abs().sum(-1)  # (H, W)
            for r2 in range(window):
                for c2 in range(window):
                    j = ((h - window + r2 + shift) % h, (w - window + c2 + shift) % w)
                    if j == i:
                        continue
                    value = float(sens[j])
                    if regions[r, c] == regions[r2, c2]:
                        within = max(within, value)
                    else:
                        cross = max(cross, value)
    assert within > 1e-3
    assert cross <= 1e-30 * within + 1e-30, (cross, within)  # zero up to the mask's exp(-100) leak
