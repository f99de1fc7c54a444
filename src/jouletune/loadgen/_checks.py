"""Validity checks on every measurement: each a name, a threshold, the measured value and a
verdict. A failed check makes the result invalid (it is kept, with its figures, and never
ranks); a check that cannot be measured (Kepler exports no SM clock) says `unknown` and does
not invalidate.

The anchor is MLPerf Power's rules (a minimum run length, enough power samples inside the
measured interval, no meter errors) and the ML.ENERGY benchmark's steady state; the defaults
are sized for jouletune's 20 Hz counter reads (docs/measurement.md says why each is what it
is).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = ["CheckResult", "Evidence", "ValidityThresholds", "failed", "run_checks"]


class ValidityThresholds(BaseModel):
    """The bounds a measurement must meet to count; the spec's `validity` section (there in
    camelCase: `minWindowS`)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )

    min_window_s: float = Field(3.0, ge=0, description="steady-state window, seconds")
    min_window_output_tokens: int = Field(500, ge=0, description="output tokens in the window")
    min_energy_samples: int = Field(
        20, ge=0, description="fresh energy-counter readings inside the window, per GPU"
    )
    max_counter_decreases: int = Field(
        0, ge=0, description="times a GPU's energy counter went backwards (reset or wrap)"
    )
    max_sm_clock_drift: float = Field(
        0.15, ge=0, description="|mean SM clock, 2nd half - 1st half| / 1st half, per GPU"
    )
    max_temperature_drift_c: float = Field(
        10.0, ge=0, description="|mean temperature, 2nd half - 1st half|, per GPU, °C"
    )
    max_error_rate: float = Field(0.01, ge=0, le=1, description="failed / sent requests")
    max_prompt_tokens_deviation: float = Field(
        0.01, ge=0, description="|prompt tokens the server counted / those asked for - 1|"
    )


class CheckResult(BaseModel):
    """One check of one measurement."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    threshold: float
    measured: float | None
    verdict: Literal["pass", "fail", "unknown"]
    message: str = Field(description="what was measured against what, one line")


@dataclass(frozen=True, kw_only=True)
class Evidence:
    """What the checks look at, from one run (None: not measured)."""

    window_s: float | None
    window_output_tokens: float | None
    energy_samples: int | None  # the fewest of any GPU
    counter_decreases: int | None
    sm_clock_drift: float | None  # the largest of any GPU
    temperature_drift_c: float | None  # the largest of any GPU
    error_rate: float | None
    prompt_tokens_deviation: float | None


@dataclass(frozen=True)
class _Check:
    name: str
    bound: Literal["min", "max"]
    measured: Callable[[Evidence], float | None]
    threshold: Callable[[ValidityThresholds], float]
    unit: str
    hint: str = ""


_CHECKS: tuple[_Check, ...] = (
    _Check("window_duration", "min", lambda e: e.window_s, lambda t: t.min_window_s, "s"),
    _Check("window_output_tokens", "min", lambda e: e.window_output_tokens,
           lambda t: t.min_window_output_tokens, " tokens"),
    _Check("energy_samples", "min", lambda e: e.energy_samples,
           lambda t: t.min_energy_samples, " readings"),
    _Check("energy_counter_monotonic", "max", lambda e: e.counter_decreases,
           lambda t: t.max_counter_decreases, " decreases"),
    _Check("sm_clock_stable", "max", lambda e: e.sm_clock_drift,
           lambda t: t.max_sm_clock_drift, ""),
    _Check("temperature_stable", "max", lambda e: e.temperature_drift_c,
           lambda t: t.max_temperature_drift_c, " °C"),
    _Check("error_rate", "max", lambda e: e.error_rate, lambda t: t.max_error_rate, ""),
    _Check("prompt_tokens_as_requested", "max",
           lambda e: None if e.prompt_tokens_deviation is None else abs(e.prompt_tokens_deviation),
           lambda t: t.max_prompt_tokens_deviation, "",
           "; the prompts were built with another tokenizer than the server's (--tokenizer)"),
)  # fmt: skip


def run_checks(evidence: Evidence, thresholds: ValidityThresholds) -> list[CheckResult]:
    """Every check's verdict on one run, in a fixed order."""
    return [_verdict(check, evidence, thresholds) for check in _CHECKS]


def _verdict(check: _Check, evidence: Evidence, thresholds: ValidityThresholds) -> CheckResult:
    limit = float(check.threshold(thresholds))
    value = check.measured(evidence)
    word = "at least" if check.bound == "min" else "at most"
    if value is None or not math.isfinite(value):
        return CheckResult(
            name=check.name, threshold=limit, measured=None, verdict="unknown",
            message=f"{check.name}: not measured (needs {word} {_fmt(limit)}{check.unit})",
        )  # fmt: skip
    ok = value >= limit if check.bound == "min" else value <= limit
    return CheckResult(
        name=check.name,
        threshold=limit,
        measured=float(value),
        verdict="pass" if ok else "fail",
        message=f"{check.name}: {_fmt(value)}{check.unit}, needs {word} {_fmt(limit)}{check.unit}"
        + ("" if ok else check.hint),
    )


def failed(checks: Sequence[CheckResult]) -> list[str]:
    """The messages of the failed checks."""
    return [c.message for c in checks if c.verdict == "fail"]


def _fmt(value: float) -> str:
    return f"{value:.4g}"
