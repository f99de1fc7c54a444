"""Reading a trial pod's status: every way a trial ends, as the kubelet reports it."""

from __future__ import annotations

from typing import Any

import pytest

from jouletune.operator import PodResult, PodTrial, Timeouts, classify_pod
from jouletune.operator._outcome import parse_time_s
from jouletune.tuner import Point, TrialFigures, TrialOutcome

T0 = "2026-01-01T00:00:00Z"
NOW = parse_time_s(T0) or 0.0
TIMEOUTS = Timeouts(unschedulable_s=300, trial_s=1000)
POINT = Point(tensor_parallel_size=1, max_num_seqs=8, power_limit_w=400.0)
FIGURES = TrialFigures(
    energy_per_output_token_j=0.25, latency_ms={"tpot_p90": 12.0}, avg_power_w=400.0, completed=10
)


def pod(
    *,
    phase: str = "Running",
    loadgen: dict[str, Any] | None = None,
    engine: dict[str, Any] | None = None,
    engine_last: dict[str, Any] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions or [{"type": "PodScheduled", "status": "True"}],
        "initContainerStatuses": [
            {"name": "engine", "state": engine or {"running": {}}, "lastState": engine_last or {}},
            {"name": "exporter", "state": {"running": {}}},
        ],
        "containerStatuses": [{"name": "loadgen", "state": loadgen or {"running": {}}}],
    }
    if reason:
        status["reason"] = reason
    return {"metadata": {"name": "b-trial-0", "creationTimestamp": T0}, "status": status}


def terminated(code: int, message: str = "", reason: str = "Completed") -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": reason, "message": message}}


def test_a_running_pod_is_waited_for() -> None:
    assert classify_pod(pod(), now_s=NOW + 10, timeouts=TIMEOUTS).state == "running"


def test_a_finished_load_generator_gives_each_points_figures() -> None:
    measured = PodTrial.of(POINT, TrialOutcome(figures=FIGURES, power_limit_w=400.0))
    failed = PodTrial.of(
        POINT.model_copy(update={"power_limit_w": 300.0}),
        TrialOutcome(fail_reason="invalid measurement: energy counter went backwards"),
    )
    message = PodResult(ok=True, trials=[measured, failed]).to_message()
    outcome = classify_pod(
        pod(phase="Succeeded", loadgen=terminated(0, message)), now_s=NOW, timeouts=TIMEOUTS
    )
    assert outcome.state == "done" and outcome.result is not None
    first, second = outcome.result.trials
    assert first.figures == FIGURES and first.power_limit_w == 400.0
    assert second.figures is None and "went backwards" in (second.outcome().fail_reason or "")


def test_a_result_without_points_is_invalid() -> None:
    message = PodResult(ok=True).to_message()
    outcome = classify_pod(pod(loadgen=terminated(0, message)), now_s=NOW, timeouts=TIMEOUTS)
    assert (outcome.state, outcome.reason) == ("failed", "InvalidResult")


def test_a_load_generator_that_measured_nothing_says_why() -> None:
    message = PodResult.failure("EngineNotReady", "no /health within 900 s").to_message()
    outcome = classify_pod(
        pod(phase="Failed", loadgen=terminated(1, message, "Error")), now_s=NOW, timeouts=TIMEOUTS
    )
    assert (outcome.reason, outcome.message) == ("EngineNotReady", "no /health within 900 s")


@pytest.mark.parametrize(
    ("message", "code", "reason"),
    [
        ("", 0, "InvalidResult"),
        ("{not json", 0, "InvalidResult"),
        ("", 2, "Error"),
        ("", 137, "OOMKilled"),
    ],
)
def test_a_load_generator_without_a_result(message: str, code: int, reason: str) -> None:
    state = terminated(code, message, "OOMKilled" if code == 137 else "Error")
    outcome = classify_pod(pod(loadgen=state), now_s=NOW, timeouts=TIMEOUTS)
    assert (outcome.state, outcome.reason) == ("failed", reason)


@pytest.mark.parametrize("waiting", ["ImagePullBackOff", "CrashLoopBackOff", "InvalidImageName"])
def test_a_stuck_container_fails_the_trial_at_once(waiting: str) -> None:
    engine = {"waiting": {"reason": waiting, "message": "details"}}
    outcome = classify_pod(pod(engine=engine), now_s=NOW, timeouts=TIMEOUTS)
    assert (outcome.state, outcome.reason) == ("failed", waiting)
    assert outcome.message == "container engine: details"


def test_err_image_pull_is_given_its_retry() -> None:
    engine = {"waiting": {"reason": "ErrImagePull"}}
    assert classify_pod(pod(engine=engine), now_s=NOW, timeouts=TIMEOUTS).state == "running"


def test_an_engine_killed_for_memory_is_oom_even_after_its_restart() -> None:
    now = classify_pod(
        pod(engine=terminated(137, reason="OOMKilled")), now_s=NOW, timeouts=TIMEOUTS
    )
    later = classify_pod(
        pod(engine={"running": {}}, engine_last=terminated(137, reason="OOMKilled")),
        now_s=NOW,
        timeouts=TIMEOUTS,
    )
    assert now.reason == later.reason == "OOMKilled"


def test_unschedulable_fails_only_after_its_timeout() -> None:
    unschedulable = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        }
    ]
    waiting = pod(phase="Pending", conditions=unschedulable)
    assert classify_pod(waiting, now_s=NOW + 299, timeouts=TIMEOUTS).state == "running"
    outcome = classify_pod(waiting, now_s=NOW + 301, timeouts=TIMEOUTS)
    assert outcome.reason == "Unschedulable" and "Insufficient nvidia.com/gpu" in (
        outcome.message or ""
    )


def test_a_pod_that_never_ends_times_out() -> None:
    assert classify_pod(pod(), now_s=NOW + 999, timeouts=TIMEOUTS).state == "running"
    assert classify_pod(pod(), now_s=NOW + 1001, timeouts=TIMEOUTS).reason == "Timeout"


@pytest.mark.parametrize(
    ("reason", "expected"), [("DeadlineExceeded", "Timeout"), ("Evicted", "Evicted")]
)
def test_pod_level_failures(reason: str, expected: str) -> None:
    outcome = classify_pod(pod(phase="Failed", reason=reason), now_s=NOW, timeouts=TIMEOUTS)
    assert outcome.reason == expected
