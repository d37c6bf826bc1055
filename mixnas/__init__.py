"""mixnas: neural architecture search over token mixers for vision backbones.

Public surface: ``ArchConfig`` (one architecture), ``SearchSpace`` (choices per stage), ``Supernet``
(weight sharing over a space) and ``build_model`` (the standalone network of one architecture).
Importing mixnas also registers ``timm.create_model("mixnas", arch="arch.yaml")``.
"""

from mixnas.search_space import ArchConfig, ConfigError, SearchSpace
from mixnas.supernet import MixerNet, Supernet, build_model
from mixnas.supernet import timm_model as _timm_model  # noqa: F401  (registers the timm entry point)

__version__ = "0.1.0"

__all__ = ["ArchConfig", "ConfigError", "MixerNet", "SearchSpace", "Supernet", "build_model", "__version__"]
