"""FLOPs of each mixer and FFN at small sizes against formulas written out by hand.

FLOPs are multiply-adds (DESIGN.md section 3), counted by ``mixnas.search.profiler.count_flops`` (fvcore
plus an SDPA handle) at batch 1. Conventions the formulas follow (see the profiler's docstring):

* a linear or conv layer costs (output elements) * (inputs per output); biases are free;
* attention costs the two matmuls q @ k^T and attn @ v; softmax, scale, masks and the bias are free;
* LayerNorm costs 5 per element (affine), BatchNorm in eval 2 per element (affine);
* ``adaptive_avg_pool2d`` costs 1 per input element; means, ``avg_pool2d``, activations, adds, rolls,
  gathers and scatters are free.

Every count must match exactly, and no op of a mixer may be left without a FLOP handle.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from mixnas.search.profiler import count_flops, unsupported_ops
from mixnas.search_space import ArchConfig, MixerConfig
from mixnas.supernet import BlockParts, MixerContext
from mixnas.supernet.backbone import build_model
from mixnas.supernet.ffn import ElasticMlp, LocalFFN
from mixnas.supernet.mixers.dge import router_prior
from mixnas.supernet.mixers.dwconv import DWConvMixer
from mixnas.supernet.mixers.dyn_dwconv import DynamicDWConvMixer
from mixnas.supernet.mixers.refiner import RefinerAttention
from mixnas.supernet.mixers.window_attn import WindowAttention

C = 16  # channels
HEADS = 2
RES = 8  # the map is RES x RES tokens
N = RES * RES  # tokens
HIDDEN = 2 * C  # FFN width (expansion 2)

LAYER_NORM = 5  # FLOPs per element, affine LayerNorm (fvcore)
BATCH_NORM = 2  # FLOPs per element, affine BatchNorm in eval (fvcore)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class Traced(nn.Module):
    """A model whose forward is one call of a mixer with fixed arguments; ``parts`` are registered so that
    the profiler's eval mode reaches them."""

    def __init__(self, fn: Callable[[Tensor], Tensor], *parts: nn.Module) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def ctx(config: dict, heads: int = HEADS, block_index: int = 0) -> MixerContext:
    return MixerContext(MixerConfig.from_dict(config), heads, block_index)


def dge_call(block: nn.Module, x: Tensor, granularities: tuple[int, ...], kv_reduction: int = 1,
             choice: Tensor | None = None) -> tuple[Tensor, object]:
    """The block's DGE on its own norms and FFN: (output, DynamicCost)."""
    parts = BlockParts(block.norm1, block.norm2, lambda t: block.ffns["mlp"](t, HIDDEN), HIDDEN)
    pos_conv = block.mixers["dge"].pos_conv is not None
    config = MixerConfig.from_dict({"type": "dge", "granularities": list(granularities), "kv_reduction": kv_reduction,
                                    "pos_conv": pos_conv})
    return block.mixers["dge"](x, MixerContext(config, HEADS, 0, 0.0, parts), choice=choice)


def tokens() -> Tensor:
    """One image's tokens, (1, H, W, C)."""
    return torch.randn(1, RES, RES, C, generator=torch.Generator().manual_seed(0))


def check(model: nn.Module, expected: int, tolerance: int = 0) -> None:
    x = tokens()
    assert abs(count_flops(model, x) - expected) <= tolerance
    assert unsupported_ops(model, x) == {}


# ----------------------------------------------------------------------------------------------------
# Attention mixers


@pytest.mark.parametrize(
    "window, block_index, rel_pos_bias",
    [(4, 0, True), (4, 1, True), (4, 1, False), (2, 1, True), (8, 0, True), (16, 1, False)],
    ids=["w4", "w4-shift", "w4-shift-nobias", "w2-shift", "global", "global-nobias"],
)
def test_window_attention_flops(window: int, block_index: int, rel_pos_bias: bool) -> None:
    mixer = WindowAttention(C, HEADS, bias_window=min(window, RES))
    config = {"type": "window_attn", "window_size": window, "rel_pos_bias": rel_pos_bias}
    model = Traced(lambda x: mixer(x, ctx(config, block_index=block_index)), mixer)
    w = min(window, RES)  # a window at least as large as the map is the map (global attention)
    n_windows, n = (RES // w) ** 2, w * w
    head_dim = C // HEADS
    qkv = N * C * 3 * C
    attention = n_windows * HEADS * (n * n * head_dim + n * n * head_dim)  # q @ k^T and attn @ v
    proj = N * C * C
    assert attention == 2 * N * w * w * C
    check(model, qkv + attention + proj)


@pytest.mark.parametrize(
    "window, expansion, kernel", [(4, 2, 3), (4, 3, 1), (8, 2, 3)], ids=["w4e2k3", "w4e3k1", "global-e2k3"]
)
def test_refiner_flops(window: int, expansion: int, kernel: int) -> None:
    mixer = RefinerAttention(C, HEADS, min(window, RES), expansion, kernel)
    config = {"type": "refiner", "window_size": window, "expansion_ratio": expansion, "kernel_size": kernel}
    model = Traced(lambda x: mixer(x, ctx(config, block_index=1)), mixer)
    w = min(window, RES)
    n_windows, n = (RES // w) ** 2, w * w
    head_dim = C // HEADS
    expanded = expansion * HEADS  # maps after attention expansion
    qkv = N * C * 3 * C
    scores = n_windows * HEADS * n * n * head_dim  # q @ k^T
    # The maps of one window are an HEADS-channel image of n x n "pixels".
    expand = n_windows * (n * n) * expanded * HEADS  # 1x1 conv HEADS -> e*HEADS
    local = n_windows * (n * n) * expanded * kernel * kernel  # depth-wise k x k over each expanded map
    reduce = n_windows * (n * n) * HEADS * expanded  # 1x1 conv e*HEADS -> HEADS
    weighted = n_windows * HEADS * n * n * head_dim  # maps @ v
    proj = N * C * C
    check(model, qkv + scores + expand + local + reduce + weighted + proj)


# ----------------------------------------------------------------------------------------------------
# Convolution mixers


@pytest.mark.parametrize("kernel", [3, 5])
def test_dwconv_flops(kernel: int) -> None:
    mixer = DWConvMixer(C, kernel)
    model = Traced(lambda x: mixer(x, ctx({"type": "dwconv", "kernel_size": kernel})), mixer)
    pointwise = N * C * C  # 1x1 conv, no bias
    depthwise = N * C * kernel * kernel  # one k x k filter per channel
    bn = BATCH_NORM * N * C
    check(model, (pointwise + bn) + (depthwise + bn) + (pointwise + bn))


@pytest.mark.parametrize("kernel", [3, 5])
def test_dyn_dwconv_homogeneous_flops(kernel: int) -> None:
    mixer = DynamicDWConvMixer(C, kernel, homogeneous=True)
    model = Traced(lambda x: mixer(x, ctx({"type": "dyn_dwconv", "kernel_size": kernel})), mixer)
    pointwise = N * C * C
    bn = BATCH_NORM * N * C
    hidden = C // 4
    # Kernel prediction, once per image: global pool -> 1x1 C -> C/4 -> BN -> ReLU -> 1x1 C/4 -> C*k*k.
    pool = N * C  # adaptive_avg_pool2d: 1 per input element
    reduce = C * hidden
    reduce_bn = BATCH_NORM * hidden
    generate = hidden * C * kernel * kernel
    depthwise = N * C * kernel * kernel  # the predicted kernels applied as a grouped conv
    expected = (pointwise + bn) + (pool + reduce + reduce_bn + generate) + (depthwise + bn) + (pointwise + bn)
    check(model, expected)


@pytest.mark.parametrize("kernel, groups", [(3, 2), (5, 4)])
def test_dyn_dwconv_inhomogeneous_flops(kernel: int, groups: int) -> None:
    mixer = DynamicDWConvMixer(C, kernel, homogeneous=False, inhomogeneous=True, groups=groups)
    # As the official code, heads are the channels per group: G = C / heads.
    config = {"type": "dyn_dwconv", "kernel_size": kernel, "inhomogeneous": True}
    model = Traced(lambda x: mixer(x, ctx(config, heads=C // groups)), mixer)
    pointwise = N * C * C
    bn = BATCH_NORM * N * C
    hidden = C // 4
    # Kernel prediction at every position: 1x1 C -> C/4 -> BN -> ReLU -> 1x1 C/4 -> k*k*G.
    reduce = N * hidden * C
    reduce_bn = BATCH_NORM * N * hidden
    generate = N * groups * kernel * kernel * hidden
    apply = N * C * kernel * kernel  # each output sums k*k weighted neighbours (one addcmul per offset)
    expected = (pointwise + bn) + (reduce + reduce_bn + generate) + (apply + bn) + (pointwise + bn)
    check(model, expected)


# ----------------------------------------------------------------------------------------------------
# FFNs


def test_mlp_flops() -> None:
    ffn = ElasticMlp(C, HIDDEN)
    model = Traced(lambda x: ffn(x, HIDDEN), ffn)
    check(model, N * C * HIDDEN + N * HIDDEN * C)


@pytest.mark.parametrize("se", [False, True], ids=["local", "local-se"])
def test_local_ffn_flops(se: bool) -> None:
    ffn = LocalFFN(C, HIDDEN, se=se)
    model = Traced(lambda x: ffn(x, HIDDEN, se), ffn)
    squeeze = HIDDEN // C  # LocalViT's squeeze-excitation narrows rC to rC // C
    expand = N * C * HIDDEN + BATCH_NORM * N * HIDDEN
    depthwise = N * HIDDEN * 3 * 3 + BATCH_NORM * N * HIDDEN
    excite = HIDDEN * squeeze + squeeze * HIDDEN if se else 0  # on the pooled (1, rC) vector
    project = N * HIDDEN * C + BATCH_NORM * N * C
    check(model, expand + depthwise + excite + project)


# ----------------------------------------------------------------------------------------------------
# DGE (a whole block), evaluated sparsely with forced granularities


def dge_block(granularities: tuple[int, ...], kv_reduction: int, pos_conv: bool = False) -> nn.Module:
    arch = ArchConfig.from_dict({
        "input_size": RES * 4, "num_classes": 10, "patch_size": 4,
        "stages": [{
            "depth": 1, "dim": C, "heads": HEADS, "mlp_ratio": HIDDEN / C, "ffn": "mlp",
            "mixer": {"type": "dge", "granularities": list(granularities), "kv_reduction": kv_reduction,
                      "pos_conv": pos_conv},
        }],
    })
    return build_model(arch).stages[0].blocks[0]


@pytest.mark.parametrize(
    "granularities, forced, kv_reduction",
    [
        ((1, 2), 1, 1),
        ((1, 2), 2, 1),
        ((1, 2), None, 1),
        ((1, 2), 2, 2),
        ((1, 2, 4), 2, 1),
        ((1, 2, 4), None, 2),
    ],
    ids=["g1", "g2", "mixed", "g2-kv2", "set124-g2", "set124-mixed-kv2"],
)
def test_dge_flops(granularities: tuple[int, ...], forced: int | None, kv_reduction: int) -> None:
    """Evaluation computes only the routed queries; the router runs (its argmax decides), so it is counted."""
    block = dge_block(granularities, kv_reduction)
    dge = block.mixers["dge"]
    with torch.no_grad():
        if forced is None:  # a random router: regions of one image take different granularities
            dge.router.weight.normal_(generator=torch.Generator().manual_seed(1))
            rows = torch.tensor([g - 1 for g in granularities])
            dge.router.bias.zero_()[rows] = -router_prior(granularities)  # cancel the prior: even odds
        else:  # the router's bias alone picks ``forced`` everywhere
            dge.router.bias.fill_(-10.0)
            dge.router.bias[forced - 1] = 10.0
    model = Traced(lambda x: dge_call(block, x, granularities, kv_reduction)[0], block)

    x = tokens()
    s = max(granularities)
    n_regions = (RES // s) ** 2
    with torch.no_grad():
        routed = [granularities[j] for j in dge.route(x, granularities).argmax(-1).flatten().tolist()]
    assert (len(set(routed)) == 1) if forced else (len(set(routed)) > 1)
    q = sum(g * g for g in routed)  # queries: g x g per region
    n_kv = N // kv_reduction**2  # keys and values (PVT: an r x r conv with stride r, then LayerNorm)
    router = n_regions * C * len(granularities)  # Linear(C, |set|) on each region's mean (the mean is free)
    reduce = n_kv * C * C * kv_reduction**2 + LAYER_NORM * n_kv * C if kv_reduction > 1 else 0
    kv = LAYER_NORM * N * C + reduce + n_kv * C * 2 * C
    attention = LAYER_NORM * q * C + q * C * C + 2 * q * n_kv * C + q * C * C  # norm1, q, q@k and attn@v, proj
    ffn = LAYER_NORM * q * C + 2 * q * C * HIDDEN  # norm2 and the MLP, on the queries only
    check(model, router + kv + attention + ffn)
    with torch.no_grad():
        assert dge_call(block.eval(), x, granularities, kv_reduction)[1].computed == q
    if forced:
        assert q == n_regions * forced**2


def test_dge_forced_choice_skips_router() -> None:
    """With ``choice=`` the router's logits are unused, and the trace (hence the count) drops them."""
    granularities = (1, 2)
    block = dge_block(granularities, 1)
    choice = torch.tensor([0, 1] * 8).view(1, 4, 4)  # regions alternate g = 1 and g = 2
    model = Traced(lambda x: dge_call(block, x, granularities, choice=choice)[0], block)
    q = 8 * 1 + 8 * 4
    kv = LAYER_NORM * N * C + N * C * 2 * C
    attention = LAYER_NORM * q * C + q * C * C + 2 * q * N * C + q * C * C
    ffn = LAYER_NORM * q * C + 2 * q * C * HIDDEN
    check(model, kv + attention + ffn)


def test_dge_positional_conv_flops() -> None:
    """The positional conv costs a dense 3x3 depth-wise conv and its BatchNorm, whatever the routing."""
    granularities = (1, 2)
    without, with_conv = dge_block(granularities, 1), dge_block(granularities, 1, pos_conv=True)
    with_conv.mixers["dge"].load_state_dict(without.mixers["dge"].state_dict(), strict=False)
    for block in (without, with_conv):
        with torch.no_grad():
            block.mixers["dge"].router.bias.fill_(-10.0)
            block.mixers["dge"].router.bias[0] = 10.0  # every region coarse, so routing cannot differ
    a = count_flops(Traced(lambda x: dge_call(without, x, granularities)[0], without), tokens())
    b = count_flops(Traced(lambda x: dge_call(with_conv, x, granularities)[0], with_conv), tokens())
    assert b - a == N * C * 3 * 3 + BATCH_NORM * N * C
