"""Reading a study and telling others about it.

Here: the view of the storage (what `show --json` prints) and its front with ratios against the
baseline (`StudyView.front`, the one place they are computed). Beside it, imported by path so that
reading a study loads no more than it needs: `tracking` (MLflow), `progress` (the terminal),
`status` (`compsearch status`) and `remeasure` (the end-of-study re-timing of the front)."""

from search.study.figures import figure_kind, find_key
from search.study.pareto import dominates, pareto_front
from search.study.view import CONSTRAINT_KEY, DIRECTIONS, OBJECTIVES, FrontRow, StudyView, TrialView

__all__ = ["CONSTRAINT_KEY", "DIRECTIONS", "OBJECTIVES", "FrontRow", "StudyView", "TrialView", "dominates",
           "figure_kind", "find_key", "pareto_front"]
