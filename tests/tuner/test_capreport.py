"""The cap report from records: paired by server start, bound or not, and the cases it cannot
separate."""

from __future__ import annotations

import pytest

from jouletune.tuner import Point, TrialFigures
from jouletune.tuner._capreport import cap_report
from jouletune.tuner._records import Role, TrialRecord, TrialState
from jouletune.tuner.spec import LatencyMetric

SEQS = Point(tensor_parallel_size=1, max_num_seqs=64)
CAPPED = SEQS.model_copy(update={"power_limit_w": 300.0})
TPOT = LatencyMetric.TPOT_P90


def _record(number: int, point: Point, j: float, *, run: str, at_cap: float = 0.0) -> TrialRecord:
    figures = TrialFigures(
        energy_per_output_token_j=j, latency_ms={"tpot_p90": 10.0 + at_cap},
        power_cap_bound_fraction=at_cap,
    )  # fmt: skip
    return TrialRecord(
        number=number, role=Role.SEARCH, state=TrialState.COMPLETE, point=point,
        figures=figures, server_run=run,
    )  # fmt: skip


def test_the_cap_against_its_configuration_in_the_same_server_start() -> None:
    records = [
        _record(0, SEQS, 0.20, run="a"),  # another server start, not paired
        _record(1, SEQS, 0.10, run="b"),
        _record(2, CAPPED, 0.08, run="b", at_cap=0.9),
    ]
    report = cap_report(records, CAPPED, objective=TPOT)
    assert report is not None
    assert (report.capped_trials, report.uncapped_trials) == ([2], [1])
    assert report.same_server_start and report.bound
    assert report.saving_pct == pytest.approx(20.0)
    assert report.latency_cost_ms == pytest.approx(0.9)
    assert report.sentence.endswith("it bound 90% of the window.")


def test_a_cap_that_hardly_bound_is_said_to_have_saved_little() -> None:
    records = [_record(1, SEQS, 0.10, run="b"), _record(2, CAPPED, 0.098, run="b", at_cap=0.1)]
    report = cap_report(records, CAPPED, objective=TPOT)
    assert report is not None and report.bound is False
    assert "the cap itself saved little" in report.sentence


def test_without_a_shared_server_start_it_says_so() -> None:
    records = [_record(1, SEQS, 0.10, run="a"), _record(2, CAPPED, 0.08, run="b", at_cap=0.9)]
    report = cap_report(records, CAPPED, objective=TPOT)
    assert report is not None and not report.same_server_start
    assert "in another server start" in report.sentence


def test_never_measured_uncapped_and_no_cap_at_all() -> None:
    report = cap_report([_record(2, CAPPED, 0.08, run="b")], CAPPED, objective=TPOT)
    assert report is not None and report.saving_pct is None
    assert "never measured against the same configuration uncapped" in report.sentence
    assert cap_report([_record(1, SEQS, 0.1, run="b")], SEQS, objective=TPOT) is None
