"""The per-layer sensitivity chart: one row per layer, one bar per bit-width, on a log scale.

Hardware teams read it to see which layers need to stay at higher precision (long bars) and
which take the lowest bit-width for free (short bars). The figures are a proxy (search/sensitivity.py
says what is measured), and the chart's title says so. Plain SVG, like search/report/plots.py.
"""

from __future__ import annotations

import math
import os
from html import escape
from typing import Any

COLOURS = {"fp16": "#2f9e44", "int8": "#1c7ed6", "int4": "#d9480f", "int2": "#862e9c", "binary": "#495057"}
ROW, LEFT, RIGHT, TOP, BOTTOM, W = 16, 250, 16, 46, 36, 760


def _short(layers: list[str]) -> list[str]:
    """Layer names without the prefix they all share (bert.encoder.layer.)."""
    prefix = os.path.commonprefix(layers) if len(layers) > 1 else ""
    prefix = prefix[:prefix.rfind(".") + 1]
    return [name[len(prefix):] or name for name in layers]


def sensitivity_svg(table: dict[str, Any], title: str = "") -> str:
    """The table written by search/sensitivity.py (`error`: bits -> {layer: value}) as a bar chart."""
    layers, bits = list(table.get("layers") or []), list(table.get("bits") or [])
    errors = table.get("error") or {}
    values = [v for b in bits for v in (errors.get(b) or {}).values() if v and v > 0 and math.isfinite(v)]
    title = title or "Per-layer sensitivity (proxy: relative output error, one layer at a time)"
    height = TOP + BOTTOM + max(1, len(layers)) * ROW
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" width="{W}" height="{height}" '
           f'role="img" aria-label="{escape(title)}" font-family="system-ui, sans-serif" font-size="10">',
           f'<rect width="{W}" height="{height}" fill="#fff"/>',
           f'<text x="8" y="16" font-size="12" font-weight="600" fill="#1f2933">{escape(title)}</text>']
    for i, b in enumerate(bits):  # legend
        out.append(f'<rect x="{8 + i * 70}" y="26" width="10" height="10" fill="{COLOURS.get(b, "#868e96")}"/>'
                   f'<text x="{22 + i * 70}" y="35" fill="#323f4b">{escape(b)}</text>')
    if not values or not layers:
        out.append(f'<text x="8" y="{TOP + 12}" fill="#52606d">no sensitivity measured</text></svg>')
        return "\n".join(out)
    lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    hi = max(hi, lo + 1)
    x0, x1 = LEFT, W - RIGHT

    def x_of(v: float) -> float:
        return x0 + (math.log10(max(v, 10.0 ** lo)) - lo) / (hi - lo) * (x1 - x0)

    bottom = height - BOTTOM
    for p in range(lo, hi + 1):
        x = x_of(10.0 ** p)
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{bottom}" stroke="#eef0f3"/>'
                   f'<text x="{x:.1f}" y="{bottom + 12}" text-anchor="middle" fill="#52606d">1e{p}</text>')
    out.append(f'<text x="{(x0 + x1) / 2}" y="{height - 6}" text-anchor="middle" fill="#323f4b">relative output '
               f"error with this layer alone at the bit-width (log scale; longer = keep it at higher precision)</text>")
    bar = max(2, (ROW - 4) // max(1, len(bits)))
    for row, (name, short) in enumerate(zip(layers, _short(layers), strict=True)):
        y = TOP + row * ROW
        out.append(f'<text x="{x0 - 6}" y="{y + ROW / 2 + 3:.1f}" text-anchor="end" fill="#323f4b">'
                   f"{escape(short)}</text>")
        for i, b in enumerate(bits):
            v = (errors.get(b) or {}).get(name)
            if v is None or not math.isfinite(v):
                continue
            out.append(f'<rect x="{x0}" y="{y + 2 + i * bar}" width="{max(0.5, x_of(v) - x0):.1f}" '
                       f'height="{bar - 1}" fill="{COLOURS.get(b, "#868e96")}"><title>{escape(name)} at '
                       f"{escape(b)}: {v:.3g}</title></rect>")
    out.append("</svg>")
    return "\n".join(out)


def most_sensitive(table: dict[str, Any], bits: str, count: int = 5) -> list[tuple[str, float]]:
    """The `count` layers that lose most at `bits`, most first."""
    errors = (table.get("error") or {}).get(bits) or {}
    return sorted(errors.items(), key=lambda kv: -kv[1])[:count]
