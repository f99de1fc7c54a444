"""The profile as text: fitted parameters, each point's measured and simulated figures, the fit.

Pure functions returning lines; the CLI prints them. Simulated figures are the calibrated
simulator's replays of the measured runs: predictions, labelled `sim`, never `measured`.
"""

from __future__ import annotations

from jouletune.profile import GpuProfile, ProfileFigures, ProfileParameters

__all__ = ["parameter_lines", "point_lines", "summary_lines"]

# (figure, column title, format) of the point table.
_COLUMNS = (
    ("j_per_output_token", "J/tok", ".4f"),
    ("itl_ms_p50", "ITL p50 ms", ".2f"),
    ("ttft_ms_p50", "TTFT p50 ms", ".1f"),
    ("avg_power_w", "W/GPU", ".0f"),
    ("sm_clock_mhz", "SM MHz", ".0f"),
)


def parameter_lines(profile: GpuProfile, built_in: ProfileParameters) -> list[str]:
    """One row per parameter: built-in value, the profile's, where it came from, ± (fitted)."""
    std = profile.fit.relative_std if profile.fit else {}
    lines = [f"{'parameter':<26}{'built-in':>12}{'profile':>12}  {'source':<9}{'±':>7}"]
    for name in ProfileParameters.model_fields:
        old, new = getattr(built_in, name), getattr(profile.parameters, name)
        spread = f"{std[name]:.1%}" if name in std else ""
        lines.append(f"{name:<26}{old:>12.4g}{new:>12.4g}  {profile.sources[name]:<9}{spread:>7}")
    return lines


def point_lines(profile: GpuProfile) -> list[str]:
    """Per point and figure: measured, simulated (the calibrated replay), error."""
    head = f"{'point':<24}" + "".join(f"{title:>26}" for _, title, _ in _COLUMNS)
    sub = f"{'':<24}" + "".join(f"{'meas':>9}{'sim':>9}{'err':>8}" for _ in _COLUMNS)
    lines = [head, sub]
    for point in profile.points:
        mark = "" if point.used_in_fit else " *"
        row = f"{point.name + mark:<24}"
        for figure, _, fmt in _COLUMNS:
            row += _cell(point.measured, point.predicted, figure, fmt)
        lines.append(row)
    if any(not p.used_in_fit for p in profile.points):
        lines.append("* left out of the fit: " + "; ".join(
            f"{p.name}: {p.excluded_reason}" for p in profile.points if not p.used_in_fit
        ))  # fmt: skip
    return lines


def summary_lines(profile: GpuProfile) -> list[str]:
    """The fit's cost and per-figure RMS errors before and after, and what stays a prediction."""
    lines = []
    if profile.fit is not None:
        fit = profile.fit
        state = "converged" if fit.converged else "stopped at its evaluation budget"
        lines.append(
            f"fit: cost {fit.cost_built_in:.4g} (built-in) -> {fit.cost_fitted:.4g}; "
            f"{fit.evaluations} replays of the plan, {state}"
        )
        for figure, after in fit.rms_error_fitted.items():
            before = fit.rms_error_built_in.get(figure)
            was = f"{before:.1%} -> " if before is not None else ""
            lines.append(f"  rms error {figure}: {was}{after:.1%}")
    for name in profile.fitted():
        value = getattr(profile.parameters, name)
        if name.endswith("_efficiency") and value > 1:
            lines.append(
                f"{name} {value:.3g} is above 1: the model counts more bytes or flops for "
                "that kernel than this engine moves, and the efficiency absorbs the difference"
            )
    if not profile.power_limits_measured:
        lines.append(
            "power limits were not measured: the response to a cap (dram_w, the clock "
            "model) is built-in, so any cap saving the simulator shows is a prediction"
        )
    if not profile.clock_locks_measured:
        lines.append(
            "SM clock locks were not measured: the response to a lock (dram_w, the clock "
            "model) is built-in, so any clock-lock saving the simulator shows is a prediction"
        )
    return lines


def _cell(measured: ProfileFigures, predicted: ProfileFigures | None, figure: str, fmt: str) -> str:
    m = getattr(measured, figure)
    p = None if predicted is None else getattr(predicted, figure)
    m_text = "-" if m is None else format(m, fmt)
    p_text = "-" if p is None else format(p, fmt)
    err = f"{p / m - 1:+.1%}" if m and p is not None else ""
    return f"{m_text:>9}{p_text:>9}{err:>8}"
