"""Supernet.extract: the standalone model of an architecture equals the supernet running it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from shipped import shipped_space

from mixnas import ArchConfig, ConfigError, Supernet, build_model
from mixnas.search.profiler import count_params
from mixnas.supernet.elastic import weights_to_be_loaded

SPACES = Path(__file__).resolve().parents[1] / "mixnas" / "configs" / "spaces"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def randomise_batchnorm(net: torch.nn.Module, seed: int) -> None:
    """Give every BatchNorm distinct statistics, so that a mis-sliced buffer shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


# The imagenet space's 57 networks at 224 pixels take half a minute: in the full suite, not the edit loop.
@pytest.mark.parametrize("space_name", ["demo", "cifar", pytest.param("imagenet", marks=pytest.mark.slow)])
def test_extract_matches_the_supernet_on_50_architectures(space_name: str) -> None:
    space = shipped_space(SPACES / f"{space_name}.yaml")
    torch.manual_seed(0)
    net = Supernet(space).eval()
    with torch.no_grad():
        randomise_batchnorm(net, 0)
    rng = random.Random(0)
    archs = [space.largest(m) for m in space.mixer_types()] + [space.smallest()]
    archs += [space.sample(rng) for _ in range(50)]
    batch = 2 if space.input_size <= 64 else 1
    x = torch.randn(batch, 3, space.input_size, space.input_size)
    mixers_seen = set()
    for arch in archs:
        model = net.extract(arch).eval()
        with weights_to_be_loaded():  # a count needs no initialised weights
            assert count_params(model) == count_params(build_model(arch))
        with torch.no_grad():
            torch.testing.assert_close(model(x), net(x, arch), atol=1e-5, rtol=0)
        mixers_seen.update(s.mixer.type for s in arch.stages)
    assert mixers_seen == {"window_attn", "dwconv", "dyn_dwconv", "refiner", "dge"}


def test_a_model_built_for_loading_skips_only_the_random_initialisation() -> None:
    """``weights_to_be_loaded`` (used by ``extract``) leaves the same tensors and the same fixed values (zero
    biases, LayerNorm's ones, the non-persistent index buffers) and skips only the random draws."""
    arch = shipped_space(SPACES / "demo.yaml").largest("window_attn")
    torch.manual_seed(0)
    initialised = build_model(arch)
    state = torch.random.get_rng_state()
    with weights_to_be_loaded():
        loadable = build_model(arch)
    assert torch.equal(torch.random.get_rng_state(), state)  # no random draw was made
    full, bare = dict(initialised.named_buffers()), dict(loadable.named_buffers())
    assert full.keys() == bare.keys() and any(".index_" in k for k in full)  # the non-persistent index
    for name, buffer in full.items():
        assert torch.equal(bare[name], buffer), name
    params = dict(loadable.named_parameters())
    for name, p in initialised.named_parameters():
        assert params[name].shape == p.shape
        if p.numel() > 1 and bool((p == p.flatten()[0]).all()):  # a fixed value (zeros, ones), not a draw
            assert torch.equal(params[name], p), name
    torch.manual_seed(0)
    assert torch.equal(build_model(arch).head.weight, initialised.head.weight)  # initialised again after the block


def test_architecture_outside_the_space_is_refused() -> None:
    space = shipped_space(SPACES / "demo.yaml")
    net = Supernet(space)
    d = space.largest().to_dict()
    d["stages"][0]["dim"] = 40
    outside = ArchConfig.from_dict(d)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ConfigError, match=r"not in the search space: stages\[0\].dim: 40 is not among \[32, 48\]"):
        net(x, outside)
    with pytest.raises(ConfigError, match="not in the search space"):
        net.extract(outside)
    with pytest.raises(ValueError, match="supernet runs one architecture per call"):
        net(x)


def test_weights_are_shared_between_architectures() -> None:
    """A smaller kernel is the centre of the larger one; a narrower layer is the leading slice."""
    space = shipped_space(SPACES / "demo.yaml")
    net = Supernet(space)
    big = space.largest("dwconv")
    d = big.to_dict()
    d["stages"][0]["mixer"]["kernel_size"] = 3
    d["stages"][0]["dim"] = 32
    small = ArchConfig.from_dict(d)
    m = net.extract(small)
    held = net.stages[0].blocks[0].mixers["dwconv"].conv.weight  # (48, 1, 5, 5)
    got = m.stages[0].blocks[0].mixers["dwconv"].conv.weight  # (32, 1, 3, 3)
    torch.testing.assert_close(got, held[:32, :, 1:4, 1:4])
    # Training one architecture moves weights another architecture uses.
    before = net.extract(big).stages[0].blocks[0].mixers["dwconv"].conv.weight.clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net.train()
    net(torch.randn(4, 3, 32, 32), small).sum().backward()
    opt.step()
    after = net.extract(big).stages[0].blocks[0].mixers["dwconv"].conv.weight
    assert not torch.equal(before[:32, :, 1:4, 1:4], after[:32, :, 1:4, 1:4])
    torch.testing.assert_close(before[32:], after[32:])  # channels the small one lacks are untouched


def test_sandwich_rotates_the_mixer_of_its_largest_and_smallest() -> None:
    from mixnas.training import TrainConfig, sandwich_archs

    space = shipped_space(SPACES / "demo.yaml")
    rng = random.Random(0)
    kinds = space.mixer_types()
    seen = []
    for step in range(len(kinds)):
        largest, smallest, *rest = sandwich_archs(space, rng, TrainConfig(num_random=2, rotate_mixers=True), step)
        assert largest == space.largest(kinds[step]) and smallest == space.smallest(kinds[step])
        assert len(rest) == 2 and all(space.contains(a) for a in rest)
        seen.append(largest.stages[0].mixer.type)
    assert seen == kinds == ["window_attn", "dwconv", "dyn_dwconv", "refiner", "dge"]
    fixed = sandwich_archs(space, rng, TrainConfig(), 3)
    assert fixed[0] == space.largest() and fixed[1] == space.smallest()


def test_fair_sampling_covers_every_mixer_of_every_stage_each_step() -> None:
    from mixnas.training import TrainConfig, sandwich_archs

    space = shipped_space(SPACES / "demo.yaml")
    rng = random.Random(0)
    for step in range(3):
        largest, smallest, *fair = sandwich_archs(space, rng, TrainConfig(fair=True), step)
        assert len(fair) == max(len(st.mixers) for st in space.stages) == 5
        for i, st in enumerate(space.stages):
            assert sorted(a.stages[i].mixer.type for a in fair) == sorted(m.type for m in st.mixers)
        assert all(space.contains(a) for a in fair)
    assert len({a.arch_id for a in fair}) == 5


def test_distillation_waits_for_a_teacher_above_chance() -> None:
    """Below the threshold every architecture learns from the labels (the loss is the label loss), above
    it the smaller ones learn from the teacher's soft predictions."""
    import torch.nn.functional as F

    from mixnas.training import SandwichLoss

    space = shipped_space(SPACES / "demo.yaml")
    torch.manual_seed(0)
    supernet = Supernet(space).eval()  # eval: the same logits on every call
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    archs = [space.largest(), space.smallest()]
    with torch.no_grad():
        teacher_acc = 100.0 * float((supernet(x, archs[0]).argmax(-1) == y).float().mean())
        student = supernet(x, archs[1])
        label_loss = F.cross_entropy(student, y)  # label smoothing 0 below
        soft_loss = -(F.softmax(supernet(x, archs[0]), -1) * F.log_softmax(student, -1)).sum(-1).mean()
        first = F.cross_entropy(supernet(x, archs[0]), y)
    gated = SandwichLoss(supernet, 0.0, True, 1.0, distill_min_teacher_acc=teacher_acc + 1)
    open_ = SandwichLoss(supernet, 0.0, True, 1.0, distill_min_teacher_acc=max(teacher_acc - 1, 0.001))
    with torch.no_grad():
        torch.testing.assert_close(gated(x, y, archs)[0], first + label_loss)
        torch.testing.assert_close(open_(x, y, archs)[0], first + soft_loss)
