"""Architectures (ArchConfig, the export format) and search spaces (SearchSpace)."""

from mixnas.search_space.arch import (
    FFN_TYPES,
    MIXER_PARAMS,
    MIXER_TYPES,
    ArchConfig,
    FFNConfig,
    MixerConfig,
    StageConfig,
)
from mixnas.search_space.errors import ConfigError
from mixnas.search_space.space import MixerChoices, SearchSpace, StageChoices

__all__ = [
    "ArchConfig", "ConfigError", "FFNConfig", "FFN_TYPES", "MIXER_PARAMS", "MIXER_TYPES", "MixerChoices",
    "MixerConfig", "SearchSpace", "StageChoices", "StageConfig",
]
