"""What travels between the operator and a trial pod.

Into the pod: a `PodPlan` (JSON in the load generator's `JOULETUNE_TRIAL` variable): the
spec, the trial's point and the riders to sweep under the same engine start, and where the
engine and the exporter listen. Out of the pod: a `PodResult` in the load generator's
termination message, which Kubernetes keeps for at most 4096 bytes: each measured point
with its `TrialFigures` (the tuner's own model), compressed when plain JSON would not fit.
"""

from __future__ import annotations

import base64
import gzip
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jouletune.loadgen import CheckResult
from jouletune.tuner import BenchmarkSpec, Point, Provenance, Role, TrialFigures, TrialOutcome

__all__ = [
    "ENV_PLAN",
    "TERMINATION_MESSAGE_MAX_BYTES",
    "PodPlan",
    "PodResult",
    "PodTrial",
    "ResultError",
    "dumps_plan",
]

ENV_PLAN = "JOULETUNE_TRIAL"
# The kubelet truncates a termination message beyond 4096 bytes (and beyond 12 KiB for all
# containers of a pod together); a truncated JSON could not be parsed at all.
TERMINATION_MESSAGE_MAX_BYTES = 4096
# A point's warnings travel in that message too: the first few, each cut to one line.
_WARNINGS_KEPT = 2
# A message that starts so is base64 of gzip'd JSON: figures compress about 4x.
_GZIP_PREFIX = "gz:"
# Figures keep 6 significant digits: far finer than run-to-run noise, and short.
_DIGITS = 6


class ResultError(ValueError):
    """A termination message that is not a trial result."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _as_found() -> list[float | None]:
    return [None]


def _unlocked() -> list[int | None]:
    return [None]


class PodPlan(_Model):
    """Everything the load generator container needs, rendered by the operator.

    Attributes:
        benchmark: `namespace/name` of the EnergyBenchmark, for logs.
        trial: the trial number of the first point (the plan the study asked for).
        role: why that trial runs.
        points: the plan's point, then its riders (same server, lower caps or clock locks),
            in order.
        walk: stop the riders where the CLI's walk would; False measures them all.
        caps: the search's power limits, None (as found) first, then downwards.
        clocks: the search's SM clock locks, None (unlocked) first, then downwards.
        spec: the benchmark's spec (workload, SLOs, timeouts).
        engine_url: the engine in the same pod.
        exporter_url: the exporter sidecar's metrics; None when energy is read where
            `spec.energy` names (the cluster's dcgm-exporter, Kepler or Prometheus).
        control_url: the exporter's loopback control port, which changes power limits and
            clock locks; None when no point has a cap or a lock.
        gpus_file: where the engine lists the UUIDs of its GPUs, whose energy counts among
            the node's (or the cluster's) that `spec.energy` serves; None when energy comes
            from the sidecar, which exports only those already.
    """

    benchmark: str
    trial: Annotated[int, Field(ge=0)]
    role: Role
    points: Annotated[list[Point], Field(min_length=1)]
    walk: bool = True
    caps: list[float | None] = Field(default_factory=_as_found)
    clocks: list[int | None] = Field(default_factory=_unlocked)
    spec: BenchmarkSpec
    engine_url: str
    exporter_url: str | None = None
    control_url: str | None = None
    gpus_file: str | None = None


class PodTrial(_Model):
    """One point a trial pod measured, or why it could not.

    Attributes:
        point: what was measured.
        figures: what it found; None when nothing was measured.
        fail_reason: why it failed, one line (with figures: it failed its validity checks).
        checks: the failed validity checks (the pod's termination message has 4 KiB; the
            full list is in its result.json).
        held_back_by: what the diagnosis says held it back; `diagnosis` its sentence.
        provenance: measured or predicted by the simulator, and on what.
        duration_s: wall time of the measurement.
        power_limit_w: the per-GPU limit read back while measuring.
        warnings: what the measurement warned of (the first few, one line each).
    """

    point: Point
    figures: TrialFigures | None = None
    fail_reason: str | None = None
    checks: list[CheckResult] = Field(default_factory=list)
    held_back_by: str | None = None
    diagnosis: str | None = None
    provenance: Provenance | None = None
    duration_s: float = 0.0
    power_limit_w: float | None = None
    warnings: list[str] = Field(default_factory=list)

    @classmethod
    def of(cls, point: Point, outcome: TrialOutcome) -> PodTrial:
        """The wire form of one measurement, figures rounded to 6 significant digits."""
        figures = outcome.figures
        return cls(
            point=point,
            figures=None if figures is None else _rounded(figures),
            fail_reason=None if outcome.fail_reason is None else _one_line(outcome.fail_reason),
            checks=[c for c in outcome.checks if c.verdict == "fail"],
            held_back_by=outcome.held_back_by,
            diagnosis=outcome.diagnosis,
            provenance=outcome.provenance,
            duration_s=round(outcome.duration_s, 3),
            power_limit_w=outcome.power_limit_w,
            warnings=[_one_line(w, 300) for w in outcome.warnings[:_WARNINGS_KEPT]],
        )

    def outcome(self, *, duration_s: float | None = None, pod: str | None = None) -> TrialOutcome:
        """The tuner's outcome of this measurement; a point the pod could not measure fails
        as InvalidMeasurement, with the pod's reason. `pod` names the engine start (one per
        pod) that served it."""
        reason = None
        if self.figures is None or self.fail_reason:
            reason = f"InvalidMeasurement: {self.fail_reason or 'no figures reported'}"
        return TrialOutcome(
            figures=self.figures,
            fail_reason=reason,
            checks=tuple(self.checks),
            held_back_by=self.held_back_by,
            diagnosis=self.diagnosis,
            server_run=pod,
            provenance=self.provenance,
            duration_s=self.duration_s if duration_s is None else duration_s,
            power_limit_w=self.power_limit_w,
            warnings=tuple(self.warnings),
        )


class PodResult(_Model):
    """A trial pod's outcome: each point it measured, or why it measured nothing.

    `ok` is False when nothing was measured (the engine never answered, a bad plan); the
    `trials` of an ok result each carry figures or their own reason.
    """

    v: Literal[2] = 2
    ok: bool
    reason: str | None = Field(None, description="one word when not ok, e.g. EngineNotReady")
    message: str | None = None
    trials: list[PodTrial] = Field(default_factory=list)

    @classmethod
    def failure(cls, reason: str, message: str) -> PodResult:
        """A result saying why nothing was measured."""
        return cls(ok=False, reason=reason, message=_one_line(message))

    def to_message(self) -> str:
        """The termination message: compact JSON, or gzip+base64 of it past 4096 bytes; the
        points' warnings are left out if they alone would not let it fit (result.json keeps
        them)."""
        text = self._packed()
        if len(text.encode()) > TERMINATION_MESSAGE_MAX_BYTES:
            bare = [t.model_copy(update={"warnings": []}) for t in self.trials]
            text = self.model_copy(update={"trials": bare})._packed()
        assert len(text.encode()) <= TERMINATION_MESSAGE_MAX_BYTES, (
            f"a trial result of {len(self.trials)} points does not fit: {len(text)=}"
        )
        return text

    def _packed(self) -> str:
        text = self.model_dump_json(exclude_none=True)
        if len(text.encode()) <= TERMINATION_MESSAGE_MAX_BYTES:
            return text
        return _GZIP_PREFIX + base64.b64encode(gzip.compress(text.encode(), mtime=0)).decode()

    @classmethod
    def from_message(cls, text: str) -> PodResult:
        """Parse a termination message; raise ResultError with one line if it is not one."""
        try:
            if text.startswith(_GZIP_PREFIX):
                text = gzip.decompress(base64.b64decode(text[len(_GZIP_PREFIX) :])).decode()
            return cls.model_validate_json(text)
        except (ValueError, OSError) as err:
            if isinstance(err, ValidationError):
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "message"
                raise ResultError(f"not a trial result ({where}: {first['msg']})") from None
            raise ResultError(f"not a trial result ({err})") from None


def dumps_plan(plan: PodPlan) -> str:
    """The plan as the JSON the pod's environment carries."""
    return json.dumps(plan.model_dump(mode="json"), separators=(",", ":"))


def _rounded(figures: TrialFigures) -> TrialFigures:
    data = figures.model_dump()
    for name, value in data.items():
        if isinstance(value, float):
            data[name] = _r(value)
    data["latency_ms"] = {k: _r(v) for k, v in figures.latency_ms.items()}
    return TrialFigures.model_validate(data)


def _r(number: float) -> float:
    return float(f"{number:.{_DIGITS}g}")


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
