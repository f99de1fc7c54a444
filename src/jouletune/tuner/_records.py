"""What crosses the search core's boundary: plans out, outcomes in, records for everyone.

`TrialPlan` is what `Study.ask()` hands a runner; `TrialOutcome` is what the runner hands
back to `Study.tell()`; `TrialRecord` is one trial as the CLI's report and the operator's
status show it (camelCase on the wire). A record nests the trial's `Point` and its
`TrialFigures` instead of copying their fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from jouletune.loadgen import CheckResult
from jouletune.tuner._figures import TrialFigures
from jouletune.tuner._point import Point
from jouletune.tuner._provenance import Provenance
from jouletune.tuner.spec import LatencyMetric, SloSpec

__all__ = ["Role", "TrialOutcome", "TrialPlan", "TrialRecord", "TrialState"]


class Role(StrEnum):
    """Why a trial runs."""

    BASELINE = "baseline"  # the engine's defaults, no cap: what savings are measured against
    SEARCH = "search"  # proposed by the sampler or the boundary search, or a power step
    FINALIST = "finalist"  # a repeat of a candidate before it is recommended


class TrialState(StrEnum):
    """Where a trial stands."""

    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(frozen=True, kw_only=True)
class TrialPlan:
    """One measurement to run: a point of the space, and why.

    Attributes:
        number: the Optuna trial number; `Study.tell` takes the plan (or this number) back.
        role: baseline, search or finalist.
        point: the server configuration and power limit.
        repeat: 0 for the first measurement of a point, then 1, 2, ... for finalist repeats.
    """

    number: int
    role: Role
    point: Point
    repeat: int = 0


@dataclass(frozen=True, kw_only=True)
class TrialOutcome:
    """What a runner measured for one plan, or why it could not.

    Attributes:
        figures: what the measurement found; None when nothing was measured.
        fail_reason: one line saying why the trial failed; None when it counts. A measurement
            that failed its validity checks has both: it is kept and shown, never ranked.
        checks: the measurement's validity checks.
        held_back_by: what the diagnosis says held the measurement back (load, power cap, api
            server, scheduler, memory bandwidth, compute), and `diagnosis` its one sentence.
        provenance: measured or predicted, and on what; None when nothing was measured.
        duration_s: wall-clock seconds the measurement took (drain, warm-up, window, cool-down).
        server_start_s: seconds spent starting a server for this plan; None when one that
            was already running served it.
        server_run: names the server start that served it (measurements under one start
            differ only in their power limit, for the cap report).
        power_limit_w: the per-GPU limit in force while measuring, read back from the GPU.
        result_path: where the runner stored the full result and logs, if anywhere.
        warnings: what the measurement warned of (the bench's warnings: merged tokens, failed
            scrapes, power that did not settle).
    """

    figures: TrialFigures | None = None
    fail_reason: str | None = None
    checks: tuple[CheckResult, ...] = ()
    held_back_by: str | None = None
    diagnosis: str | None = None
    provenance: Provenance | None = None
    duration_s: float = 0.0
    server_start_s: float | None = None
    server_run: str | None = None
    power_limit_w: float | None = None
    result_path: str | None = None
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        assert self.figures is not None or self.fail_reason is not None, (
            "an outcome has figures, a reason, or both"
        )


class TrialRecord(BaseModel):
    """One trial; units in field names.

    Attributes:
        number: the trial number (Optuna's).
        role: why it ran.
        state: running, complete or failed.
        repeat: 0, or the finalist repeat's count.
        point: what it measured.
        figures: what it found: a complete trial's, or a failed one's that was measured but
            failed its validity checks (shown, never ranked).
        checks: the validity checks of its measurement (`jouletune.loadgen.CheckResult`).
        held_back_by: what held it back, by the measurement's diagnosis.
        diagnosis: the diagnosis' sentence: what held it back and which knob moves it.
        provenance: whether its figures were measured or predicted by the simulator, and on
            what; None when nothing was measured (or the record predates provenance).
        measured_power_limit_w: the limit read back from the GPU while measuring.
        slo_excess_ms: each SLO statistic minus its bound (<= 0 meets it).
        feasible: met every SLO (complete trials only).
        duration_s: wall time of the measurement.
        server_start_s: time spent starting its server, if it started one.
        fail_reason: why it failed, one line.
        result_path: where the full result and logs are.
        warnings: what its measurement warned of, one line each.
        duplicate_of: answered from this earlier trial of the same point.
        interrupted: its process died before it finished; it is measured again.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )

    number: int = Field(ge=0)
    role: Role
    state: TrialState
    repeat: int = 0
    point: Point
    figures: TrialFigures | None = None
    checks: list[CheckResult] = Field(default_factory=list)
    held_back_by: str | None = None
    diagnosis: str | None = None
    provenance: Provenance | None = None
    measured_power_limit_w: float | None = None
    slo_excess_ms: dict[str, float] = Field(
        default_factory=dict, description="statistic minus its SLO bound (<= 0 meets it)"
    )
    feasible: bool | None = Field(None, description="met every SLO")
    duration_s: float = 0.0
    server_start_s: float | None = None
    server_run: str | None = Field(None, description="the server start that served it")
    fail_reason: str | None = Field(None, description="why the trial failed, one line")
    result_path: str | None = None
    warnings: list[str] = Field(default_factory=list, description="the measurement's warnings")
    duplicate_of: int | None = Field(None, description="answered from this earlier trial")
    interrupted: bool = False

    @property
    def energy_per_output_token_j(self) -> float | None:
        """J/output-token, when measured."""
        return None if self.figures is None else self.figures.energy_per_output_token_j

    @property
    def latency_ms(self) -> dict[str, float]:
        """The latency statistics measured (empty when not measured)."""
        return {} if self.figures is None else self.figures.latency_ms

    @property
    def gpu_s(self) -> float:
        """GPU-seconds this trial held: its wall time (server start included) times its GPUs."""
        return (self.duration_s + (self.server_start_s or 0.0)) * self.point.tensor_parallel_size

    @property
    def measured(self) -> bool:
        """Ran to an end here: not running, not interrupted, not answered from another."""
        return (
            self.state is not TrialState.RUNNING
            and not self.interrupted
            and self.duplicate_of is None
        )

    def finished(
        self, outcome: TrialOutcome, *, slos: Sequence[SloSpec], objective: LatencyMetric
    ) -> TrialRecord:
        """This running trial with `outcome` told: complete with its SLO verdict, or failed.

        A measurement that lacks the objective's statistic or one an SLO bounds fails.
        """
        common = {
            "checks": list(outcome.checks),
            "held_back_by": outcome.held_back_by,
            "diagnosis": outcome.diagnosis,
            "provenance": outcome.provenance,
            "duration_s": outcome.duration_s,
            "server_start_s": outcome.server_start_s,
            "server_run": outcome.server_run,
            "measured_power_limit_w": outcome.power_limit_w,
            "result_path": outcome.result_path,
            "warnings": list(outcome.warnings),
        }
        figures = outcome.figures
        needed = dict.fromkeys([objective, *(s.metric for s in slos)])
        missing = [m.value for m in needed if figures and figures.latency(m) is None]
        if figures is None or missing or outcome.fail_reason:
            reason = outcome.fail_reason or f"the bench reported no {', '.join(missing)}"
            update = {**common, "state": TrialState.FAILED, "fail_reason": reason}
            return self.model_copy(update={**update, "figures": figures})
        excess = {s.metric.value: figures.latency_ms[s.metric.value] - s.max_ms for s in slos}
        return self.model_copy(
            update={
                **common,
                "state": TrialState.COMPLETE,
                "figures": figures,
                "slo_excess_ms": excess,
                "feasible": all(v <= 0 for v in excess.values()),
            }
        )
