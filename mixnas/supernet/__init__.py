"""The mixers and FFNs, the standalone model built from an ArchConfig, and the weight-sharing supernet.

Importing it registers the built-in mixers (``mixnas.supernet.mixers``).
"""

from mixnas.supernet.backbone import MixerNet, build_model, dynamic_block_names
from mixnas.supernet.mixers import BlockParts, DynamicCost, MixerContext, budget_loss
from mixnas.supernet.supernet import Supernet

__all__ = ["BlockParts", "DynamicCost", "MixerContext", "MixerNet", "Supernet", "budget_loss", "build_model",
           "dynamic_block_names"]
