"""Pod results: what crosses the 4 KiB termination message, and back."""

from __future__ import annotations

import random
import string

import pytest

from jouletune.operator import PodResult, PodTrial, ResultError
from jouletune.operator._wire import TERMINATION_MESSAGE_MAX_BYTES
from jouletune.tuner import Point, TrialFigures, TrialOutcome
from jouletune.tuner.spec import LatencyMetric

POINT = Point(tensor_parallel_size=8, max_num_seqs=256, power_limit_w=400.0)


def figures() -> TrialFigures:
    """Every figure measured, with more digits than the wire keeps."""
    return TrialFigures(
        energy_per_output_token_j=0.123456789,
        latency_ms={m.value: 10.123456789 + i for i, m in enumerate(LatencyMetric)},
        output_token_throughput=4180.51234,
        avg_power_w=5520.8123,
        avg_power_per_gpu_w=690.1012,
        power_cap_bound_fraction=0.5,
        avg_batch_size=200.5,
        completed=1000,
        failed_requests=3,
    )


def test_four_points_fit_the_termination_message_and_round_trip() -> None:
    trials = [
        PodTrial.of(POINT.model_copy(update={"power_limit_w": w}), TrialOutcome(figures=figures()))
        for w in (700.0, 600.0, 500.0, 400.0)
    ]
    message = PodResult(ok=True, trials=trials).to_message()
    assert len(message.encode()) <= TERMINATION_MESSAGE_MAX_BYTES
    back = PodResult.from_message(message)
    assert [t.point.power_limit_w for t in back.trials] == [700.0, 600.0, 500.0, 400.0]
    first = back.trials[0].figures
    assert first is not None
    assert first.energy_per_output_token_j == pytest.approx(0.123457)  # 6 significant digits
    assert first.latency_ms["tpot_p90"] == pytest.approx(figures().latency_ms["tpot_p90"], 1e-5)
    assert first.failed_requests == 3


def test_a_message_too_long_for_plain_json_travels_compressed() -> None:
    trials = [PodTrial.of(POINT, TrialOutcome(figures=figures())) for _ in range(8)]
    result = PodResult(ok=True, trials=trials)
    assert len(result.model_dump_json(exclude_none=True)) > TERMINATION_MESSAGE_MAX_BYTES
    message = result.to_message()
    assert message.startswith("gz:") and len(message.encode()) <= TERMINATION_MESSAGE_MAX_BYTES
    assert PodResult.from_message(message) == PodResult.from_message(
        PodResult.model_validate_json(result.model_dump_json()).to_message()
    )


def test_a_point_that_failed_becomes_an_invalid_measurement() -> None:
    failed = PodTrial.of(POINT, TrialOutcome(fail_reason="invalid measurement: no steady state"))
    outcome = failed.outcome()
    assert outcome.figures is None
    assert outcome.fail_reason == "InvalidMeasurement: invalid measurement: no steady state"
    measured = PodTrial.of(POINT, TrialOutcome(figures=figures(), duration_s=12.0)).outcome()
    assert measured.figures is not None and measured.duration_s == 12.0


def test_warnings_cross_one_line_each_the_first_two() -> None:
    warnings = ("merged tokens:\n" + "x" * 500, "a failed scrape", "power did not settle")
    trial = PodTrial.of(POINT, TrialOutcome(figures=figures(), warnings=warnings))
    back = PodResult.from_message(PodResult(ok=True, trials=[trial]).to_message()).trials[0]
    first, second = back.outcome().warnings
    assert first.startswith("merged tokens: xxx") and len(first) == 300 and first.endswith("…")
    assert second == "a failed scrape"


def test_warnings_that_would_not_fit_are_left_out_not_the_figures() -> None:
    rng = random.Random(0)

    def warned() -> TrialOutcome:  # two warnings of 300 random letters: nothing for gzip
        noise = ("".join(rng.choices(string.ascii_letters, k=300)) for _ in range(2))
        return TrialOutcome(figures=figures(), warnings=tuple(noise))

    trials = [PodTrial.of(POINT, warned()) for _ in range(8)]
    message = PodResult(ok=True, trials=trials).to_message()
    assert len(message.encode()) <= TERMINATION_MESSAGE_MAX_BYTES
    back = PodResult.from_message(message).trials
    assert len(back) == 8 and all(t.figures is not None and t.warnings == [] for t in back)


def test_failures_are_one_line_and_bounded() -> None:
    failure = PodResult.failure("BenchFailed", "line one\nline two " + "z" * 1000)
    assert failure.message is not None and "\n" not in failure.message
    assert len(failure.message) <= 400
    assert not PodResult.from_message(failure.to_message()).ok


@pytest.mark.parametrize(
    "text", ["", "{", "[]", '{"v": 1, "ok": true}', '{"ok": "maybe"}', "gz:not-base64"]
)
def test_anything_else_is_not_a_result(text: str) -> None:
    with pytest.raises(ResultError, match="not a trial result"):
        PodResult.from_message(text)
