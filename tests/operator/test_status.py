"""The status trial table is the tuner's records plus placement, so a study rebuilds from it."""

from __future__ import annotations

from jouletune.operator import BenchmarkStatus, Condition, TrialRow
from jouletune.operator._context import trial_events
from jouletune.operator._table import build_status
from jouletune.tuner import (
    Point,
    Role,
    Study,
    TrialFigures,
    TrialOutcome,
    TrialRecord,
    TrialState,
    parse_spec,
    recommend,
)
from tests.tuner.synthetic import measured

FIGURES = TrialFigures(
    energy_per_output_token_j=0.2,
    latency_ms={"tpot_p90": 20.0, "ttft_p50": 300.0},
    output_token_throughput=1000.0,
    avg_power_w=500.0,
    avg_power_per_gpu_w=250.0,
    power_cap_bound_fraction=0.5,
    avg_batch_size=60.0,
    completed=10,
    failed_requests=1,
)


def test_a_row_is_a_record_and_only_adds_where_it_ran() -> None:
    assert issubclass(TrialRow, TrialRecord)
    added = set(TrialRow.model_fields) - set(TrialRecord.model_fields)
    assert added == {"pod", "started_at", "finished_at", "reason"}


def test_a_full_record_round_trips_through_a_row() -> None:
    record = TrialRecord(
        number=3,
        role=Role.FINALIST,
        state=TrialState.COMPLETE,
        repeat=2,
        point=Point(
            tensor_parallel_size=2, max_num_seqs=64, max_num_batched_tokens=2048, power_limit_w=400
        ),
        figures=FIGURES,
        measured_power_limit_w=399.5,
        slo_excess_ms={"tpot_p90": -5.0},
        feasible=True,
        duration_s=5.0,
        server_start_s=3.0,
        result_path="/runs/x/trials/0003",
        warnings=["the server streamed 1.54 tokens per chunk"],
    )
    row = TrialRow.of(record, pod="b-trial-3", started_at="2026-01-01T00:00:00Z")
    wire = row.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert wire["point"] == {
        "tensorParallelSize": 2,
        "maxNumSeqs": 64,
        "maxNumBatchedTokens": 2048,
        "powerLimitW": 400.0,
    }
    assert wire["state"] == "complete" and wire["figures"]["energyPerOutputTokenJ"] == 0.2
    assert wire["figures"]["latencyMs"] == {"tpot_p90": 20.0, "ttft_p50": 300.0}
    assert wire["warnings"] == ["the server streamed 1.54 tokens per chunk"]
    back = TrialRow.model_validate(wire).to_record()
    assert back == record


def test_each_warning_of_a_trial_is_an_event_of_its_own() -> None:
    spec = parse_spec({"model": "m", "searchSpace": {"maxNumSeqs": [64]}})
    point = Point(tensor_parallel_size=1, max_num_seqs=64)
    done = TrialRecord(number=4, role=Role.SEARCH, state=TrialState.COMPLETE, point=point,
                       figures=FIGURES, warnings=["merged tokens", "a failed scrape"])  # fmt: skip
    assert [(t, r) for t, r, _ in trial_events(done, None, spec)] == [
        ("Normal", "TrialFinished"), ("Warning", "TrialWarning"), ("Warning", "TrialWarning")
    ]  # fmt: skip
    assert trial_events(done, None, spec)[1][2] == "trial 4: merged tokens"
    failed = done.model_copy(update={"state": TrialState.FAILED, "fail_reason": "no window"})
    events = trial_events(failed, "InvalidMeasurement", spec)
    assert events[0] == ("Warning", "TrialFailed", "trial 4: InvalidMeasurement: no window")
    assert len(events) == 3
    assert trial_events(done.model_copy(update={"warnings": []}), None, spec)[1:] == []


def test_a_study_rebuilt_from_the_status_continues_where_it_was() -> None:
    spec = parse_spec(
        {"searchSpace": {"maxNumSeqs": [8, 16]}, "budget": {"maxTrials": 3, "finalistRepeats": 0}}
    )
    study = Study.from_records(spec=spec, records=[], name="b")
    first, second = study.ask(), study.ask()
    assert first is not None and second is not None
    study.tell(first.number, TrialOutcome(figures=FIGURES))
    rows = [TrialRow.of(r) for r in study.records()]
    status = BenchmarkStatus.model_validate(BenchmarkStatus(trials=rows).to_wire())

    rebuilt = Study.from_records(
        spec=spec, records=[r.to_record() for r in status.trials], name="b"
    )
    assert [r.state for r in rebuilt.records()] == [TrialState.COMPLETE, TrialState.RUNNING]
    rebuilt.tell(second.number, TrialOutcome(fail_reason="OOMKilled: engine"))
    third = rebuilt.ask()
    assert third is not None and third.point not in (first.point, second.point)
    # Numbers continue; points the sampler proposed again were answered from their first run.
    between = rebuilt.records()[2 : third.number]
    assert between and all(r.duplicate_of in (first.number, second.number) for r in between)


def test_conditions_keep_their_transition_time_while_unchanged() -> None:
    status = BenchmarkStatus()
    status.set_condition(
        Condition(type="Progressing", status="True", reason="A", last_transition_time="t1")
    )
    status.set_condition(
        Condition(type="Progressing", status="True", reason="B", last_transition_time="t2")
    )
    assert status.condition("Progressing") is not None
    assert status.condition("Progressing").last_transition_time == "t1"  # type: ignore[union-attr]
    status.set_condition(
        Condition(type="Progressing", status="False", reason="C", last_transition_time="t3")
    )
    assert [c.last_transition_time for c in status.conditions] == ["t3"]


def test_unset_top_level_fields_are_sent_as_null_to_clear_them() -> None:
    running = TrialRecord(
        number=0,
        state=TrialState.RUNNING,
        role=Role.BASELINE,
        point=Point(tensor_parallel_size=1, max_num_seqs=8),
    )
    wire = BenchmarkStatus(trials=[TrialRow.of(running)]).to_wire()
    assert wire["recommendation"] is None and wire["bestJPerToken"] is None
    assert "reason" not in wire["trials"][0], "no nulls inside rows: the table stays compact"  # type: ignore[index]


def test_the_status_the_loop_builds_reads_back_as_written() -> None:
    spec = parse_spec(
        {
            "searchSpace": {"maxNumSeqs": [8, 16], "powerLimitW": [400]},
            "slos": [{"metric": "tpot_p90", "maxMs": 100}],
            "budget": {"maxTrials": 3, "finalistRepeats": 0},
        }
    )
    study = Study.from_records(spec=spec, records=[], name="b")
    while (plan := study.ask()) is not None:
        study.tell(plan, measured(plan.point))
    records = study.records()
    rec = recommend(spec=spec, records=records, finalists=study.finalists(), done=True)
    assert rec.verdict == "recommended" and rec.artifacts is not None
    status = build_status(
        BenchmarkStatus(),
        benchmark="b",
        spec=spec,
        records=records,
        placements={},
        recommendation=rec,
        generation=1,
    )
    back = BenchmarkStatus.model_validate(status.to_wire())
    assert back == status
    assert [r.to_record() for r in back.trials] == records
