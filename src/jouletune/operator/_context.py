"""What every benchmark loop of one operator shares, and the Events it posts."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import kopf

from jouletune.operator._config import OperatorConfig
from jouletune.operator._kube import KubeApi
from jouletune.operator._metrics import OperatorMetrics
from jouletune.tuner import BenchmarkSpec, TrialRecord, TrialState

__all__ = ["Context", "EventSink", "kopf_events", "trial_events"]


class EventSink(Protocol):
    """Posts Kubernetes Events about a benchmark (Kopf's `kopf.event` in the operator)."""

    def __call__(self, body: Mapping[str, Any], *, type: str, reason: str, message: str) -> None:
        """Post one event."""


def kopf_events(body: Mapping[str, Any], *, type: str, reason: str, message: str) -> None:
    """Post through Kopf's event queue (batched, rate-limited by Kopf)."""
    kopf.event(body, type=type, reason=reason, message=message)  # type: ignore[arg-type]


@dataclass
class Context:
    """What every benchmark loop of one operator shares."""

    kube: KubeApi
    config: OperatorConfig
    metrics: OperatorMetrics
    events: EventSink = kopf_events
    wakeups: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)

    def wakeup(self, namespace: str, name: str) -> asyncio.Event:
        """The event a pod change sets to wake this benchmark's loop."""
        return self.wakeups.setdefault((namespace, name), asyncio.Event())


def trial_events(
    record: TrialRecord, reason: str | None, spec: BenchmarkSpec
) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events saying how a trial ended: its J/token and the
    latency statistics the spec is about, or why it failed; then one Warning for each thing
    its measurement warned of (an ITL of merged tokens, a failed scrape)."""
    warnings = [
        ("Warning", "TrialWarning", f"trial {record.number}: {warning}")
        for warning in record.warnings
    ]
    if record.state is TrialState.COMPLETE and record.figures is not None:
        latency = ", ".join(
            f"{m.value} {v:.4g} ms"
            for m in spec.latency_metrics()
            if (v := record.figures.latency(m)) is not None
        )
        message = (
            f"trial {record.number}: {record.point.label()}: "
            f"{record.figures.energy_per_output_token_j:.4g} J/token, {latency}"
        )
        return [("Normal", "TrialFinished", message), *warnings]
    failed = f"trial {record.number}: {reason}: {record.fail_reason}"
    return [("Warning", "TrialFailed", failed), *warnings]
