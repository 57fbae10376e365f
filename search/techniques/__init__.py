"""Compression techniques: one module each, registered for its config class.

Importing this package imports every module in it, so a technique registers itself by being
here (see `base.Technique` for the contract and README "Adding a technique"). The registry is
the only list of techniques and holds both stage orders.
"""

import importlib
import pkgutil

from search.techniques.base import (
    Anchor,
    CompressionState,
    FrozenMap,
    SampleContext,
    Technique,
    TechniqueConfig,
    TechniqueSpace,
)
from search.techniques.registry import REGISTRY, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "Anchor", "CompressionState", "FrozenMap", "SampleContext", "Technique", "TechniqueConfig",
           "TechniqueSpace", "register"]
