"""The Markdown report and the CSV tables: the same figures as the HTML, for diffs and spreadsheets.

Markdown viewers render inline HTML, so in user strings whatever could open a tag (`<` before a
letter, `/`, `!` or `?`) or an entity is escaped, and `|` so a name cannot break a table; the rest
stays as typed, so a raw report.md reads `drop <= 0.05`, not `&lt;=`.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from search.report import fmt
from search.report.data import LAYER_COLUMNS, ReportData, grouped_picks
from search.study.figures import figure_kind

_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")  # only these can open HTML; `<=` or `< 5` read as is
_ENTITY = re.compile(r"&(?=#?\w+;)")  # only these would be read as an entity


def m(value: Any) -> str:
    text = _ENTITY.sub("&amp;", str(value))
    return _TAG_START.sub("&lt;", text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out + [""]


def render_markdown(d: ReportData, command: str) -> str:
    task = d.task or {}
    opts = ", ".join(f"{k}={v}" for k, v in (task.get("options") or {}).items())
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(d.counts.items())) or "none"
    lines = [f"# Compression search report: {m(d.name)}", "", f"Regenerate with: {m(command)}", "", "## Summary", "",
             f"- task: {m(task.get('name', '?'))} ({m(opts)})",
             f"- space: {m(d.space.get('space_name'))}, {m(d.space.get('space_file'))} "
             f"(hash {m(d.space.get('space_hash'))})",
             f"- objectives: {m(d.quality_name)} (max), p50 latency on {m(d.objective_profile)} (min), bytes (min)",
             f"- quality constraint: {m(d.quality_name)} drop <= {d.max_quality_drop} against the fp32 baseline",
             f"- trials: {m(counts)}",
             f"- time spent: {fmt.duration(d.compute_s)} in trials, {fmt.duration(d.wall_s)} wall"]
    if d.rejection:
        lines.append(f"- {m(d.rejection)}")
    lines.append("- environment: " + (", ".join(f"{m(k)} {m(v)}" for k, v in d.environment.items()) or "not recorded"))
    kinds = sorted({k for p in d.profiles.values() for k in p.kinds.values()})
    if kinds:
        lines.append(f"- note: some figures are {' or '.join(kinds)}, not measured; they are labelled")
    lines.append("")
    rows = [[m(p.name), fmt.num(p.baseline.get("quality")), fmt.num(p.baseline.get(p.latency_key))
             + fmt.kind_note(p.kinds.get(p.latency_key, "")), fmt.size(p.baseline.get("bytes")),
             fmt.size(p.baseline.get("bytes_compressed"))] for p in d.profiles.values() if p.baseline]
    if rows:
        lines += ["### Baseline", ""] + _table(["profile", m(d.quality_name), "p50 ms", "bytes", "compressed"], rows)

    lines += ["## Recommended picks", ""]
    for group in grouped_picks(d.picks):
        pick = group[0]
        if pick.trial is None:
            lines += [f"### {m(pick.title)}", "", f"None: {m(pick.why_none)}.", ""]
            continue
        t = pick.trial
        title = " and ".join(p.title if i == 0 else p.title[0].lower() + p.title[1:] for i, p in enumerate(group))
        lines += [f"### {m(title)}: trial {t.number}", "", f"Rule: {m('; '.join(p.rule for p in group))}.", "",
                  f"Recipe: {m(t.summary)}", "", "```json", json.dumps(t.recipe, indent=2), "```", ""]
        layers = d.layers.get(t.number) or {}
        if layers:
            columns = [c for c in LAYER_COLUMNS if any(c in info for info in layers.values())]
            lines += _table(["layer", *columns], [[m(name), *(m(fmt.cell(info.get(c))) for c in columns)]
                                                  for name, info in layers.items()])

    lines += ["## Pareto fronts per hardware profile", ""]
    for p in d.profiles.values():
        note = fmt.kind_note(p.kinds.get(p.latency_key, ""))
        lines += [f"### {m(p.name)}", ""]
        rows = [[str(r.trial), fmt.num(r.quality), fmt.signed(r.quality_change),
                 fmt.num(r.latency_at("latency_p50")), fmt.num(r.latency_at("latency_p90")),
                 fmt.num(r.latency_at("latency_p99")), fmt.size(r.bytes), fmt.size(r.bytes_compressed),
                 fmt.ratio(r.x_faster), fmt.ratio(r.x_smaller), fmt.ratio(r.x_smaller_compressed),
                 m(r.recipe) + "".join(f" ({figure_kind(k)}: {m(k)} = {fmt.num(v)})" for k, v in r.caveats.items())
                 + (f" **(report split: drop {fmt.signed(r.report_drop)} breaks the constraint)**"
                    if r.breaks_on_report else "")]
                for r in p.rows]
        lines += _table(["trial", m(d.quality_name), "change", f"p50 ms{note}", "p90 ms", "p99 ms", "bytes",
                         "compressed", "x faster", "x smaller", "x smaller (compressed)", "recipe"], rows)

    if d.splits:
        lines += ["## Selection split vs report split", "",
                  f"Drops against the baseline on {m(d.objective_profile)}. The selection split decided everything "
                  f"(constraint: drop <= {d.max_quality_drop}); the report split was evaluated for this front only. "
                  "**BREAKS** marks a point whose report-split drop exceeds the allowed drop.", ""]
        files = list(dict.fromkeys(f for r in d.splits for f in r.per_file))
        rows = [[str(r.trial), fmt.num(r.selection_quality), fmt.signed(r.selection_drop),
                 fmt.num(r.report_quality), fmt.signed(r.report_drop), "**BREAKS**" if r.breaks_on_report else "",
                 *(fmt.signed(r.per_file[f][1]) if f in r.per_file else "-" for f in files), m(r.recipe)]
                for r in d.splits]
        lines += _table(["trial", f"selection {m(d.quality_name)}", "selection drop", f"report {m(d.quality_name)}",
                         "report drop", "flag", *(f"drop {m(f)}" for f in files), "recipe"], rows)

    lines += ["## Cross-hardware comparison", "", "`*` marks a point on that profile's front.", ""]
    header = ["trial"] + [f"{m(n)}: {h}" for n in d.profiles for h in (m(d.quality_name), "p50 ms", "x faster")]
    rows = []
    for number in d.cross:
        row = [str(number)]
        for p in d.profiles.values():
            r = p.row(number)
            row += [fmt.num(r.quality) if r else "-",
                    (fmt.num(r.latency) + (" *" if number in p.front else "")) if r else "-",
                    fmt.ratio(r.x_faster if r else None)]
        rows.append(row)
    lines += _table(header, rows)

    lines += ["## Search progress", "", "Hypervolume of the feasible trials so far (normalised objectives):", ""]
    lines += _table(["trial", "hypervolume"], [[str(n), f"{v:.4f}"] for n, v in d.hypervolume])
    if d.failed:
        lines += _table(["trial", "state", "reason"], [[str(n), m(s), m(r)] for n, s, r in d.failed])
    lines += ["## Measurement spread", ""]
    if d.spread:
        lines += _table(["trial", "profile", "metric", "value", "CI low", "CI high"],
                        [[str(r.trial), m(r.profile), m(r.metric), fmt.num(r.value), fmt.num(r.low),
                          fmt.num(r.high)] for r in d.spread])
    else:
        lines += ["No confidence intervals were recorded; see p50/p90/p99 above.", ""]
    return "\n".join(lines)


def write_csvs(d: ReportData, out_dir: Path) -> list[Path]:
    """trials.csv (every trial, every profile's metrics) and front.csv (each profile's front with ratios)."""
    metric_names = {p: sorted({k for t in d.trials for k in t.metrics.get(p, {})}) for p in d.profiles}
    header = ["trial", "state", "baseline", "feasible", "quality_drop", "duration_s", "recipe_hash", "recipe",
              "failure_reason"]
    header += [f"{p}.pareto" for p in d.profiles]
    header += [f"{p}.{k}" for p, names in metric_names.items() for k in names]
    trials_path = out_dir / "trials.csv"
    with trials_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for t in d.trials:
            row: list[Any] = [t.number, t.state, t.baseline, t.feasible, t.quality_drop, t.duration_s,
                              t.recipe_hash, t.summary, t.failure_reason or ""]
            row += [t.number in p.front for p in d.profiles.values()]
            row += [t.metrics.get(p, {}).get(k, "") for p, names in metric_names.items() for k in names]
            w.writerow(row)
    front_path = out_dir / "front.csv"
    columns = ["trial", "quality", "quality_change", "latency_p50", "latency_p90", "latency_p99", "bytes",
               "bytes_compressed", "x_faster", "x_smaller", "x_smaller_compressed", "recipe"]
    with front_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["profile", "latency_metric", *columns])
        for p in d.profiles.values():
            for r in p.rows:
                w.writerow([p.name, p.latency_key, *(r.as_dict()[c] for c in columns)])
    return [trials_path, front_path]
