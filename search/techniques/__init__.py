"""Compression techniques, each a config dataclass plus the function that applies it."""

from search.techniques import distill, prune, quantize
from search.techniques.base import ORDER, Technique

TECHNIQUES: dict[str, Technique] = {t.name: t for t in (prune.TECHNIQUE, distill.TECHNIQUE, quantize.TECHNIQUE)}
# Names from the design's pipeline that are not built yet: the loader says so instead of
# pretending they are unknown.
PLANNED = tuple(name for name in ORDER if name not in TECHNIQUES)

__all__ = ["ORDER", "PLANNED", "TECHNIQUES", "Technique"]
