"""The readable summary of a `BenchResult` (rich tables); the only place results are printed."""

from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from jouletune.loadgen._result import BenchResult, LatencySummary

__all__ = ["print_summary", "summary"]


def _num(value: float | None, fmt: str = ",.2f", unit: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:{fmt}}{unit}"


def _overview(result: BenchResult) -> Table:
    cfg, w = result.config, result.window
    table = Table(title="jouletune bench", show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    rows: list[tuple[str, str]] = [
        ("server / model", f"{cfg.base_url} / {result.environment.server_model}"),
        ("workload", _workload_line(result)),
        ("prompt tokens, counted / requested", _prompt_line(result)),
        ("successful / failed requests", f"{result.completed} / {result.failed}"),
        ("run duration", _num(result.duration_s, ".2f", " s")),
        (
            "steady-state window",
            f"{w.start_s:.2f}–{w.end_s:.2f} s ({w.duration_s:.2f} s)" if w else "none",
        ),
        ("window output tokens", _num(result.window_output_tokens, ",.0f")),
        ("request throughput", _num(result.request_throughput, ",.2f", " req/s")),
        ("output token throughput", _num(result.output_token_throughput, ",.1f", " tok/s")),
        (
            "avg batch size",
            f"{_num(result.avg_batch_size)} ({result.avg_batch_size_source or '—'})",
        ),
        ("energy (window)", _num(result.energy_j, ",.1f", " J")),
        ("energy per output token", _num(result.energy_per_output_token_j, ".4f", " J")),
        ("energy per request", _num(result.energy_per_request_j, ",.2f", " J")),
        ("avg power", _num(result.avg_power_w, ",.1f", " W")),
        ("idle power before run", _num(result.idle_power_w, ",.1f", " W")),
        ("time at power cap", _num(result.power_cap_bound_fraction, ".1%")),
        ("GPU(s)", ", ".join(result.environment.gpu_models) or "—"),
        ("valid", "yes" if result.valid else f"NO: {result.invalid_reason}"),
    ]
    if result.partial:
        rows.append(("partial", "yes: the server was lost mid-run"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def _workload_line(result: BenchResult) -> str:
    cfg = result.config
    if cfg.dataset_name == "random":
        data = f"random {cfg.random_input_len} in / {cfg.random_output_len} out"
    else:
        data = f"{cfg.dataset_name} {cfg.dataset_path}"
    rate = "inf" if cfg.closed_loop else f"{cfg.request_rate:g}/s"
    return (
        f"{data}, {result.workload.sent} req, rate {rate}, concurrency {cfg.max_concurrency or '∞'}"
    )


def _prompt_line(result: BenchResult) -> str:
    w = result.workload
    counted = _num(w.mean_prompt_tokens, ",.1f")
    asked = _num(w.mean_requested_prompt_tokens, ",.1f")
    return f"{counted} / {asked} (tokenizer {w.tokenizer})"


def _latency(result: BenchResult) -> Table:
    table = Table(title=f"latency, ms (scope: {result.latency_scope})", title_justify="left")
    for column in ("metric", "mean", "p50", "p90", "p99"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    stats: list[tuple[str, LatencySummary]] = [
        ("TTFT", result.ttft_ms),
        ("TPOT", result.tpot_ms),
        ("ITL", result.itl_ms),
        ("E2EL", result.e2el_ms),
    ]
    for name, s in stats:
        table.add_row(name, *(_num(v) for v in (s.mean, s.p50, s.p90, s.p99)))
    return table


def summary(result: BenchResult) -> Group:
    """The summary as a rich renderable: overview, the latency table, then any warnings."""
    warnings = [Text(f"warning: {w}", style="yellow") for w in result.warnings]
    return Group(_overview(result), _latency(result), *warnings)


def print_summary(result: BenchResult, console: Console | None = None) -> None:
    """Print the summary (to stdout unless a console is given)."""
    (console or Console()).print(summary(result))
