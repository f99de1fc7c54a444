"""The out folder's report: `trials.csv`, `pareto.json`, `recommendation.json`, `pareto.png`,
and a self-contained `report.html` (the plot inlined as base64).

Everything here is rebuilt from the study's records, so `jouletune report DIR` writes the same
files from `study.db` alone.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from jouletune.tuner._figures import Column, TrialFigures
from jouletune.tuner._point import Point
from jouletune.tuner._recommend import PointSummary, Recommendation, front, summarize_points
from jouletune.tuner._records import TrialRecord
from jouletune.tuner.spec import BenchmarkSpec, LatencyMetric

__all__ = ["ReportFiles", "write_report"]

TRIALS_CSV = "trials.csv"
PARETO_JSON = "pareto.json"
RECOMMENDATION_JSON = "recommendation.json"
PARETO_PNG = "pareto.png"
REPORT_HTML = "report.html"
ReportFiles = tuple[str, ...]

# trials.csv: the record's own fields around its point's and its figures' columns.
_RECORD_HEAD = ("number", "role", "state", "repeat")
_RECORD_TAIL = (
    "measured_power_limit_w",
    "feasible",
    "duration_s",
    "server_start_s",
    "server_run",
    "duplicate_of",
    "interrupted",
    "held_back_by",
    "diagnosis",
    "fail_reason",
    "result_path",
)


def write_report(
    out_dir: Path,
    *,
    spec: BenchmarkSpec,
    name: str,
    records: Sequence[TrialRecord],
    recommendation: Recommendation,
) -> ReportFiles:
    """Write every report file into `out_dir`; return their names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    points = summarize_points(records, spec)
    on_front = front(points, spec)
    _write_csv(out_dir / TRIALS_CSV, records)
    pareto = {
        "objectives": ["energy_per_output_token_j", f"{spec.objective.value}_ms"],
        "front": [p.model_dump(mode="json") for p in on_front],
        "points": [p.model_dump(mode="json") for p in points],
    }
    (out_dir / PARETO_JSON).write_text(json.dumps(pareto, indent=2))
    (out_dir / RECOMMENDATION_JSON).write_text(recommendation.model_dump_json(indent=2))
    png = _plot(points, on_front, recommendation, spec)
    (out_dir / PARETO_PNG).write_bytes(png)
    page = _html(name, spec, records, on_front, recommendation, png)
    (out_dir / REPORT_HTML).write_text(page)
    return (TRIALS_CSV, PARETO_JSON, RECOMMENDATION_JSON, PARETO_PNG, REPORT_HTML)


def _write_csv(path: Path, records: Sequence[TrialRecord]) -> None:
    """One row per trial: the record's fields, its point's, every figure (empty if none)."""
    point_fields = tuple(Point.model_fields)
    columns = [c.name for c in TrialFigures.columns()]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*_RECORD_HEAD, *point_fields, *columns, *_RECORD_TAIL])
        for record in records:
            row = record.model_dump(mode="json")
            figures = record.figures.flat() if record.figures else {}
            cells = [
                *(row[k] for k in _RECORD_HEAD),
                *(row["point"][k] for k in point_fields),
                *(figures.get(c) for c in columns),
                *(row[k] for k in _RECORD_TAIL),
            ]
            writer.writerow(["" if v is None else v for v in cells])


def _plot(
    points: Sequence[PointSummary],
    on_front: Sequence[PointSummary],
    recommendation: Recommendation,
    spec: BenchmarkSpec,
) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    from matplotlib import pyplot as plt

    metric = spec.objective.value
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    try:
        for feasible, style in ((True, "o"), (False, "x")):
            chosen = [p for p in points if p.feasible is feasible]
            ax.scatter(
                [p.figures.latency_ms[metric] for p in chosen],
                [p.energy_per_output_token_j for p in chosen],
                marker=style,
                color="tab:blue" if feasible else "tab:gray",
                label="meets SLO" if feasible else "misses SLO",
            )
        if on_front:
            ordered = sorted(on_front, key=lambda p: p.figures.latency_ms[metric])
            ax.plot(
                [p.figures.latency_ms[metric] for p in ordered],
                [p.energy_per_output_token_j for p in ordered],
                color="tab:blue",
                linewidth=1,
                label="Pareto front",
            )
        _mark(ax, recommendation.baseline, metric, "s", "tab:orange", "baseline")
        _mark(ax, recommendation.recommended, metric, "*", "tab:red", "recommended")
        for slo in spec.slos:
            if slo.metric is spec.objective:
                ax.axvline(slo.max_ms, color="tab:red", linestyle="--", linewidth=1, label="SLO")
        ax.set_xlabel(f"{metric} (ms)")
        ax.set_ylabel("energy per output token (J)")
        if points:
            ax.set_yscale("log")  # J/token spans decades from small to large batches
        else:
            ax.text(0.5, 0.5, "no successful measurement", ha="center", transform=ax.transAxes)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(spec.model, fontsize=10)
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def _mark(
    ax: Any, point: PointSummary | None, metric: str, marker: str, color: str, label: str
) -> None:
    if point is not None:
        ax.scatter(
            [point.figures.latency_ms[metric]],
            [point.energy_per_output_token_j],
            marker=marker,
            s=160,
            color=color,
            label=label,
            zorder=3,
        )


def _html(
    name: str,
    spec: BenchmarkSpec,
    records: Sequence[TrialRecord],
    on_front: Sequence[PointSummary],
    rec: Recommendation,
    png: bytes,
) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>jouletune: {e(name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
        "padding:3px 6px;text-align:right}pre{background:#f4f4f4;padding:8px}</style>",
        "</head><body>",
        f"<h1>jouletune: {e(name)}</h1>",
        f"<p><b>{e(rec.verdict)}</b>: {e(rec.message)}</p>",
        f"<p>model {e(spec.model)}, GPU {e(spec.gpu.type)} x{spec.gpu.count}, "
        f"{rec.trials_measured} trials ({rec.trials_failed} failed), "
        f"{rec.server_starts} server starts, {rec.gpu_s:.0f} GPU-seconds</p>",
        f"<img alt='energy/latency front' src='data:image/png;base64,"
        f"{base64.b64encode(png).decode()}'>",
    ]
    if rec.artifacts is not None:
        container = yaml.safe_dump(rec.artifacts.kubernetes_container.model_dump(), sort_keys=False)
        parts += [
            "<h2>Adopt it</h2>",
            f"<pre>{e(rec.artifacts.vllm_serve_command)}</pre>",
            f"<pre>{e(rec.artifacts.power_limit_command or '# no power cap')}</pre>",
            f"<pre>{e(container)}</pre>",
        ]
    columns = TrialFigures.columns(latency=_latency_metrics(spec))
    if rec.finalists:
        parts += ["<h2>Finalists (re-measured)</h2>", _points_table(rec.finalists, columns)]
    if rec.closest:
        parts += ["<h2>Closest to the SLO</h2>", _points_table(rec.closest, columns)]
    parts += ["<h2>Pareto front (feasible)</h2>", _points_table(on_front, columns)]
    parts += ["<h2>Trials</h2>", _trials_table(records, columns), "</body></html>"]
    return "\n".join(parts)


def _latency_metrics(spec: BenchmarkSpec) -> list[LatencyMetric]:
    """The latency statistics the study is about: the objective's, then the SLOs'."""
    return list(dict.fromkeys([spec.objective, *(s.metric for s in spec.slos)]))


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    e = html.escape
    cells = ["<tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    cells += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
    return "<table>" + "".join(cells) + "</table>"


def _points_table(points: Sequence[PointSummary], columns: Sequence[Column]) -> str:
    head = ["config", "runs", "spread %", "meets SLO", *(c.title for c in columns)]
    rows = []
    for p in points:
        flat = p.figures.flat()
        rows.append(
            [p.label, str(p.runs), f"{p.energy_spread_pct:.1f}", str(p.feasible)]
            + [c.format(flat[c.name]) for c in columns]
        )
    return _table(head, rows)


def _trials_table(records: Sequence[TrialRecord], columns: Sequence[Column]) -> str:
    head = ["#", "role", "state", "config", "meets SLO", *(c.title for c in columns), "note"]
    rows = []
    for r in records:
        flat = r.figures.flat() if r.figures else {}
        note = r.fail_reason or (f"same point as #{r.duplicate_of}" if r.duplicate_of else "")
        feasible = "" if r.feasible is None else str(r.feasible)
        rows.append(
            [str(r.number), r.role.value, r.state.value, r.point.label(), feasible]
            + [c.format(flat.get(c.name)) for c in columns]
            + [note]
        )
    return _table(head, rows)
