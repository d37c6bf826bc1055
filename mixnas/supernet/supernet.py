"""The weight-sharing supernet: one MixerNet at the space's largest sizes that runs any of its
architectures, and hands out any of them as a standalone model with the shared weights copied in."""

from __future__ import annotations

from torch import Tensor, nn

from mixnas.errors import ConfigError
from mixnas.search_space import ArchConfig, SearchSpace
from mixnas.supernet.backbone import MixerNet, build_model
from mixnas.supernet.elastic import active_slice, weights_to_be_loaded


def owner_and_name(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    """The module holding state-dict entry ``key``, and the entry's local name."""
    path, _, name = key.rpartition(".")
    return (model.get_submodule(path) if path else model), name


class Supernet(MixerNet):
    """Every architecture of ``space`` in one network with shared weights.

    Each stage holds every candidate mixer and FFN of that stage; depth, widths, heads, MLP ratio,
    kernel and window sizes are elastic (channel slices; a smaller kernel is the centre of the larger).
    Norms, FFNs, patch merging, stem and head are shared by all mixers.

    Args:
        space: the search space.
    """

    def __init__(self, space: SearchSpace) -> None:
        super().__init__(space)
        self._checked: set[ArchConfig] = set()

    def check(self, arch: ArchConfig) -> None:
        """Raise ConfigError, naming the first field outside the space, unless ``arch`` is in it."""
        if arch in self._checked:
            return
        reason = self.space.why_not(arch)
        if reason is not None:
            raise ConfigError(f"architecture {arch.arch_id} is not in the search space: {reason}")
        self._checked.add(arch)

    def forward(self, x: Tensor, arch: ArchConfig | None = None) -> Tensor:
        """(B, C_in, H, W) images -> (B, num_classes) logits of architecture ``arch``."""
        if arch is None:
            raise ValueError("a supernet runs one architecture per call: supernet(x, arch)")
        self.check(arch)
        return super().forward(x, arch)

    def extract(self, arch: ArchConfig) -> MixerNet:
        """The standalone model of ``arch`` (``build_model(arch)``) with the supernet's weights for it.

        In eval mode its outputs equal ``self(x, arch)``; BatchNorm statistics are copied as they are
        (recalibrate them for the subnet before evaluating, see ``mixnas.supernet.training``).
        """
        self.check(arch)
        with weights_to_be_loaded():  # every parameter and persistent buffer is loaded below (strict)
            model = build_model(arch)
        shared = self.state_dict()
        state = {}
        for key, target in model.state_dict().items():
            owner, name = owner_and_name(self, key)
            if hasattr(owner, "active_state"):  # layers sliced by more than leading/centred parts (heads)
                tensor = owner.active_state(name, owner_and_name(model, key)[0])
            else:
                tensor = active_slice(shared[key], target.shape, getattr(owner, "centred", {}).get(name, ()))
            state[key] = tensor.detach().clone()
        model.load_state_dict(state)
        return model.train(self.training)
