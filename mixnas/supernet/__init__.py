"""The mixers and FFNs, the standalone model built from an ArchConfig, and the weight-sharing supernet."""

from mixnas.supernet.backbone import MixerNet, build_model
from mixnas.supernet.supernet import Supernet

__all__ = ["MixerNet", "Supernet", "build_model"]
