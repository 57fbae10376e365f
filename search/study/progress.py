"""Terminal progress: one line per trial with elapsed time and ETA, and the final front."""

from __future__ import annotations

import time
from typing import Any

from search.budget import view_interrupted
from search.reuse import variant_label
from search.study.view import StudyView
from search.units import format_bytes, format_duration


class Progress:
    def __init__(self, total: int, done_before: int, quiet: bool, timeout_s: float | None, quality_name: str):
        self.total, self.done_before, self.quiet = total, done_before, quiet
        self.timeout_s, self.quality_name = timeout_s, quality_name
        self.started = time.monotonic()
        self.done_now = 0
        self.planned = 0

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def start(self, study: str, planned: int) -> None:
        self.started = time.monotonic()
        self.planned = planned
        resumed = f", resuming after {self.done_before} finished" if self.done_before else ""
        limit = f", stopping new trials after {format_duration(self.timeout_s)}" if self.timeout_s else ""
        self.say(f"study {study!r}: {planned} trial(s) to run of a budget of {self.total}{resumed}{limit}")

    def trial_done(self, view: StudyView, number: int) -> None:
        self.done_now += 1
        elapsed = time.monotonic() - self.started
        left = self.planned - self.done_now
        eta = elapsed / self.done_now * left
        if self.timeout_s is not None:
            eta = min(eta, max(0.0, self.timeout_s - elapsed))
        t = next(t for t in view.trials if t.number == number)
        # Counted from the storage: other workers' trials count too.
        n = sum(1 for x in view.trials if x.state in ("COMPLETE", "FAIL", "PRUNED")
                and not view_interrupted(x.state, x.failure_reason))  # those do not use the budget
        if t.state == "COMPLETE" and t.values:
            q, lat, size = t.values.values()
            mark = "" if t.feasible else "  (infeasible: quality drop over the limit)"
            what = f"{t.state.lower()}  {self.quality_name} {q:.4f}  p50 {lat:.4f} ms  {format_bytes(size)}{mark}"
        elif t.rejected:  # "rejected early: proxy drop ... > ..." or "rejected before training: ..."
            what = t.failure_reason or "rejected early"
        else:
            what = f"{t.state.lower()}  {t.state}: {t.failure_reason or 'no reason recorded'}"
        label = "baseline" if t.baseline else t.summary + (f" [anchor: {t.anchor}]" if t.anchor else "")
        if any(n is not None for n in (t.variant_of, t.longer_of, t.pushed_from, t.stepped_back_from)):
            label += f" [{variant_label(t.variant_of, t.student, t.longer_of, t.pushed_from, t.stepped_back_from)}]"
        self.say(f"[{n:>{len(str(self.total))}}/{self.total}] trial {number} {what}  "
                 f"| {label} | elapsed {format_duration(elapsed)}  ETA {format_duration(eta)}")


def rejection_line(view: StudyView) -> str | None:
    """What early rejection did (search/rejection.py), in one line; None when no trial was rejected."""
    guide = view.guide_summary()
    if not guide["rejected_early"]:
        return None
    saved = guide["time_saved_s_estimated"]
    if saved is None:
        what = "no completed trial to estimate the time saved from"
    else:  # net of the proxy's cost on the trials it let through (search/rejection.py)
        what = (f"about {format_duration(abs(saved))} " + ("saved" if saved >= 0 else "lost") +
                " (the evaluation and latency measurement they skipped, at the completed trials' mean, less "
                "the proxy's own time)")
    n, before = guide["rejected_early"], guide["rejected_before_training"]
    if before:  # search/hopeless.py: never built, so never scored
        return (f"rejected early: {n} trial(s), {n - before} stopped at their proxy score and {before} before "
                f"training (a student at least as hard as a hopeless one); {what}")
    return f"rejected early: {n} trial(s) stopped at their proxy score; {what}"


def front_table(view: StudyView) -> str:
    """The Pareto front as a text table with ratios against the baseline."""
    rows = view.front()
    quality = view.objective_names[0]
    if not rows:
        return "Pareto front: empty (no completed trial satisfies the quality constraint)"
    reported = any(r.report for r in rows)  # the report split's columns, once it was evaluated
    header = ["trial", quality, "change", *(["report", "report change"] if reported else []),
              "p50 ms", "x faster", "bytes", "x smaller", "recipe"]
    lines: list[list[str]] = []
    for r in rows:
        report = []
        if reported:
            rep = r.report or {}
            drop = rep.get("report_drop")
            report = [f"{rep['report_quality']:.4f}" if "report_quality" in rep else "-",
                      _signed(None if drop is None else -drop) + (" !" if r.breaks_on_report else "")]
        lines.append([
            str(r.trial), f"{r.quality:.4f}", _signed(r.quality_change), *report,
            f"{r.latency:.4f}" + (" (sim)" if r.lowbit_simulated_layers else ""),
            _ratio(r.x_faster), format_bytes(r.bytes), _ratio(r.x_smaller), r.recipe,
        ])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" if i in (len(header) - 1,) else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [f"Pareto front ({len(rows)} point(s), feasible trials only; ratios against the fp32 baseline;"
           " (sim): int2/binary layers ran on fp32 kernels, so that latency is not a low-bit kernel's):",
           fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    out += _remeasure_notes(view, [r.trial for r in rows])
    if reported:
        out.append("report: quality on the task's report split, evaluated for this front only (never used to "
                   "choose); ! = its drop there exceeds the allowed quality drop")
        for r in rows:
            rep = r.report or {}
            drops = rep.get("report_drop_per_file") or {}
            files = [f"{f} {v:.4f}" + (f" ({-drops[f]:+.4f})" if f in drops else "")
                     for f, v in (rep.get("report_per_file") or {}).items()]
            if files:
                out.append(f"  trial {r.trial} per report file: " + ", ".join(files))
    return "\n".join(out)


def _remeasure_notes(view: StudyView, front: list[int]) -> list[str]:
    """What the end-of-study re-timing said about these points (search/study/remeasure.py): the table keeps
    the search's figures, so a point a longer timing found dominated is named here, with its new p50."""
    trials = (view.attrs.get("remeasured") or {}).get("trials") or {}
    notes = []
    for number in front:
        rec = trials.get(str(number)) or {}
        if rec.get("survives") is False:
            p50 = rec.get("p50_ms")
            notes.append(f"  trial {number}: dominated after re-measurement"
                         + (f" (p50 {p50:.4f} ms on the longer timing)" if p50 is not None else "")
                         + "; its place on this front rests on the search's shorter timing")
    return (["re-measured (the longer end-of-study timing; `show --json` has every point):"] + notes) if notes else []


def _ratio(x: Any) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _signed(x: Any) -> str:
    return "-" if x is None else f"{x:+.4f}"

