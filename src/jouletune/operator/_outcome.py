"""Read a trial pod: still running, measured, or failed — and if failed, why.

Pure functions of the pod's JSON and the clock, so every failure path is tested without a
cluster. Reasons are the words Kubernetes itself uses where it has one (Unschedulable,
ImagePullBackOff, OOMKilled, CrashLoopBackOff), else jouletune's own (Timeout,
EngineNotReady, InvalidMeasurement, ...).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from jouletune.operator._containers import CONTAINER_ENGINE, CONTAINER_LOADGEN
from jouletune.operator._wire import PodResult, ResultError

__all__ = ["PodOutcome", "Timeouts", "classify_pod", "parse_time_s"]

# Waiting reasons after which a container will not start by itself. ErrImagePull is left
# out: the kubelet retries it once before it becomes ImagePullBackOff.
_STUCK_WAITING = frozenset(
    {
        "ImagePullBackOff",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
# Pod-level failure reasons the kubelet sets, and the trial reason each becomes.
_POD_REASONS = {"DeadlineExceeded": "Timeout", "Evicted": "Evicted"}


@dataclass(frozen=True, kw_only=True)
class Timeouts:
    """When the operator stops waiting for a pod.

    Attributes:
        unschedulable_s: how long a pod may stay Unschedulable.
        trial_s: how long a pod may exist in all (engine start-up plus measurement plus grace).
    """

    unschedulable_s: float
    trial_s: float


@dataclass(frozen=True, kw_only=True)
class PodOutcome:
    """What a trial pod says now.

    Attributes:
        state: `running` (wait), `done` (the pod measured its points) or `failed`.
        result: the pod's result when done (each point's figures or reason).
        reason: one word when failed.
        message: one line when failed.
    """

    state: Literal["running", "done", "failed"]
    result: PodResult | None = None
    reason: str | None = None
    message: str | None = None

    @classmethod
    def failed(cls, reason: str, message: str) -> PodOutcome:
        """A failed trial."""
        return cls(state="failed", reason=reason, message=" ".join(message.split())[:300])


_RUNNING = PodOutcome(state="running")


def classify_pod(pod: Mapping[str, Any], *, now_s: float, timeouts: Timeouts) -> PodOutcome:
    """The outcome of a trial pod at unix time `now_s`."""
    status = pod.get("status") or {}
    loadgen = _container(status.get("containerStatuses"), CONTAINER_LOADGEN)
    terminated = ((loadgen or {}).get("state") or {}).get("terminated")
    if terminated is not None:
        return _from_loadgen(terminated)
    stuck = _stuck_container(status)
    if stuck is not None:
        return stuck
    phase = status.get("phase")
    if phase == "Failed":
        reason = str(status.get("reason") or "PodFailed")
        return PodOutcome.failed(_POD_REASONS.get(reason, reason), status.get("message") or reason)
    if phase == "Succeeded":
        return PodOutcome.failed("NoResult", "the pod succeeded without a load generator result")
    created_s = parse_time_s((pod.get("metadata") or {}).get("creationTimestamp"))
    age_s = None if created_s is None else now_s - created_s
    unschedulable = _unschedulable(status)
    if unschedulable is not None and age_s is not None and age_s > timeouts.unschedulable_s:
        return PodOutcome.failed(
            "Unschedulable", f"not scheduled after {age_s:.0f} s: {unschedulable}"
        )
    if age_s is not None and age_s > timeouts.trial_s:
        return PodOutcome.failed(
            "Timeout", f"the trial did not finish within {timeouts.trial_s:.0f} s"
        )
    return _RUNNING


def parse_time_s(text: object) -> float | None:
    """Unix seconds of a Kubernetes timestamp (RFC 3339), or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _from_loadgen(terminated: Mapping[str, Any]) -> PodOutcome:
    message = str(terminated.get("message") or "")
    code = terminated.get("exitCode")
    try:
        result = PodResult.from_message(message) if message else None
    except ResultError as err:
        result = None
        parse_error = str(err)
    else:
        parse_error = "the load generator wrote no termination message"
    if result is not None and not result.ok:
        return PodOutcome.failed(result.reason or "Error", result.message or "no message")
    if terminated.get("reason") == "OOMKilled":
        return PodOutcome.failed("OOMKilled", "the load generator ran out of memory")
    if code != 0:
        return PodOutcome.failed("Error", f"the load generator exited with code {code}")
    if result is None:
        return PodOutcome.failed("InvalidResult", parse_error)
    if not result.trials:
        return PodOutcome.failed("InvalidResult", "the result names no measured point")
    return PodOutcome(state="done", result=result)


def _stuck_container(status: Mapping[str, Any]) -> PodOutcome | None:
    for container in _all_containers(status):
        state = container.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in _STUCK_WAITING:
            name = container.get("name", "?")
            detail = waiting.get("message") or waiting["reason"]
            return PodOutcome.failed(waiting["reason"], f"container {name}: {detail}")
        if container.get("name") == CONTAINER_ENGINE:
            # A restarted sidecar keeps its last end in lastState.
            last = (container.get("lastState") or {}).get("terminated")
            for ended in (state.get("terminated"), last):
                if ended and ended.get("reason") == "OOMKilled":
                    code = ended.get("exitCode")
                    return PodOutcome.failed(
                        "OOMKilled", f"the engine ran out of memory (exit code {code})"
                    )
    return None


def _all_containers(status: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for key in ("initContainerStatuses", "containerStatuses"):
        yield from status.get(key) or []


def _container(statuses: Any, name: str) -> Mapping[str, Any] | None:
    return next((c for c in statuses or [] if c.get("name") == name), None)


def _unschedulable(status: Mapping[str, Any]) -> str | None:
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            return str(condition.get("message") or "Unschedulable")
    return None
