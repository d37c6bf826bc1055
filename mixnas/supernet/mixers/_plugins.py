"""Mixers from other packages: every installed entry point of the ``mixnas.mixers`` group.

A plug-in package declares, in its pyproject.toml::

    [project.entry-points."mixnas.mixers"]
    pool = "mixnas_pool_mixer:PoolSpec"

The entry point names a ``MixerSpec`` subclass or instance (by convention the entry point's name is the
spec's ``name``); mixnas registers it as it registers its own mixers, so a configuration, a space, the
supernet, the cost and latency tables, export and the pages take it as they take a built-in. The spec's
``build`` returns the elastic module (``MixerSpec.build``): ``forward(x, ctx)`` maps (B, H, W, C) tokens
to (B, H, W, C); built once at the largest sizes, it runs any smaller configuration of the space (the
width is ``x.shape[-1]``, the parameters ``ctx.mixer``'s), and the standalone network ``Supernet.extract``
builds at exact size takes each of its weights as the leading slice of the supernet's (a ``centred`` map
or an ``active_state`` method where it slices otherwise). README "Your own mixer" spells it out;
tests/test_mixer_contract.py holds every registered mixer to it.

``import mixnas`` loads the plug-ins last, once the built-ins and every public name are in place, so a
plug-in's module may import any of them, and every mixnas process knows the plug-ins: the CLI, Ray
workers, torchrun ranks. A plug-in whose own module was imported first (and so imported mixnas before its
spec existed) registers at the registry's next lookup.

A plug-in that fails to load (an import error, an object that is not a spec, a name ``register_mixer``
refuses) costs one warning line naming the entry point and the error, and mixnas goes on without it. A
plug-in whose mixer name is a built-in's, or one an earlier plug-in took, is refused with one line: a
plug-in never replaces a mixer that configurations already mean.
"""

from __future__ import annotations

import functools
import logging
import sys
from importlib.metadata import EntryPoint, entry_points

from mixnas.search_space import MixerSpec, get_mixer, mixer_names, register_mixer
from mixnas.search_space.registry import defer_registration

ENTRY_POINT_GROUP = "mixnas.mixers"

logger = logging.getLogger(__name__)
_PLUGINS: dict[str, str] = {}  # mixer name -> the entry point that registered it


def plugin_mixers() -> dict[str, str]:
    """The mixers registered from entry points: mixer name -> ``'name = module:attr'`` of the entry point."""
    registered = set(mixer_names())
    return {name: ep for name, ep in _PLUGINS.items() if name in registered}


def _describe(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    source = f" (from {dist.name} {dist.version})" if dist is not None else ""
    return f"'{ep.name} = {ep.value}'{source}"


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def is_builtin(name: str) -> bool:
    """Whether mixer ``name`` is one of mixnas's own (its spec is defined inside mixnas)."""
    return type(get_mixer(name)).__module__.partition(".")[0] == "mixnas"


def _load(ep: EntryPoint) -> bool:
    """Register the spec ``ep`` names; warns in one line and registers nothing when that fails. False (not
    yet tried) while the plug-in's own module is being imported: it imported mixnas first, and its spec
    is defined only once mixnas is in place."""
    module = sys.modules.get(ep.module)
    if module is not None and getattr(getattr(module, "__spec__", None), "_initializing", False):
        return False
    where = f"mixnas: mixer plug-in {_describe(ep)}"
    try:
        obj = ep.load()
        if not (isinstance(obj, MixerSpec) or (isinstance(obj, type) and issubclass(obj, MixerSpec))):
            raise TypeError(f"{ep.value} is {obj!r}, not a MixerSpec subclass or instance")
        instance = obj() if isinstance(obj, type) else obj
        name = instance.name
        if name in mixer_names():
            if is_builtin(name):
                logger.warning(f"{where} refused: {name!r} is a built-in mixer; give the plug-in's mixer another "
                               "name")
                return True
            if type(get_mixer(name)) is type(instance):  # the plug-in registered itself on import, or loaded twice
                _PLUGINS.setdefault(name, f"{ep.name} = {ep.value}")
                return True
            taken = _PLUGINS.get(name, "code that ran before the plug-ins")
            logger.warning(f"{where} refused: mixer {name!r} is already registered (by {taken})")
            return True
        register_mixer(instance)
    except Exception as e:  # any failure of someone else's package must leave mixnas working
        logger.warning(f"{where} not loaded: {_one_line(e)}")
        return True
    _PLUGINS[name] = f"{ep.name} = {ep.value}"
    return True


def load_plugins(group: str = ENTRY_POINT_GROUP) -> dict[str, str]:
    """Register the mixer of every installed entry point of ``group`` (module docstring); call it after
    the built-ins are registered. Safe to call again: a plug-in already registered is kept as it is.

    Returns:
        mixer name -> entry point, for every plug-in mixer registered so far.
    """
    for ep in sorted(entry_points(group=group), key=lambda e: (e.name, e.value)):
        if not _load(ep):
            defer_registration(functools.partial(_load, ep))
    return plugin_mixers()
