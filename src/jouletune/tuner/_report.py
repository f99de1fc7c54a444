"""The out folder's report: `trials.csv`, `pareto.json`, `recommendation.json`, `pareto.png`
(`_plot.py`), and a self-contained `report.html` (`_html.py`, the plot inlined as base64).

Everything here is rebuilt from the study's records, so `jouletune report DIR` writes the same
files from `study.db` alone.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from jouletune.tuner._figures import TrialFigures
from jouletune.tuner._html import page
from jouletune.tuner._plot import PlotPoint, figure, plot_points, render
from jouletune.tuner._point import Point
from jouletune.tuner._recommend import PointSummary, Recommendation, front, summarize_points
from jouletune.tuner._records import TrialRecord
from jouletune.tuner.spec import BenchmarkSpec

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
# ... and where its figures come from: `measured` or `predicted`, then the whole sentence.
_PROVENANCE = ("provenance", "provenance_detail")


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
    markers = plot_points(points, records, recommendation, spec)
    png = _png(markers, on_front, spec=spec, recommendation=recommendation)
    (out_dir / PARETO_PNG).write_bytes(png)
    html = page(
        name=name,
        spec=spec,
        records=records,
        on_front=on_front,
        rec=recommendation,
        png=png,
        markers=markers,
    )
    (out_dir / REPORT_HTML).write_text(html)
    return (TRIALS_CSV, PARETO_JSON, RECOMMENDATION_JSON, PARETO_PNG, REPORT_HTML)


def _write_csv(path: Path, records: Sequence[TrialRecord]) -> None:
    """One row per trial: the record's fields, its point's, every figure (empty if none)."""
    point_fields = tuple(Point.model_fields)
    columns = [c.name for c in TrialFigures.columns()]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        head = [*_RECORD_HEAD, *point_fields, *columns, *_RECORD_TAIL, *_PROVENANCE, "warnings"]
        writer.writerow(head)
        for record in records:
            row = record.model_dump(mode="json")
            figures = record.figures.flat() if record.figures else {}
            cells = [
                *(row[k] for k in _RECORD_HEAD),
                *(row["point"][k] for k in point_fields),
                *(figures.get(c) for c in columns),
                *(row[k] for k in _RECORD_TAIL),
                *_provenance_cells(record),
                " | ".join(record.warnings),
            ]
            writer.writerow(["" if v is None else v for v in cells])


def _provenance_cells(record: TrialRecord) -> tuple[str | None, str | None]:
    where = record.provenance
    return (None, None) if where is None else (where.kind, where.sentence())


def _png(
    markers: Sequence[PlotPoint],
    on_front: Sequence[PointSummary],
    *,
    spec: BenchmarkSpec,
    recommendation: Recommendation,
) -> bytes:
    from matplotlib import pyplot as plt

    fig = figure(markers, on_front, spec=spec, provenance=recommendation.provenance)
    try:
        return render(fig)
    finally:
        plt.close(fig)
