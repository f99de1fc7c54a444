"""The live progress display of `jouletune tune` (rich): trial n/N, current config, best so far.

On a terminal a live panel is redrawn in place; elsewhere (CI logs, tests) each event is one
plain line, so logs stay readable.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.table import Table

from jouletune.tuner._point import Point
from jouletune.tuner._records import TrialPlan, TrialRecord, TrialState
from jouletune.tuner.spec import BenchmarkSpec

__all__ = ["Progress"]


class Progress:
    """Implements the loop's `LoopObserver`; use as a context manager."""

    def __init__(self, *, spec: BenchmarkSpec, console: Console, done: int = 0) -> None:
        self._spec = spec
        self._console = console
        self._metric = spec.objective.value
        self._done = done
        self._server = "-"
        self._current = "-"
        self._best: TrialRecord | None = None
        self._live: Live | None = None

    def __enter__(self) -> Progress:
        if self._console.is_terminal:
            self._live = Live(self._render(), console=self._console, refresh_per_second=4)
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)

    def server_starting(self, config: Point) -> None:
        """Show the server being started."""
        self._server = f"{config.server_label()} (starting)"
        self._say(f"starting server {config.server_label()}")

    def trial_started(self, plan: TrialPlan) -> None:
        """Show the plan being measured."""
        self._server = plan.point.server_label()
        repeat = f" repeat {plan.repeat}" if plan.repeat else ""
        self._current = f"#{plan.number} {plan.role.value}{repeat}: {plan.point.label()}"
        if self._live is None:
            self._say(f"{self._counter()} {self._current}: measuring")
        else:
            self._refresh()

    def trial_finished(self, record: TrialRecord) -> None:
        """Log the trial's figures and update the best feasible point so far."""
        if record.measured and record.role.value != "finalist":
            self._done += 1
        if record.state is TrialState.COMPLETE and record.feasible is not False:
            best = self._best
            energy = record.energy_per_output_token_j or float("inf")
            if best is None or energy < (best.energy_per_output_token_j or float("inf")):
                self._best = record
        self._say(f"{self._counter()} {_describe(record, self._metric)}")

    def _counter(self) -> str:
        return f"[{self._done}/{self._spec.budget.max_trials}]"

    def _say(self, line: str) -> None:
        self._console.print(line, highlight=False, markup=False, soft_wrap=True)
        self._refresh()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _render(self) -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_row("trials", self._counter())
        table.add_row("server", self._server)
        table.add_row("measuring", self._current)
        best = "-" if self._best is None else _describe(self._best, self._metric)
        table.add_row("best so far", best)
        return table


def _describe(record: TrialRecord, metric: str) -> str:
    head = f"#{record.number} {record.role.value} {record.point.label()}"
    if record.state is TrialState.FAILED:
        return f"{head}: failed: {record.fail_reason}"
    if record.state is TrialState.RUNNING or record.energy_per_output_token_j is None:
        return f"{head}: running"
    latency = record.latency_ms.get(metric)
    slo = "" if record.feasible is None else (" meets SLO" if record.feasible else " misses SLO")
    dup = f" (as #{record.duplicate_of})" if record.duplicate_of is not None else ""
    shown = "?" if latency is None else f"{latency:.2f}"
    return f"{head}: {record.energy_per_output_token_j:.4g} J/token, {metric} {shown} ms{slo}{dup}"
