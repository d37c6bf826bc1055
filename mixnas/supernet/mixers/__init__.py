"""The token mixers, one module each (its spec, parameters, checks, limits and elastic module).

Importing this package registers the built-in mixers, in the order the pages and defaults list them.
A new mixer is a module here plus one line below, a ``register_mixer`` call in your own code, or a
package of its own with a ``mixnas.mixers`` entry point (``_plugins.py``), which ``import mixnas`` loads
once the built-ins and the rest of mixnas are in place.
"""

from mixnas.search_space import register_mixer
from mixnas.supernet.mixers._api import (
    BlockParts,
    DynamicCost,
    ExportForm,
    MixerContext,
    budget_loss,
    export_form_of,
)
from mixnas.supernet.mixers._plugins import ENTRY_POINT_GROUP, is_builtin, load_plugins, plugin_mixers
from mixnas.supernet.mixers.dge import DGESpec, DynamicGrainedEncoder
from mixnas.supernet.mixers.dwconv import DWConvMixer, DWConvSpec
from mixnas.supernet.mixers.dyn_dwconv import DynamicDWConvMixer, DynamicDWConvSpec
from mixnas.supernet.mixers.refiner import RefinerAttention, RefinerSpec
from mixnas.supernet.mixers.window_attn import WindowAttention, WindowAttentionSpec

for _spec in (WindowAttentionSpec, DWConvSpec, DynamicDWConvSpec, RefinerSpec, DGESpec):
    register_mixer(_spec, replace=True)

__all__ = [
    "BlockParts", "DGESpec", "DWConvMixer", "DWConvSpec", "DynamicCost", "DynamicDWConvMixer", "DynamicDWConvSpec",
    "DynamicGrainedEncoder", "MixerContext", "RefinerAttention", "RefinerSpec", "WindowAttention",
    "ExportForm", "WindowAttentionSpec", "budget_loss", "export_form_of",
    "ENTRY_POINT_GROUP", "is_builtin", "load_plugins", "plugin_mixers",
]
