"""`report.html`: one self-contained page (the plot inlined, no script, nothing fetched) a new
user can trust at a glance.

From the top: where the figures come from (a banner that cannot be missed when the simulator
predicted them), the verdict, the caveats that go with it, the plot, how to adopt the answer,
then the tables. Every trial row shows its validity checks and, for a failed trial, why; a
failed trial's figures, when it kept them, are greyed: shown, never ranked.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass

import yaml

from jouletune.tuner._figures import Column, TrialFigures
from jouletune.tuner._plot import PlotPoint
from jouletune.tuner._provenance import CAP_EVIDENCE, Provenance
from jouletune.tuner._recommend import PointSummary, Recommendation
from jouletune.tuner._records import TrialRecord, TrialState
from jouletune.tuner.spec import BenchmarkSpec

__all__ = ["page"]

_CSS = """
body{font-family:sans-serif;max-width:1400px;margin:1.5em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;vertical-align:top}
th{text-align:center}td.text{text-align:left}td.nowrap{white-space:nowrap}
pre{background:#f4f4f4;padding:8px;white-space:pre-wrap}
.provenance{padding:12px 16px;margin:1em 0;border-radius:4px;font-size:15px}
.provenance.predicted{background:#fff0c2;border:3px solid #c77700}
.provenance.measured{background:#e7f5e9;border:2px solid #2e7d32}
.provenance.unknown{background:#eeeeee;border:2px solid #777}
.verdict{font-size:17px;font-weight:bold}
.caveat{background:#fdecea;border-left:5px solid #b00020;padding:8px 14px;margin:1em 0}
.tag{font-size:12px;font-weight:normal;padding:1px 6px;border-radius:3px;margin-left:6px}
.tag.predicted{background:#fff0c2;border:1px solid #c77700}
.tag.measured{background:#e7f5e9;border:1px solid #2e7d32}
.tag.unknown{background:#eee;border:1px solid #777}
tr.failed td.figure{color:#aaa}
tr.failed td{background:#fafafa}
tr.details td{text-align:left;color:#8a1c00;font-size:12px;background:#fff8f6}
td.checks-fail,td.reason{color:#b00020}
td.checks-pass{color:#2e7d32}
.wide{overflow-x:auto}td.diagnosis{min-width:24em}
figure{margin:1em 0}figcaption{font-size:13px;color:#555}
"""


@dataclass(frozen=True)
class _Cell:
    """One table cell: its text, a tooltip, and a CSS class."""

    text: str
    title: str = ""
    cls: str = ""

    def html(self, tag: str = "td") -> str:
        e = html.escape
        title = f" title='{e(self.title)}'" if self.title else ""
        cls = f" class='{e(self.cls)}'" if self.cls else ""
        return f"<{tag}{cls}{title}>{e(self.text)}</{tag}>"


def page(
    *,
    name: str,
    spec: BenchmarkSpec,
    records: Sequence[TrialRecord],
    on_front: Sequence[PointSummary],
    rec: Recommendation,
    png: bytes,
    markers: Sequence[PlotPoint],
) -> str:
    """The whole page."""
    e = html.escape
    tag = _tag(rec.provenance)
    columns = TrialFigures.columns(latency=spec.latency_metrics())
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>jouletune: {e(name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>jouletune: {e(name)}</h1>",
        _banner(rec.provenance, records),
        # The message opens with the verdict in words ("recommended: ..."); no second prefix.
        f"<p class='verdict' id='verdict'>{e(rec.message)}</p>",
        _caveats(rec),
        f"<p>model {e(spec.model)}, GPU {e(spec.gpu.type)} x{spec.gpu.count}, "
        f"{rec.trials_measured} trials ({rec.trials_failed} failed), "
        f"{rec.server_starts} server starts, {rec.gpu_s:.0f} GPU-seconds</p>",
        _figure(png, markers, rec.provenance),
        _adopt(rec),
    ]
    if rec.finalists:
        parts += [f"<h2>Finalists (re-measured){tag}</h2>", _points_table(rec.finalists, columns)]
    if rec.closest:
        parts += [f"<h2>Closest to the SLO{tag}</h2>", _points_table(rec.closest, columns)]
    parts += [f"<h2>Pareto front (feasible){tag}</h2>", _points_table(on_front, columns)]
    parts += [f"<h2>Trials{tag}</h2>", _trials_table(records, columns), "</body></html>"]
    return "\n".join(parts)


def _banner(provenance: Provenance | None, records: Sequence[TrialRecord]) -> str:
    """Where the figures come from, above everything else."""
    e = html.escape
    sources: dict[Provenance, list[int]] = {}
    for r in records:
        if r.provenance is not None and r.figures is not None:
            sources.setdefault(r.provenance, []).append(r.number)
    if provenance is None:
        return (
            "<div class='provenance unknown' id='provenance'><strong>Origin unknown.</strong> "
            "These trials carry no provenance: whether their figures were measured or "
            "predicted by the simulator cannot be told from them.</div>"
        )
    kind = provenance.kind
    if len(sources) > 1:
        items = "".join(
            f"<li>trials {', '.join(map(str, numbers))}: {e(p.sentence())}</li>"
            for p, numbers in sources.items()
        )
        head = "Mixed sources" + (
            ", some predicted, not measured." if provenance.predicted else "."
        )
        return (
            f"<div class='provenance {kind}' id='provenance'><strong>{head}</strong> "
            f"The trials' figures come from more than one place:<ul>{items}</ul></div>"
        )
    if provenance.predicted:
        return (
            f"<div class='provenance predicted' id='provenance' role='alert'><strong>"
            f"Predicted, not measured.</strong> Every figure on this page was "
            f"{e(provenance.sentence())}. To measure them, run the same spec on the GPU with "
            f"<code>jouletune tune SPEC --backend local</code>.</div>"
        )
    return (
        f"<div class='provenance measured' id='provenance'><strong>Measured.</strong> Every "
        f"figure on this page was {e(provenance.sentence())} "
        f"(jouletune {e(provenance.jouletune_version)}).</div>"
    )


def _tag(provenance: Provenance | None) -> str:
    """The small mark beside each table's heading: predicted, measured or unknown."""
    kind = "unknown" if provenance is None else provenance.kind
    title = "origin unknown" if provenance is None else provenance.sentence()
    return f" <span class='tag {kind}' title='{html.escape(title)}'>{kind}</span>"


def _caveats(rec: Recommendation) -> str:
    """The caveats, and the published evidence beside a predicted power-cap or clock-lock
    saving."""
    if not rec.caveats:
        return ""
    e = html.escape
    items = "".join(f"<p>{e(c)}</p>" for c in rec.caveats)
    point = rec.recommended.point if rec.recommended else None
    settings = [
        name
        for name, value in (
            ("power cap", point and point.power_limit_w),
            ("clock lock", point and point.sm_clock_mhz),
        )
        if value
    ]
    head = "<div class='caveat' id='caveats'><strong>"
    if not settings:  # only the TTFT caveat: no cap or lock to weigh evidence against
        return f"{head}Before relying on its TTFT.</strong>{items}</div>"
    evidence = "".join(f"<li>{e(item)}</li>" for item in CAP_EVIDENCE)
    return (
        f"{head}Before adopting the {' and '.join(settings)}.</strong>{items}"
        f"<p>Published evidence:</p><ul>{evidence}</ul></div>"
    )


def _figure(png: bytes, markers: Sequence[PlotPoint], provenance: Provenance | None) -> str:
    """The plot, inlined; its alt text names every plotted point, as the labels on it do."""
    e = html.escape
    alt = "energy per output token against latency: " + "; ".join(m.label for m in markers)
    where = "origin unknown" if provenance is None else provenance.sentence()
    data = base64.b64encode(png).decode()
    return (
        f"<figure><img id='pareto' alt='{e(alt)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>Every point is named by its configuration; the star is the "
        f"recommendation, the square the baseline. Figures {e(where)}.</figcaption></figure>"
    )


def _adopt(rec: Recommendation) -> str:
    if rec.artifacts is None:
        return ""
    e = html.escape
    container = yaml.safe_dump(rec.artifacts.kubernetes_container.model_dump(), sort_keys=False)
    return "\n".join(
        [
            "<h2>Adopt it</h2>",
            f"<pre>{e(rec.artifacts.vllm_serve_command)}</pre>",
            f"<pre>{e(rec.artifacts.power_limit_command or '# no power cap')}</pre>",
            f"<pre>{e(rec.artifacts.sm_clock_lock_command or '# no clock lock')}</pre>",
            f"<pre>{e(container)}</pre>",
        ]
    )


def _table(head: Sequence[str], rows: Sequence[str], *, table_id: str = "") -> str:
    """A table of `head` and rows already rendered as `<tr>...</tr>`, scrolling sideways
    where it is wider than the page (the trials' diagnosis sentences stay readable)."""
    first = "<tr>" + "".join(_Cell(h).html("th") for h in head) + "</tr>"
    attr = f" id='{table_id}'" if table_id else ""
    return f"<div class='wide'><table{attr}>" + first + "".join(rows) + "</table></div>"


def _row(cells: Sequence[_Cell], cls: str = "", trial: int | None = None) -> str:
    attr = f" class='{cls}'" if cls else ""
    attr += "" if trial is None else f" data-trial='{trial}'"
    return f"<tr{attr}>" + "".join(c.html() for c in cells) + "</tr>"


def _points_table(points: Sequence[PointSummary], columns: Sequence[Column]) -> str:
    head = ["config", "runs", "spread %", "meets SLO", *(c.title for c in columns)]
    rows = []
    for p in points:
        flat = p.figures.flat()
        cells = [_Cell(p.label, cls="text nowrap"), _Cell(str(p.runs))]
        cells += [_Cell(f"{p.energy_spread_pct:.1f}"), _Cell(str(p.feasible))]
        cells += [_Cell(c.format(flat[c.name]), cls="figure") for c in columns]
        rows.append(_row(cells))
    return _table(head, rows)


def _trials_table(records: Sequence[TrialRecord], columns: Sequence[Column]) -> str:
    head = ["#", "role", "state", "config", "meets SLO", *(c.title for c in columns)]
    head += ["checks", "note", "diagnosis"]
    rows = []
    for r in records:
        flat = r.figures.flat() if r.figures else {}
        feasible = "" if r.feasible is None else str(r.feasible)
        cells = [_Cell(str(r.number)), _Cell(r.role.value, cls="text")]
        cells += [_Cell(r.state.value, cls="text"), _Cell(r.point.label(), cls="text nowrap")]
        cells += [_Cell(feasible)]
        cells += [_Cell(c.format(flat.get(c.name)), cls="figure") for c in columns]
        cells += [_checks_cell(r), _note_cell(r), _Cell(_diagnosis(r), cls="text diagnosis")]
        failed = r.state is TrialState.FAILED
        rows.append(_row(cells, "trial failed" if failed else "trial", r.number))
        if failed or (r.warnings and r.duplicate_of is None):
            rows.append(_details_row(r, len(head)))
    return _table(head, rows, table_id="trials")


def _checks_cell(record: TrialRecord) -> _Cell:
    """`8/8 pass`, or the failing checks' names; every check's measured value against its
    threshold in the tooltip."""
    checks = record.checks
    if not checks:
        return _Cell("—", title="no validity checks recorded", cls="checks")
    tooltip = "\n".join(f"{c.verdict}: {c.message}" for c in checks)
    failing = [c.name for c in checks if c.verdict == "fail"]
    if failing:
        text = f"{len(failing)}/{len(checks)} fail: {', '.join(failing)}"
        return _Cell(text, title=tooltip, cls="text checks checks-fail")
    passed = sum(c.verdict == "pass" for c in checks)
    unknown = len(checks) - passed
    text = f"{passed}/{len(checks)} pass" + (f", {unknown} unknown" if unknown else "")
    return _Cell(text, title=tooltip, cls="text checks checks-pass")


def _note_cell(record: TrialRecord) -> _Cell:
    # A failed trial's reason, and a trial's warnings, have a row of their own under it
    # (`_details_row`); a duplicate's are its original's.
    if record.state is TrialState.FAILED:
        return _Cell("failed: see below", cls="text nowrap reason")
    if record.duplicate_of is not None:
        return _Cell(f"same point as #{record.duplicate_of}", cls="text")
    if record.warnings:
        return _Cell("warned: see below", cls="text nowrap")
    return _Cell("", cls="text")


def _details_row(record: TrialRecord, width: int) -> str:
    """Under a failed trial: its reason, each failed check measured against its threshold,
    and whether its (greyed) figures were kept; under any trial, what its measurement warned
    of."""
    e = html.escape
    lines = []
    if record.state is TrialState.FAILED:
        reason = record.fail_reason or "no reason recorded"
        lines.append(f"#{record.number} failed: {reason}")
        # The reason often quotes the failed checks already; list only those it leaves out.
        failed = [c.message for c in record.checks if c.verdict == "fail"]
        lines += [message for message in failed if message not in reason]
        if record.figures is not None:
            lines.append("its figures (greyed above) are shown, never ranked or recommended")
    lines += [f"#{record.number} warning: {w}" for w in record.warnings]
    text = "<br>".join(e(line) for line in lines)
    cell = f"<td colspan='{width}'>{text}</td>"
    return f"<tr class='details' data-details='{record.number}'>{cell}</tr>"


def _diagnosis(record: TrialRecord) -> str:
    """What held the trial back and which knob moves it (its diagnosis' sentence)."""
    return record.diagnosis or ""
