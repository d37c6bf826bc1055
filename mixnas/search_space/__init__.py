"""Architectures (ArchConfig, the export format), search spaces (SearchSpace) and the mixer registry."""

from mixnas.errors import ConfigError
from mixnas.search_space.arch import FFN_TYPES, ArchConfig, FFNConfig, MixerConfig, StageConfig
from mixnas.search_space.preprocessing import Preprocessing
from mixnas.search_space.registry import (
    BoolParam,
    FloatParam,
    IntParam,
    MixerSpec,
    Param,
    SetParam,
    get_mixer,
    mixer_names,
    register_mixer,
    unregister_mixer,
)
from mixnas.search_space.space import MixerChoices, SearchSpace, StageChoices

__all__ = [
    "FFN_TYPES", "ArchConfig", "BoolParam", "ConfigError", "FFNConfig", "FloatParam", "IntParam", "MixerChoices",
    "MixerConfig", "MixerSpec", "Param", "Preprocessing",
    "SearchSpace", "SetParam", "StageChoices", "StageConfig", "get_mixer",
    "mixer_names", "register_mixer", "unregister_mixer",
]
