"""The status trial table holds every tuner record field, so a study rebuilds from it."""

from __future__ import annotations

from jouletune.operator import BenchmarkStatus, Condition, TrialConfig, TrialRow, TrialState
from jouletune.tuner import Role, Study, TrialOutcome, TrialRecord, parse_spec
from jouletune.tuner import TrialState as RecordState

# Row fields that are the operator's own, and record fields the row keeps under other names.
_ROW_ONLY = {"pod", "started_at", "finished_at", "reason", "config", "j_per_token"}
_RENAMED = {
    "energy_per_output_token_j",
    "tensor_parallel_size",
    "max_num_seqs",
    "max_num_batched_tokens",
    "power_limit_w",
}
_NOT_KEPT = {"result_path"}  # a path inside the trial pod: meaningless once the pod is gone


def test_rows_cover_every_record_field() -> None:
    record_fields = set(TrialRecord.model_fields)
    row_fields = set(TrialRow.model_fields)
    missing = record_fields - row_fields - _RENAMED - _NOT_KEPT
    assert missing == set(), f"TrialRecord fields the status would lose: {missing}"
    assert row_fields - record_fields == _ROW_ONLY


def test_a_full_record_round_trips_through_a_row() -> None:
    record = TrialRecord(
        number=3,
        role=Role.FINALIST,
        state=RecordState.COMPLETE,
        repeat=2,
        tensor_parallel_size=2,
        max_num_seqs=64,
        max_num_batched_tokens=2048,
        power_limit_w=400.0,
        measured_power_limit_w=399.5,
        energy_per_output_token_j=0.2,
        latency_ms={"tpot_p90": 20.0},
        slo_excess_ms={"tpot_p90": -5.0},
        feasible=True,
        avg_power_w=500.0,
        avg_power_per_gpu_w=250.0,
        output_token_throughput=1000.0,
        power_cap_bound_fraction=0.5,
        completed=10,
        failed_requests=1,
        duration_s=5.0,
        server_start_s=3.0,
        fail_reason=None,
        duplicate_of=None,
        interrupted=False,
    )
    row = TrialRow.from_record(record, pod="b-trial-3", started_at="2026-01-01T00:00:00Z")
    wire = row.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert wire["config"] == {
        "tensorParallelSize": 2,
        "maxNumSeqs": 64,
        "maxNumBatchedTokens": 2048,
        "powerLimitW": 400.0,
    }
    assert wire["state"] == "Complete" and wire["jPerToken"] == 0.2
    back = TrialRow.model_validate(wire).to_record()
    assert back == record


def test_a_study_rebuilt_from_the_status_continues_where_it_was() -> None:
    spec = parse_spec(
        {"searchSpace": {"maxNumSeqs": [8, 16]}, "budget": {"maxTrials": 3, "finalistRepeats": 0}}
    )
    study = Study.from_records(spec=spec, records=[], name="b")
    first, second = study.ask(), study.ask()
    assert first is not None and second is not None
    result = {"energy_per_output_token_j": 0.3, "tpot_ms": {"p90": 10.0}, "avg_power_w": 400.0}
    study.tell(first.number, TrialOutcome(result=result))
    rows = [TrialRow.from_record(r) for r in study.records()]
    status = BenchmarkStatus.model_validate(BenchmarkStatus(trials=rows).to_wire())

    rebuilt = Study.from_records(
        spec=spec, records=[r.to_record() for r in status.trials], name="b"
    )
    assert [r.state for r in rebuilt.records()] == [RecordState.COMPLETE, RecordState.RUNNING]
    rebuilt.tell(second.number, TrialOutcome(fail_reason="OOMKilled: engine"))
    third = rebuilt.ask()
    assert third is not None and third.point not in (first.point, second.point)
    # Numbers continue; points the sampler proposed again were answered from their first run.
    between = rebuilt.records()[2 : third.number]
    assert all(r.duplicate_of in (first.number, second.number) for r in between)


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
    wire = BenchmarkStatus(
        trials=[
            TrialRow(
                number=0,
                state=TrialState.RUNNING,
                role="baseline",
                config=TrialConfig(tensor_parallel_size=1, max_num_seqs=8),
            )
        ]
    ).to_wire()
    assert wire["recommendation"] is None and wire["bestJPerToken"] is None
    assert "reason" not in wire["trials"][0], "no nulls inside rows: the table stays compact"  # type: ignore[index]
