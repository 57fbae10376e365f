"""compsearch: search combined model-compression recipes, measured on real inference backends.

Entry points: `search.cli` (the `compsearch` command), `search.space.load_space`, `search.recipe.Recipe`,
`search.compress` (the stage runner), `search.techniques` (the Technique contract and registry),
`search.tasks` (Task and the built-in tasks), `search.study` (reading a study), `search.report`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
