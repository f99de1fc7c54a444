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

_CSV_FIELDS = (
    "number",
    "role",
    "state",
    "repeat",
    "tensor_parallel_size",
    "max_num_seqs",
    "max_num_batched_tokens",
    "power_limit_w",
    "measured_power_limit_w",
    "energy_per_output_token_j",
    "feasible",
    "avg_power_per_gpu_w",
    "power_cap_bound_fraction",
    "output_token_throughput",
    "completed",
    "failed_requests",
    "duration_s",
    "server_start_s",
    "duplicate_of",
    "interrupted",
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
    _write_csv(out_dir / TRIALS_CSV, records, spec)
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


def _write_csv(path: Path, records: Sequence[TrialRecord], spec: BenchmarkSpec) -> None:
    metrics = sorted({spec.objective.value, *(s.metric.value for s in spec.slos)})
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*_CSV_FIELDS, *(f"{m}_ms" for m in metrics)])
        for record in records:
            row = record.model_dump(mode="json")
            cells = ["" if row.get(k) is None else row[k] for k in _CSV_FIELDS]
            writer.writerow([*cells, *(record.latency_ms.get(m, "") for m in metrics)])


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
                [p.latency_ms[metric] for p in chosen],
                [p.energy_per_output_token_j for p in chosen],
                marker=style,
                color="tab:blue" if feasible else "tab:gray",
                label="meets SLO" if feasible else "misses SLO",
            )
        if on_front:
            ordered = sorted(on_front, key=lambda p: p.latency_ms[metric])
            ax.plot(
                [p.latency_ms[metric] for p in ordered],
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
            [point.latency_ms[metric]],
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
    metric = spec.objective.value
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
        container = yaml.safe_dump(rec.artifacts.kubernetes_container, sort_keys=False)
        parts += [
            "<h2>Adopt it</h2>",
            f"<pre>{e(rec.artifacts.vllm_serve_command)}</pre>",
            f"<pre>{e(rec.artifacts.power_limit_command or '# no power cap')}</pre>",
            f"<pre>{e(container)}</pre>",
        ]
    if rec.finalists:
        parts += ["<h2>Finalists (re-measured)</h2>", _points_table(rec.finalists, metric)]
    if rec.closest:
        parts += ["<h2>Closest to the SLO</h2>", _points_table(rec.closest, metric)]
    parts += ["<h2>Pareto front (feasible)</h2>", _points_table(on_front, metric)]
    parts += ["<h2>Trials</h2>", _trials_table(records, metric), "</body></html>"]
    return "\n".join(parts)


def _points_table(points: Sequence[PointSummary], metric: str) -> str:
    rows = [
        f"<tr><th>config</th><th>runs</th><th>J/token</th><th>spread %</th>"
        f"<th>{html.escape(metric)} ms</th><th>W/GPU</th><th>meets SLO</th></tr>"
    ]
    for p in points:
        power = "" if p.avg_power_per_gpu_w is None else f"{p.avg_power_per_gpu_w:.0f}"
        rows.append(
            f"<tr><td>{html.escape(p.label)}</td><td>{p.runs}</td>"
            f"<td>{p.energy_per_output_token_j:.4g}</td><td>{p.energy_spread_pct:.1f}</td>"
            f"<td>{p.latency_ms[metric]:.2f}</td><td>{power}</td><td>{p.feasible}</td></tr>"
        )
    return "<table>" + "".join(rows) + "</table>"


def _trials_table(records: Sequence[TrialRecord], metric: str) -> str:
    rows = [
        "<tr><th>#</th><th>role</th><th>state</th><th>config</th><th>J/token</th>"
        f"<th>{html.escape(metric)} ms</th><th>meets SLO</th><th>note</th></tr>"
    ]
    for r in records:
        energy = "" if r.energy_per_output_token_j is None else f"{r.energy_per_output_token_j:.4g}"
        latency = r.latency_ms.get(metric)
        note = r.fail_reason or (f"same point as #{r.duplicate_of}" if r.duplicate_of else "")
        rows.append(
            f"<tr><td>{r.number}</td><td>{r.role.value}</td><td>{r.state.value}</td>"
            f"<td>{html.escape(r.point.label())}</td><td>{energy}</td>"
            f"<td>{'' if latency is None else f'{latency:.2f}'}</td>"
            f"<td>{'' if r.feasible is None else r.feasible}</td>"
            f"<td>{html.escape(note)}</td></tr>"
        )
    return "<table>" + "".join(rows) + "</table>"
