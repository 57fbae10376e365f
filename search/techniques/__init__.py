"""Compression techniques, each a config dataclass plus the function that applies it."""

from search.techniques import distill, factorize, prune, quantize, share, transformer_prune
from search.techniques.base import ORDER, Technique

TECHNIQUES: dict[str, Technique] = {t.name: t for t in (factorize.TECHNIQUE, prune.TECHNIQUE, distill.TECHNIQUE,
                                                         quantize.TECHNIQUE, transformer_prune.TECHNIQUE,
                                                         share.TECHNIQUE)}
# Names from the design's pipeline that are not built yet: the loader says so instead of
# pretending they are unknown.
PLANNED = tuple(name for name in ORDER if name not in TECHNIQUES)

__all__ = ["ORDER", "PLANNED", "TECHNIQUES", "Technique"]
