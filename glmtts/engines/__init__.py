"""Engine registry: an explicit name -> class table, plus ``package.module:Class``
plug-ins loaded by import path (tests use plug-ins for slow or faulty engines;
production code carries no fault hooks)."""

import importlib

from ..errors import ConfigError
from .base import Engine, PromptFeatures, SynthesisRequest, SynthesisResult

# name -> "module:Class", imported lazily so `glmtts engines` does not import torch
BUILTIN = {
    "espeak": "glmtts.engines.espeak:EspeakEngine",
    "glmtts": "glmtts.engines.glmtts_adapter:GlmTtsEngine",
}


def resolve(name):
    """Return the engine class for a registry name or an import path."""
    target = BUILTIN.get(name, name)
    if ":" not in target:
        raise ConfigError("unknown engine %r; allowed: %s or package.module:Class" % (name, ", ".join(BUILTIN)))
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError("engine %r: cannot import %s: %s" % (name, module_name, e)) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError("engine %r: %s has no attribute %s" % (name, module_name, class_name))
    return cls


def create(settings):
    """Construct (not load) the configured engine."""
    return resolve(settings.engine.name)(settings)


__all__ = ["Engine", "PromptFeatures", "SynthesisRequest", "SynthesisResult", "BUILTIN", "resolve", "create"]
