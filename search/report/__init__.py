"""`compsearch report` (a study as a self-contained HTML page, a Markdown file and CSV tables) and
`compsearch export` (one trial's artifact and its model card, `card.py`).

Everything comes from the storage through StudyView (what `compsearch show --json` prints)
plus each picked trial's layers.json, so a report can be made on any machine that sees the
storage and the results directory.
"""

from __future__ import annotations

from pathlib import Path

from search.report.card import export_trial
from search.report.data import ReportData, build_report
from search.report.html import render_html
from search.report.markdown import render_markdown, write_csvs
from search.study.view import StudyView

__all__ = ["ReportData", "build_report", "default_out_dir", "export_trial", "write_report"]


def default_out_dir(results_dir: Path, study: str) -> Path:
    """RESULTS_DIR/reports/FOLDER, FOLDER a safe name for the study (search/study_paths.py)."""
    from search.study_paths import inside, study_folder

    return inside(results_dir, results_dir / "reports" / study_folder(study))


def write_report(view: StudyView, out_dir: Path, latency_budget_ms: float | None = None,
                 command: str = "") -> dict[str, Path]:
    """Write report.html, report.md, trials.csv and front.csv into `out_dir`; returns their paths."""
    data = build_report(view, latency_budget_ms)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = command or f"compsearch report {view.name}"
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    html_path.write_text(render_html(data, command), encoding="utf-8")
    md_path.write_text(render_markdown(data, command), encoding="utf-8")
    trials_csv, front_csv = write_csvs(data, out_dir)
    return {"html": html_path, "markdown": md_path, "trials_csv": trials_csv, "front_csv": front_csv}
