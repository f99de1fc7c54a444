"""`pareto.png`: every measured point on the energy/latency plane, each named by its
configuration, the baseline and the recommendation marked, and the figures' provenance in the
title (a predicted plot also carries a faint PREDICTED across it, so that a copy of the image
alone cannot pass for a measurement).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from jouletune.tuner._point import Point
from jouletune.tuner._provenance import Provenance
from jouletune.tuner._records import TrialState

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.transforms import Bbox

    from jouletune.tuner._recommend import PointSummary, Recommendation
    from jouletune.tuner._records import TrialRecord
    from jouletune.tuner.spec import BenchmarkSpec

__all__ = ["PlotPoint", "figure", "plot_label", "plot_points", "render"]

MarkerKind = Literal["feasible", "infeasible", "invalid"]
MarkerRole = Literal["", "baseline", "recommended"]

# Where a label may sit relative to its point, in points (1/72 in), tried in order: right
# above, right below, left above, left below, then further out. The first that overlaps no
# other label or marker and stays inside the axes wins.
_OFFSETS_PT = ((6, 4), (6, -11), (-6, 4), (-6, -11), (6, 13), (-6, -20), (6, -20), (-6, 13))
# Half the side of the square a marker keeps free of labels, in pixels.
_MARKER_HALF_PX = 5.0
_LABEL_FONT_PT = 7


@dataclass(frozen=True, kw_only=True)
class PlotPoint:
    """One marker on the plot.

    Attributes:
        point: the configuration.
        latency_ms: the objective's latency statistic.
        energy_per_output_token_j: J/output-token.
        kind: `feasible`, `infeasible` (misses an SLO) or `invalid` (failed its validity
            checks: shown, never ranked).
        role: `baseline`, `recommended` or empty.
    """

    point: Point
    latency_ms: float
    energy_per_output_token_j: float
    kind: MarkerKind
    role: MarkerRole = ""

    @property
    def label(self) -> str:
        """The text beside the marker, e.g. `recommended · seqs 64 · 300 W`."""
        text = plot_label(self.point)
        if self.role:
            text = f"{self.role} · {text}"
        return text + (" (invalid)" if self.kind == "invalid" else "")


def plot_label(point: Point) -> str:
    """A point's configuration as a plot names it, e.g. `seqs 64 · 300 W` or `seqs 64 · no
    cap · 1410 MHz`; the tensor parallelism only where it is not 1, the clock only where it
    is locked."""
    parts = [f"tp {point.tensor_parallel_size}"] if point.tensor_parallel_size > 1 else []
    parts.append(f"seqs {point.max_num_seqs}")
    if point.max_num_batched_tokens is not None:
        parts.append(f"mbt {point.max_num_batched_tokens}")
    if point.api_server_count is not None:
        parts.append(f"{point.api_server_count} API servers")
    cap = point.power_limit_w
    parts.append("no cap" if cap is None else f"{cap:g} W")
    if point.sm_clock_mhz is not None:
        parts.append(f"{point.sm_clock_mhz} MHz")
    return " · ".join(parts)


def plot_points(
    points: Sequence[PointSummary],
    records: Sequence[TrialRecord],
    rec: Recommendation,
    spec: BenchmarkSpec,
) -> list[PlotPoint]:
    """The markers: every point with a complete measurement, then every invalid measurement
    that kept its figures."""
    metric = spec.objective.value
    roles: dict[Point, MarkerRole] = {}
    if rec.baseline is not None:
        roles[rec.baseline.point] = "baseline"
    if rec.recommended is not None:  # a baseline that is also the answer shows as the answer
        roles[rec.recommended.point] = "recommended"
    out = [
        PlotPoint(
            point=p.point,
            latency_ms=p.figures.latency_ms[metric],
            energy_per_output_token_j=p.energy_per_output_token_j,
            kind="feasible" if p.feasible else "infeasible",
            role=roles.get(p.point, ""),
        )
        for p in points
        if metric in p.figures.latency_ms
    ]
    # One marker per point: a point that also has a valid run shows that; of several
    # invalid runs of one point, the last.
    invalid = {
        r.point: r.figures
        for r in records
        if r.state is TrialState.FAILED and r.figures is not None and metric in r.figures.latency_ms
    }
    ranked = {p.point for p in points}
    out += [
        PlotPoint(
            point=point,
            latency_ms=figures.latency_ms[metric],
            energy_per_output_token_j=figures.energy_per_output_token_j,
            kind="invalid",
        )
        for point, figures in invalid.items()
        if point not in ranked
    ]
    return out


def render(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def figure(
    markers: Sequence[PlotPoint],
    front: Sequence[PointSummary],
    *,
    spec: BenchmarkSpec,
    provenance: Provenance | None,
) -> Figure:
    """The plot as a matplotlib figure (the caller closes it: `plt.close(fig)`)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    from matplotlib import pyplot as plt

    metric = spec.objective.value
    fig, ax = plt.subplots(figsize=(9.6, 5.6), dpi=110)
    _scatter(ax, markers)
    if front:
        ordered = sorted(front, key=lambda p: p.figures.latency_ms[metric])
        ax.plot(
            [p.figures.latency_ms[metric] for p in ordered],
            [p.energy_per_output_token_j for p in ordered],
            color="tab:blue",
            linewidth=1,
            label="Pareto front",
            zorder=1,
        )
    for slo in spec.slos:
        if slo.metric is spec.objective:
            ax.axvline(slo.max_ms, color="tab:red", linestyle="--", linewidth=1, label="SLO")
    ax.set_xlabel(f"{metric} (ms)")
    ax.set_ylabel("energy per output token (J)")
    if markers:
        ax.set_yscale("log")  # J/token spans decades from small to large batches
        _plain_ticks(ax, [m.energy_per_output_token_j for m in markers])
        ax.margins(x=0.12, y=0.12)  # room for the labels of the outermost points
    else:
        ax.text(0.5, 0.5, "no successful measurement", ha="center", transform=ax.transAxes)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    _title(ax, spec, provenance)
    fig.tight_layout()
    # Labels last: their placement needs the axes' final position on the canvas.
    _label(ax, markers)
    return fig


_STYLE: dict[str, dict[str, Any]] = {
    "feasible": {"marker": "o", "color": "tab:blue", "label": "meets SLO"},
    "infeasible": {"marker": "x", "color": "tab:gray", "label": "misses SLO"},
    "invalid": {
        "marker": "o",
        "facecolors": "none",
        "edgecolors": "#bbbbbb",
        "label": "invalid measurement (not ranked)",
    },
}
_ROLE_STYLE: dict[str, dict[str, Any]] = {
    "baseline": {"marker": "s", "color": "tab:orange", "s": 150},
    "recommended": {"marker": "*", "color": "tab:red", "s": 260},
}


def _scatter(ax: Axes, markers: Sequence[PlotPoint]) -> None:
    for kind, style in _STYLE.items():
        chosen = [m for m in markers if m.kind == kind]
        if chosen:
            xs = [m.latency_ms for m in chosen]
            ax.scatter(xs, [m.energy_per_output_token_j for m in chosen], zorder=2, **style)
    for role, style in _ROLE_STYLE.items():
        for m in (m for m in markers if m.role == role):
            ax.scatter([m.latency_ms], [m.energy_per_output_token_j], label=role, zorder=3, **style)


def _plain_ticks(ax: Axes, values: Sequence[float]) -> None:
    """`0.12`, not `1.2 x 10^-1`; within one decade the minor ticks are labelled too (a log
    axis over less than a decade would otherwise show one label or none)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    one_decade = max(values) < 10 * min(values)
    ax.yaxis.set_minor_formatter(plain if one_decade else NullFormatter())


def _title(ax: Axes, spec: BenchmarkSpec, provenance: Provenance | None) -> None:
    where = "origin unknown" if provenance is None else provenance.sentence()
    predicted = provenance is not None and provenance.predicted
    ax.set_title(
        f"{spec.model}\n{where}",
        fontsize=9,
        color="#8a1c00" if predicted else "black",
        fontweight="bold" if predicted else "normal",
    )
    if predicted:
        ax.text(
            0.5, 0.5, "PREDICTED", transform=ax.transAxes, ha="center", va="center",
            fontsize=64, rotation=18, color="#8a1c00", alpha=0.07, zorder=0,
        )  # fmt: skip


def _label(ax: Axes, markers: Sequence[PlotPoint]) -> None:
    """Name every marker, each label where it covers no other label or marker if it can;
    the baseline and the recommendation first, so theirs get the best places."""
    renderer = ax.figure.canvas.get_renderer()  # type: ignore[attr-defined]
    area = ax.get_window_extent(renderer)
    markers_px = [_marker_box(ax, m) for m in markers]
    labels_px: list[Bbox] = []
    for m in sorted(markers, key=lambda m: (not m.role, m.latency_ms)):
        own = _marker_box(ax, m)
        others = [b for b in markers_px if not _same(b, own)] + labels_px
        labels_px.append(_place(ax, m, renderer, area, others))


def _place(ax: Axes, m: PlotPoint, renderer: Any, area: Bbox, others: Sequence[Bbox]) -> Bbox:
    """Put `m`'s label at the first offset where it fits; return where it went."""
    for offset in _OFFSETS_PT:
        note = _annotate(ax, m, offset)
        box: Bbox = note.get_window_extent(renderer)
        if _inside(box, area) and not any(box.overlaps(b) for b in others):
            return box
        note.remove()
    # Nowhere free: the first place, overlapping, beats a point without a name.
    last: Bbox = _annotate(ax, m, _OFFSETS_PT[0]).get_window_extent(renderer)
    return last


def _annotate(ax: Axes, m: PlotPoint, offset: tuple[float, float]) -> Any:
    # The baseline's and the recommendation's markers are larger: their labels sit further out.
    scale = 1.8 if m.role else 1.0
    dx, dy = offset
    return ax.annotate(
        m.label,
        (m.latency_ms, m.energy_per_output_token_j),
        xytext=(dx * scale, dy * scale),
        textcoords="offset points",
        ha="left" if dx > 0 else "right",
        fontsize=_LABEL_FONT_PT,
        fontweight="bold" if m.role else "normal",
        color=_label_color(m),
        zorder=4,
    )


def _inside(box: Bbox, area: Bbox) -> bool:
    return bool(area.x0 <= box.x0 and box.x1 <= area.x1 and area.y0 <= box.y0 and box.y1 <= area.y1)


def _label_color(m: PlotPoint) -> str:
    if m.role == "recommended":
        return "#b00000"
    if m.role == "baseline":
        return "#b35900"
    return "#999999" if m.kind == "invalid" else "#333333"


def _marker_box(ax: Axes, m: PlotPoint) -> Bbox:
    from matplotlib.transforms import Bbox

    x, y = ax.transData.transform((m.latency_ms, m.energy_per_output_token_j))
    h = _MARKER_HALF_PX * (2.0 if m.role else 1.0)  # the star and the square are larger
    return Bbox.from_extents(x - h, y - h, x + h, y + h)


def _same(a: Bbox, b: Bbox) -> bool:
    return bool((a.get_points() == b.get_points()).all())
