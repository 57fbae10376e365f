"""compsearch: search combined model-compression recipes, measured on real inference backends."""

__version__ = "0.1.0"
