"""mixnas: neural architecture search over token mixers for vision backbones.

Public surface: ``ArchConfig`` (one architecture), ``SearchSpace`` (choices per stage), ``Supernet``
(weight sharing over a space), ``build_model`` (the standalone network of one architecture), the mixer
registry (``register_mixer``, ``MixerSpec``) and the errors (``MixnasError`` and its subclasses).
Importing mixnas registers the built-in mixers and ``timm.create_model("mixnas", arch="arch.yaml")``, then
the mixers of installed plug-in packages (the ``mixnas.mixers`` entry points, ``mixnas.supernet.mixers``).
"""

from mixnas.errors import CheckpointError, ConfigError, DataError, MixnasError, ResultsError
from mixnas.search_space import ArchConfig, MixerSpec, SearchSpace, get_mixer, mixer_names, register_mixer
from mixnas.supernet import MixerNet, Supernet, build_model
from mixnas.supernet import timm_model as _timm_model  # noqa: F401  (registers the timm entry point)
from mixnas.supernet.mixers import load_plugins as _load_plugins

__version__ = "0.1.0"

# Last, so that a plug-in's module may import any public name of mixnas (mixnas.supernet's included).
_load_plugins()

__all__ = [
    "ArchConfig", "CheckpointError", "ConfigError", "DataError", "MixerNet", "MixerSpec", "MixnasError",
    "ResultsError", "SearchSpace", "Supernet", "__version__", "build_model", "get_mixer", "mixer_names",
    "register_mixer",
]
