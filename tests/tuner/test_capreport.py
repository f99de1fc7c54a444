"""The cap and clock reports from records: paired by server start, bound or not, and the
cases they cannot separate."""

from __future__ import annotations

import pytest

from jouletune.tuner import Point, TrialFigures
from jouletune.tuner._capreport import cap_report, clock_report
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
    # Bound as briefly but saving 20% (capping only the prefill steps): not "little".
    records[1] = _record(2, CAPPED, 0.08, run="b", at_cap=0.1)
    report = cap_report(records, CAPPED, objective=TPOT)
    assert report is not None and report.bound is False
    assert report.sentence.endswith("it bound 10% of the window, the steps that draw the most.")


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


LOCKED = SEQS.model_copy(update={"sm_clock_mhz": 1200})


def _clocked(number: int, point: Point, j: float, *, run: str, clock: float) -> TrialRecord:
    figures = TrialFigures(
        energy_per_output_token_j=j, latency_ms={"tpot_p90": 10.0 + (1980 - clock) / 1000},
        avg_sm_clock_mhz=clock,
    )  # fmt: skip
    return TrialRecord(
        number=number, role=Role.SEARCH, state=TrialState.COMPLETE, point=point,
        figures=figures, server_run=run,
    )  # fmt: skip


def test_the_lock_against_its_configuration_unlocked_in_the_same_server_start() -> None:
    records = [
        _clocked(0, SEQS, 0.20, run="a", clock=1980),  # another server start, not paired
        _clocked(1, SEQS, 0.10, run="b", clock=1970),
        _clocked(2, LOCKED, 0.07, run="b", clock=1200),
    ]
    report = clock_report(records, LOCKED, objective=TPOT)
    assert report is not None and report.same_server_start and report.bound
    assert (report.locked_trials, report.unlocked_trials) == ([2], [1])
    assert report.saving_pct == pytest.approx(30.0)
    assert report.latency_cost_ms == pytest.approx(0.77)
    assert (report.locked_clock_mhz, report.unlocked_clock_mhz) == (1200, 1970)
    assert report.sentence == (
        "The 1200 MHz clock lock saved 30.0% J/token against the same configuration unlocked "
        "in the same server start, tpot_p90 +0.77 ms; unlocked, the GPU ran at 1970 MHz."
    )
    assert cap_report(records, LOCKED, objective=TPOT) is None, "no cap, no cap report"


def test_a_lock_above_the_clock_the_gpu_ran_at_saved_little_and_says_so() -> None:
    records = [
        _clocked(1, SEQS, 0.10, run="b", clock=1150),  # a cap or the load kept it low
        _clocked(2, LOCKED, 0.099, run="b", clock=1150),
    ]
    report = clock_report(records, LOCKED, objective=TPOT)
    assert report is not None and report.bound is False
    assert "ran at only 1150 MHz, so the lock itself saved little" in report.sentence


def test_a_lock_never_measured_unlocked_and_no_lock_at_all() -> None:
    report = clock_report([_clocked(2, LOCKED, 0.07, run="b", clock=1200)], LOCKED, objective=TPOT)
    assert report is not None and report.saving_pct is None
    assert "never measured against the same configuration unlocked" in report.sentence
    assert clock_report([_clocked(1, SEQS, 0.1, run="b", clock=1980)], SEQS, objective=TPOT) is None


def test_a_capped_and_locked_point_is_compared_per_setting() -> None:
    both = CAPPED.model_copy(update={"sm_clock_mhz": 1200})
    records = [
        _record(1, CAPPED, 0.08, run="b", at_cap=0.9),
        _clocked(2, LOCKED, 0.075, run="b", clock=1200),
        _clocked(3, both, 0.07, run="b", clock=1200),
    ]
    cap = cap_report(records, both, objective=TPOT)
    lock = clock_report(records, both, objective=TPOT)
    # The cap against the same lock uncapped; the lock against the same cap unlocked.
    assert cap is not None and cap.uncapped_trials == [2]
    assert lock is not None and lock.unlocked_trials == [1]
