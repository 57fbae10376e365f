"""Inline SVG plots: no JavaScript, no network, every label escaped.

Hovering a point shows its trial and figures (an SVG <title>), which works in any browser
and in MLflow's artifact viewer.
"""

from __future__ import annotations

import math
from html import escape

from search.report.data import Point, ProfileData
from search.units import format_bytes

W, H = 380, 270
LEFT, RIGHT, TOP, BOTTOM = 62, 14, 30, 42
ACCENT, MUTED, BAD = "#d9480f", "#8a94a6", "#c5cad3"
AXES = {"quality": "quality", "latency": "p50 latency (ms)", "bytes": "artifact size"}


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def axis_ticks(lo: float, hi: float, axis: str) -> list[float]:
    """Round ticks; for sizes, round in the unit the axis is labelled in (KiB, MiB), not in bytes."""
    if axis != "bytes":
        return nice_ticks(lo, hi)
    unit = next((u for u in (1024**3, 1024**2, 1024) if max(abs(lo), abs(hi)) >= u), 1)
    return [t * unit for t in nice_ticks(lo / unit, hi / unit)]


def _fmt(value: float, axis: str) -> str:
    if axis == "bytes":
        return format_bytes(value)
    if axis == "trial":
        return f"{value:.0f}"
    return f"{value:.4g}"


def _range(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 1.0
    return lo - pad, hi + pad


def _frame(title: str, x_label: str, y_label: str, xs: tuple[float, float], ys: tuple[float, float],
           x_axis: str, y_axis: str) -> list[str]:
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
           f'role="img" aria-label="{escape(title)}" font-family="system-ui, sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="#fff"/>',
           f'<text x="{LEFT}" y="18" font-size="12" font-weight="600" fill="#1f2933">{escape(title)}</text>']
    x0, x1, y0, y1 = LEFT, W - RIGHT, H - BOTTOM, TOP
    for t in axis_ticks(*xs, x_axis):
        x = x0 + (t - xs[0]) / (xs[1] - xs[0]) * (x1 - x0)
        out.append(f'<line x1="{x:.1f}" y1="{y1}" x2="{x:.1f}" y2="{y0}" stroke="#eef0f3"/>')
        out.append(f'<text x="{x:.1f}" y="{y0 + 14}" text-anchor="middle" fill="#52606d">'
                   f'{escape(_fmt(t, x_axis))}</text>')
    for t in axis_ticks(*ys, y_axis):
        y = y0 - (t - ys[0]) / (ys[1] - ys[0]) * (y0 - y1)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#eef0f3"/>')
        out.append(f'<text x="{x0 - 4}" y="{y + 3:.1f}" text-anchor="end" fill="#52606d">'
                   f'{escape(_fmt(t, y_axis))}</text>')
    out.append(f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="none" stroke="#9aa5b1"/>')
    out.append(f'<text x="{(x0 + x1) / 2}" y="{H - 8}" text-anchor="middle" fill="#323f4b">{escape(x_label)}</text>')
    out.append(f'<text transform="translate(12 {(y0 + y1) / 2}) rotate(-90)" text-anchor="middle" '
               f'fill="#323f4b">{escape(y_label)}</text>')
    return out


def _value(p: Point, axis: str) -> float | None:
    v = getattr(p, axis)
    return v if v is not None and math.isfinite(v) else None


def scatter_svg(profile: ProfileData, x_axis: str, y_axis: str, title: str, quality_name: str = "quality") -> str:
    """All completed trials of one profile; the profile's front highlighted and labelled by trial number."""
    pts = [p for p in profile.points if _value(p, x_axis) is not None and _value(p, y_axis) is not None]
    labels = {a: (quality_name if a == "quality" else AXES[a]) for a in (x_axis, y_axis)}
    if profile.kinds.get(profile.latency_key):
        labels = {a: lab + (f" ({profile.kinds[profile.latency_key]})" if a == "latency" else "")
                  for a, lab in labels.items()}
    if not pts:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} 60" width="{W}" height="60">'
                f'<text x="10" y="30" font-family="sans-serif" font-size="12">{escape(title)}: no data</text></svg>')
    x_vals = [_value(p, x_axis) for p in pts]
    if x_axis == "latency":
        x_vals += [v for p in pts if p.latency_ci for v in p.latency_ci]
    y_vals = [_value(p, y_axis) for p in pts]
    if y_axis == "quality" and any(p.feasible for p in pts):
        # A collapsed candidate (accuracy 0.1) would squash the front into one line: scale the axis to the
        # feasible trials and pin the infeasible ones below it to the bottom edge (their value is in the tooltip).
        y_vals = [_value(p, y_axis) for p in pts if p.feasible]
    xs, ys = _range(x_vals), _range(y_vals)  # type: ignore[arg-type]
    out = _frame(title, labels[x_axis], labels[y_axis], xs, ys, x_axis, y_axis)

    def pos(p: Point) -> tuple[float, float, bool]:
        x = LEFT + (_value(p, x_axis) - xs[0]) / (xs[1] - xs[0]) * (W - RIGHT - LEFT)  # type: ignore[operator]
        y = (H - BOTTOM) - (_value(p, y_axis) - ys[0]) / (ys[1] - ys[0]) * (H - BOTTOM - TOP)  # type: ignore[operator]
        return x, min(y, H - BOTTOM - 4), y > H - BOTTOM

    # Dominated and infeasible first, so the front is drawn on top.
    for p in sorted(pts, key=lambda p: (p.pareto, p.baseline)):
        x, y, below = pos(p)
        tip = (f"trial {p.trial}{' (baseline)' if p.baseline else ''}{' (Pareto)' if p.pareto else ''}"
               f"{'' if p.feasible else ' (infeasible)'}: {quality_name} {p.quality:.4g}, "
               f"p50 {p.latency if p.latency is not None else float('nan'):.4g} ms, {format_bytes(p.bytes)}. "
               f"{p.summary}")
        if x_axis == "latency" and p.latency_ci:
            lo_x = LEFT + (p.latency_ci[0] - xs[0]) / (xs[1] - xs[0]) * (W - RIGHT - LEFT)
            hi_x = LEFT + (p.latency_ci[1] - xs[0]) / (xs[1] - xs[0]) * (W - RIGHT - LEFT)
            colour = ACCENT if p.pareto else MUTED
            out.append(f'<line x1="{lo_x:.1f}" y1="{y:.1f}" x2="{hi_x:.1f}" y2="{y:.1f}" stroke="{colour}"/>')
        if p.baseline:
            shape = (f'<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" fill="#1f2933" '
                     f'stroke="#fff"><title>{escape(tip)}</title></rect>')
        elif p.pareto:
            shape = (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5.5" fill="{ACCENT}" stroke="#fff">'
                     f'<title>{escape(tip)}</title></circle>')
        elif p.feasible:
            shape = (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{MUTED}" fill-opacity="0.7">'
                     f'<title>{escape(tip)}</title></circle>')
        elif below:  # a triangle pointing down: off the bottom of the axis
            shape = (f'<path d="M{x - 4.5:.1f},{y - 3:.1f} L{x + 4.5:.1f},{y - 3:.1f} L{x:.1f},{y + 4:.1f} Z" '
                     f'fill="none" stroke="{BAD}" stroke-width="1.5"><title>{escape(tip)}</title></path>')
        else:
            shape = (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="none" stroke="{BAD}" stroke-width="1.5">'
                     f'<title>{escape(tip)}</title></circle>')
        out.append(shape)
        if p.pareto or p.baseline:
            out.append(f'<text x="{x + 7:.1f}" y="{y - 6:.1f}" fill="#1f2933" font-size="10">{p.trial}</text>')
    out.append("</svg>")
    return "\n".join(out)


def line_svg(points: list[tuple[int, float]], title: str, x_label: str, y_label: str) -> str:
    """A step line (value as of each trial), for hypervolume over trials."""
    if not points:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} 60" width="{W}" height="60">'
                f'<text x="10" y="30" font-family="sans-serif" font-size="12">{escape(title)}: no data</text></svg>')
    xs = (min(p[0] for p in points) - 0.5, max(p[0] for p in points) + 0.5)
    ys = (0.0, max(1e-9, max(p[1] for p in points)) * 1.1)
    out = _frame(title, x_label, y_label, xs, ys, "trial", "value")

    def pos(x: float, y: float) -> tuple[float, float]:
        return (LEFT + (x - xs[0]) / (xs[1] - xs[0]) * (W - RIGHT - LEFT),
                (H - BOTTOM) - (y - ys[0]) / (ys[1] - ys[0]) * (H - BOTTOM - TOP))

    path = []
    prev_y = None
    for n, v in points:
        x, y = pos(n, v)
        if prev_y is not None:
            path.append(f"L{x:.1f},{prev_y:.1f}")
        path.append(f"{'M' if prev_y is None else 'L'}{x:.1f},{y:.1f}")
        prev_y = y
    out.append(f'<path d="{" ".join(path)}" fill="none" stroke="{ACCENT}" stroke-width="2"/>')
    for n, v in points:
        x, y = pos(n, v)
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{ACCENT}"><title>after trial {n}: '
                   f'{v:.4f}</title></circle>')
    out.append("</svg>")
    return "\n".join(out)
