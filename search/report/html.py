"""The self-contained HTML report: inline CSS and SVG, no scripts, no network.

Every string that comes from a user or a file (study, layer and recipe names, failure
reasons, environment) goes through `e()` (html.escape), so `<script>` renders as text.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from search.report import fmt
from search.report.data import LAYER_COLUMNS, Pick, ProfileData, ReportData, fusion_line, grouped_picks, read_fusion
from search.report.plots import line_svg, scatter_svg
from search.study.figures import figure_kind
from search.study.view import FrontRow

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2933;margin:0;background:#f5f7fa}
*{box-sizing:border-box}main{max-width:1240px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:34px 0 10px;border-bottom:2px solid #e4e7eb;
padding-bottom:4px}h3{font-size:15px;margin:18px 0 8px}
.sub{color:#52606d;margin:0 0 14px}
nav{display:flex;flex-wrap:wrap;gap:6px 14px;margin:10px 0 0;font-size:13px}nav a{color:#0b7285}
table{border-collapse:collapse;background:#fff;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #e4e7eb;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f4f8;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.front td:first-child{border-left:3px solid #d9480f}
.kv th{width:200px}.recipe{max-width:520px}
.cards{display:grid;gap:14px}
.card{background:#fff;border:1px solid #e4e7eb;border-radius:6px;padding:12px 14px;overflow-x:auto;
display:grid;grid-template-columns:minmax(300px,420px) 1fr;gap:0 24px}.card>.wide{grid-column:1/-1}
.card h3{margin-top:0}.figs{display:flex;flex-wrap:wrap;gap:6px 16px;margin:6px 0}
.figs span b{font-size:16px}
.plots{display:flex;flex-wrap:wrap;gap:10px}.plots svg{background:#fff;border:1px solid #e4e7eb;border-radius:4px}
pre{background:#f0f4f8;padding:8px;border-radius:4px;overflow:auto;max-height:260px;font-size:12px}
details summary{cursor:pointer;color:#0b7285}
.badge{display:inline-block;padding:0 6px;border-radius:9px;font-size:11px;background:#fff3bf;color:#5c3c00}
.ok{color:#2b8a3e}.bad{color:#c92a2a}.muted{color:#7b8794}
.legend{font-size:12px;color:#52606d}
"""
BIT_COLOURS = {"fp32": "#e4e7eb", "fp16": "#d0ebff", "bf16": "#d0ebff", "int8": "#b2f2bb", "int4": "#69db7c",
               "int2": "#2f9e44"}


def e(value: Any) -> str:
    return escape(str(value), quote=True)


Cell = str | tuple[str, str]  # escaped HTML, or (escaped HTML, an inline style for the cell)


def _td(cell: Cell, numeric: bool) -> str:
    html, style = cell if isinstance(cell, tuple) else (cell, "")
    attrs = (' class="n"' if numeric else "") + (f' style="{style}"' if style else "")
    return f"<td{attrs}>{html}</td>"


def _table(header: list[str], rows: list[list[Cell]], numeric: set[int] | None = None,
           row_classes: list[str] | None = None) -> str:
    """`rows` hold already-escaped HTML; `numeric` column indexes are right-aligned."""
    numeric = numeric or set()
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>{''.join(_td(c, j in numeric) for j, c in enumerate(row))}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv(pairs: list[tuple[str, str]]) -> str:
    return '<table class="kv">' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in pairs) + "</table>"


def _summary(d: ReportData) -> str:
    task = d.task or {}
    opts = ", ".join(f"{k}={v}" for k, v in (task.get("options") or {}).items())
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(d.counts.items())) or "none"
    failed = d.counts.get("FAIL", 0)  # PRUNED trials were rejected early: their own row says so
    pairs = [
        ("Task", e(f"{task.get('name', '?')} ({opts})" if opts else task.get("name", "?"))),
        ("Space", e(f"{d.space.get('space_name')} - {d.space.get('space_file')} (hash {d.space.get('space_hash')})")),
        ("Objectives", e(f"{d.quality_name} (max), p50 latency on {d.objective_profile} (min), bytes (min)")),
        ("Quality constraint", e(f"{d.quality_name} drop <= {d.max_quality_drop} against the fp32 baseline")),
        ("Hardware profiles", e(", ".join(d.profiles))),
        ("Trials", e(counts) + (f' <span class="bad">({failed} failed)</span>' if failed else "")),
        ("Time spent", e(f"{fmt.duration(d.compute_s)} in trials; {fmt.duration(d.wall_s)} from first start "
                         f"to last finish")),
    ]
    if d.rejection:
        pairs.append(("Early rejection", e(d.rejection)))
    pairs.append(("Environment", " &middot; ".join(f'<span class="muted">{e(k)}</span> {e(v)}'
                                                 for k, v in d.environment.items()) or "not recorded"))
    out = [_kv(pairs)]
    base_rows = []
    for prof in d.profiles.values():
        if prof.baseline:
            b = prof.baseline
            base_rows.append([e(prof.name), fmt.num(b.get("quality")),
                              fmt.num(b.get(prof.latency_key)) + e(fmt.kind_note(prof.kinds.get(prof.latency_key,
                                                                                                  ""))),
                              fmt.num(b.get("latency_p90_ms")), fmt.num(b.get("latency_p99_ms")),
                              e(fmt.size(b.get("bytes"))), e(fmt.size(b.get("bytes_compressed")))])
    if base_rows:
        out.append("<h3>Baseline (fp32, uncompressed)</h3>")
        out.append(_table(["profile", e(d.quality_name), "p50 ms", "p90 ms", "p99 ms", "bytes", "compressed"],
                          base_rows, {1, 2, 3, 4, 5, 6}))
    return "\n".join(out)


def _layer_table(d: ReportData, number: int) -> str:
    layers = d.layers.get(number) or {}
    if not layers:
        return '<p class="muted">No per-layer record (the trial\'s layers.json is missing).</p>'
    extra = sorted({k for info in layers.values() for k in info} - set(LAYER_COLUMNS) - {"node"})
    columns = [c for c in LAYER_COLUMNS if any(c in info for info in layers.values())] + extra
    kernels = d.trial(number).kernels.get(d.objective_profile, {})
    rows: list[list[Cell]] = []
    for name, info in layers.items():
        cells: list[Cell] = [f"<code>{e(name)}</code>"]
        for c in columns:
            value = info.get(c)
            style = ""  # a heatmap: the colour says what the layer became before the number is read
            if c == "bits" and value is not None:
                style = f"background:{BIT_COLOURS.get(str(value), '#fff3bf')}"
            elif c == "sparsity" and isinstance(value, (int, float)) and value > 0:
                style = f"background:rgba(217,72,15,{min(1.0, float(value)) * 0.55:.2f})"
            cells.append((e(fmt.cell(value)), style))
        cells.append(e(kernels.get(name, "-")))
        rows.append(cells)
    header = ["layer", *(e(c) for c in columns), "ran as"]  # `kernel` (layers.json) is the artifact's op
    return _table(header, rows)


def _pick_card(d: ReportData, group: list[Pick]) -> str:
    pick = group[0]
    if pick.trial is None:
        return f'<div class="card"><h3>{e(pick.title)}</h3><p class="muted">{e(pick.why_none)}</p></div>'
    title = " and ".join(p.title if i == 0 else p.title[0].lower() + p.title[1:] for i, p in enumerate(group))
    rule = "; ".join(p.rule for p in group)
    t = pick.trial
    prof = d.profiles[d.objective_profile]
    row = prof.row(t.number)
    assert row is not None  # a pick is a feasible trial of the objective profile
    figs = (f'<div class="figs"><span>{e(d.quality_name)} <b>{fmt.num(row.quality)}</b> '
            f'({fmt.signed(row.quality_change)})</span><span>p50 <b>{fmt.num(row.latency)} ms</b> '
            f'({fmt.ratio(row.x_faster)} faster)</span><span>size <b>{e(fmt.size(row.bytes))}</b> '
            f'({fmt.ratio(row.x_smaller)} smaller)</span>'
            + (f'<span>report split <b>{fmt.num(row.report["report_quality"])}</b> '
               f'({fmt.signed(None if row.report_drop is None else -row.report_drop)})</span>'
               if row.report else "")
            + f"{_report_flag(row)}</div>")
    return (f'<div class="card" id="pick-{t.number}"><h3 class="wide">{e(title)}: trial {t.number}</h3>'
            f'<div><p class="legend">{e(rule)}</p>{figs}<p class="recipe">{e(t.summary)}</p>'
            f'<p class="legend">graph fusion: {e(fusion_line(read_fusion(t)))}</p>'
            f"<details><summary>Full recipe (JSON)</summary><pre>{e(json.dumps(t.recipe, indent=2))}</pre>"
            f"</details></div><div><h3>What each layer became</h3>{_layer_table(d, t.number)}</div></div>")


def _caveats(row: FrontRow) -> str:
    return "".join(f' <span class="badge">{e(figure_kind(k))}: {e(k)} = {e(fmt.num(v))}</span>'
                   for k, v in row.caveats.items())


def _report_flag(row: FrontRow) -> str:
    if not row.breaks_on_report:
        return ""
    return (f' <span class="badge bad">report split: drop {e(fmt.signed(row.report_drop))} breaks the '
            f"constraint</span>")


def _front_table(d: ReportData, prof: ProfileData) -> str:
    lat_note = e(fmt.kind_note(prof.kinds.get(prof.latency_key, "")))
    header = ["trial", e(d.quality_name), "change", f"p50 ms{lat_note}", "p90 ms", "p99 ms", "bytes", "compressed",
              "x faster", "x smaller", "x smaller (compressed)", "recipe"]
    rows = []
    for r in prof.rows:
        rows.append([f'<a href="#trial-{r.trial}">{r.trial}</a>', fmt.num(r.quality),
                     fmt.signed(r.quality_change), fmt.num(r.latency_at("latency_p50")),
                     fmt.num(r.latency_at("latency_p90")), fmt.num(r.latency_at("latency_p99")),
                     e(fmt.size(r.bytes)), e(fmt.size(r.bytes_compressed)), fmt.ratio(r.x_faster),
                     fmt.ratio(r.x_smaller), fmt.ratio(r.x_smaller_compressed),
                     f'<span class="recipe">{e(r.recipe)}</span>{_caveats(r)}{_report_flag(r)}'])
    if not rows:
        return '<p class="muted">Empty: no completed trial satisfies the quality constraint.</p>'
    return _table(header, rows, set(range(1, 11)))


def _splits(d: ReportData) -> str:
    files = list(dict.fromkeys(f for r in d.splits for f in r.per_file))
    header = ["trial", f"selection {e(d.quality_name)}", "selection drop", f"report {e(d.quality_name)}",
              "report drop", *(f"drop {e(f)}" for f in files), "recipe"]
    rows: list[list[Cell]] = []
    for r in d.splits:
        flag = ' <span class="badge bad">breaks the constraint on the report split</span>' if r.breaks_on_report else ""
        rows.append([f'<a href="#trial-{r.trial}">{r.trial}</a>', fmt.num(r.selection_quality),
                     fmt.signed(r.selection_drop), fmt.num(r.report_quality),
                     (fmt.signed(r.report_drop), "color:#c92a2a;font-weight:600") if r.breaks_on_report
                     else fmt.signed(r.report_drop),
                     *(fmt.signed(r.per_file[f][1]) if f in r.per_file else "-" for f in files),
                     f'<span class="recipe">{e(r.recipe)}</span>{flag}'])
    return (f'<p class="legend">Drops against the baseline on {e(d.objective_profile)}. The selection split decided '
            f"everything (constraint: drop &le; {e(d.max_quality_drop)}); the report split was evaluated for the "
            f"final front only and chose nothing.</p>" + _table(header, rows, set(range(1, 5 + len(files)))))


def _profile_section(d: ReportData, prof: ProfileData) -> str:
    kinds = sorted(set(prof.kinds.values()))
    badge = "".join(f' <span class="badge">{e(k)} figures</span>' for k in kinds)
    pairs = [("latency", "quality"), ("bytes", "quality"), ("bytes", "latency")]
    plots = "".join(scatter_svg(prof, x, y, f"{prof.name}: {d.quality_name if y == 'quality' else 'latency'} vs "
                                         f"{'latency' if x == 'latency' else 'size'}", d.quality_name)
                    for x, y in pairs)
    objective = " (objective profile)" if prof.name == d.objective_profile else ""
    return (f'<h3 id="profile-{e(prof.name)}">{e(prof.name)}{e(objective)}{badge}</h3>'
            f'<div class="plots">{plots}</div>'
            f'<p class="legend"><span style="color:#d9480f">&#9679;</span> Pareto front (labelled by trial) '
            f'&nbsp;<span style="color:#8a94a6">&#9679;</span> dominated &nbsp;<span style="color:#c5cad3">'
            f'&#9675;</span> infeasible (quality drop over the limit; &#9661; below the axis) &nbsp;&#9632; '
            f'baseline. Hover a point for its figures.</p>{_front_table(d, prof)}')


def _cross_table(d: ReportData) -> str:
    header = ["trial", "recipe"]
    for name, prof in d.profiles.items():
        note = e(fmt.kind_note(prof.kinds.get(prof.latency_key, "")))
        header += [f"{e(name)}: {e(d.quality_name)}", f"{e(name)}: p50 ms{note}", f"{e(name)}: x faster",
                   f"{e(name)}: bytes"]
    rows, classes = [], []
    for number in d.cross:
        t = d.trial(number)
        row = [str(number), f'<span class="recipe">{e(t.summary)}</span>']
        on_any = False
        for prof in d.profiles.values():
            r = prof.row(number)
            mark = " &#9733;" if number in prof.front else ""
            on_any |= number in prof.front
            row += [fmt.num(r.quality) if r else "-", (fmt.num(r.latency) + mark) if r else "-",
                    fmt.ratio(r.x_faster if r else None), e(fmt.size(r.bytes)) if r else "-"]
        rows.append(row)
        classes.append("front" if on_any else "")
    numeric = set(range(2, len(header)))
    return (_table(header, rows, numeric, classes) + '<p class="legend">&#9733; on that profile\'s Pareto front. '
            'A ratio that falls towards 1.00x on one profile is where a choice stops paying off there.</p>')


def _progress(d: ReportData) -> str:
    out = [line_svg(d.hypervolume, "Hypervolume of the feasible trials so far", "trial", "hypervolume"),
           '<p class="legend">Objectives normalised to the range of all feasible trials; reference point 10% '
           'past the worst value. It rises when a trial extends the front.</p>']
    if d.failed:
        out.append("<h3>Trials that did not complete</h3>")
        out.append(_table(["trial", "state", "reason"], [[str(n), e(s), e(r)] for n, s, r in d.failed]))
    return "\n".join(out)


def _spread(d: ReportData) -> str:
    out = []
    if d.spread:
        rows = [[str(r.trial), e(r.profile), e(r.metric) + e(fmt.kind_note(_kind(d, r.profile, r.metric))),
                 fmt.num(r.value, 6), fmt.num(r.low, 6), fmt.num(r.high, 6),
                 f"&plusmn;{100 * (r.high - r.low) / 2 / r.value:.2g}%" if r.value else "-"] for r in d.spread]
        out.append("<p>Confidence intervals recorded with the measurements (Pareto trials):</p>")
        out.append(_table(["trial", "profile", "metric", "value", "CI low", "CI high", "half-width"], rows,
                          {3, 4, 5, 6}))
        out.append("<h3>Single-query latency spread</h3>")
    else:
        out.append('<p class="muted">No confidence intervals were recorded for these measurements; the spread '
                   "of single-query latencies is shown instead.</p>")
    rows = []
    for prof in d.profiles.values():
        for number in prof.front:
            m = d.trial(number).metrics.get(prof.name, {})
            rows.append([str(number), e(prof.name)] + [fmt.num(m.get(k)) for k in
                        ("latency_min_ms", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_max_ms",
                         "latency_queries")])
            rows[-1][-1] = fmt.num(m.get("latency_queries"), 9)
    out.append(_table(["trial", "profile", "min ms", "p50 ms", "p90 ms", "p99 ms", "max ms", "queries"], rows,
                      set(range(2, 8))))
    return "\n".join(out)


def _kind(d: ReportData, profile: str, metric: str) -> str:
    prof = d.profiles.get(profile)
    return prof.kinds.get(metric, "") if prof else ""


def _all_trials(d: ReportData) -> str:
    prof = d.profiles.get(d.objective_profile)
    rows, classes = [], []
    for t in d.trials:
        p = prof.point(t.number) if prof else None
        state = e(t.state.lower()) + ("" if t.feasible or t.state != "COMPLETE" else ' <span class="bad">'
                                      "infeasible</span>")
        rows.append([f'<span id="trial-{t.number}">{t.number}</span>', state,
                     fmt.num(p.quality) if p else "-", fmt.num(p.latency) if p else "-",
                     e(fmt.size(p.bytes)) if p else "-", fmt.num(t.duration_s, 3),
                     f'<span class="recipe">{e(t.summary or t.failure_reason or "")}</span>'])
        classes.append("front" if p and p.pareto else "")
    return _table(["trial", "state", e(d.quality_name), "p50 ms", "bytes", "seconds", "recipe"], rows,
                  {2, 3, 4, 5}, classes)


def _sensitivity(d: ReportData) -> str:
    from search.report.sensitivity import most_sensitive, sensitivity_svg

    table = d.sensitivity or {}
    lowest = (table.get("bits") or ["?"])[-1]
    top = ", ".join(f"{e(name)} ({value:.2g})" for name, value in most_sensitive(table, lowest))
    return (f"<p>How much the model's output moves when one layer alone goes to each lower bit-width: "
            f"{e(table.get('metric', ''))}, on {e(table.get('inputs', '?'))} calibration inputs (a proxy for "
            f"ranking layers, not a measured quality). Most sensitive at {e(lowest)}: {top}. With "
            f"<code>assign: sensitivity</code> the search keeps the most sensitive layers at higher precision.</p>"
            f"{sensitivity_svg(table)}")


def render_html(d: ReportData, command: str) -> str:
    sections = [("summary", "Summary", _summary(d)),
                ("picks", "Recommended picks",
                 '<div class="cards">' + "".join(_pick_card(d, g) for g in grouped_picks(d.picks)) + "</div>"),
                ("fronts", "Pareto fronts per hardware profile",
                 "".join(_profile_section(d, p) for p in d.profiles.values())),
                *([("splits", "Selection split vs report split", _splits(d))] if d.splits else []),
                *([("sensitivity", "Per-layer sensitivity", _sensitivity(d))] if d.sensitivity else []),
                ("cross", "Cross-hardware comparison", _cross_table(d)),
                ("progress", "Search progress", _progress(d)),
                ("spread", "Measurement spread", _spread(d)),
                ("trials", "All trials", _all_trials(d))]
    kinds = sorted({k for p in d.profiles.values() for k in p.kinds.values()})
    note = (f'<p><span class="badge">note</span> Some figures are {e(" or ".join(kinds))}, not measured; they are '
            f"labelled wherever they appear.</p>") if kinds else ""
    nav = "".join(f'<a href="#{sid}">{title}</a>' for sid, title, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{title}</h2>{html}</section>' for sid, title, html in sections)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Compression search report: {e(d.name)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>Compression search report: {e(d.name)}</h1>"
            f'<p class="sub">{e(d.task.get("name", ""))} &middot; objective profile {e(d.objective_profile)} '
            f"&middot; regenerate with <code>{e(command)}</code></p>{note}<nav>{nav}</nav>{body}"
            f"</main></body></html>\n")
