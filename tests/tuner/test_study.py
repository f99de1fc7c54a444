"""The ask/tell search core on Optuna with SQLite on disk."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest

from jouletune.tuner import (
    Phase,
    Point,
    Role,
    StorageError,
    Study,
    StudyMismatchError,
    TrialOutcome,
    TrialState,
    default_storage_url,
    open_storage,
    parse_spec,
    resolve_baseline,
)
from jouletune.tuner._boundary import brackets_closed, gpu_ladders, next_gpu_step
from jouletune.tuner._optuna import fingerprint
from tests.tuner.synthetic import figures, measured

SPACE: dict[str, Any] = {
    "searchSpace": {"maxNumSeqs": [8, 16, 32, 64, 128], "powerLimitW": [600, 500, 400, 300]},
    "slos": [{"metric": "tpot_p90", "maxMs": 12}],
    "budget": {"maxTrials": 10, "finalistRepeats": 2, "maxFailedTrials": 3},
}


def _spec(**over: Any) -> Any:
    data = {**SPACE, **over}
    return parse_spec(data)


def _open(tmp_path: Path, spec: Any = None, name: str = "s") -> Study:
    storage = open_storage(default_storage_url(tmp_path))
    return Study.open(spec=spec or _spec(), name=name, storage=storage)


def _run(study: Study) -> list[Any]:
    plans = []
    while (plan := study.ask()) is not None:
        plans.append(plan)
        study.tell(plan, measured(plan.point))
    return plans


def test_baseline_first_then_search_then_finalists(tmp_path: Path) -> None:
    study = _open(tmp_path)
    plans = _run(study)
    assert plans[0].role is Role.BASELINE
    assert plans[0].point == study.grid.baseline
    # vLLM 0.24's default on the spec's H100, not a value jouletune picked.
    assert plans[0].point.max_num_seqs == 1024 and plans[0].point.power_limit_w is None
    assert "vLLM 0.24.0 defaults (built-in)" in study.baseline.source
    roles = [p.role for p in plans]
    first_finalist = roles.index(Role.FINALIST)
    assert all(r is Role.FINALIST for r in roles[first_finalist:])  # index() found one
    assert len([p for p in plans if p.role is not Role.FINALIST]) == 10  # maxTrials
    assert study.phase() == Phase.DONE
    # Each finalist (the baseline included) measured twice more, server by server.
    finalists = study.finalists()
    assert finalists[0] == study.grid.baseline
    for point in finalists:
        assert sum(p.point == point for p in plans if p.role is Role.FINALIST) == 2
    order = [p.point.run_order() for p in plans[first_finalist:]]
    assert order == sorted(order)
    # A capped finalist's configuration uncapped is measured too, in the same server start
    # just before it: what the cap report compares the cap against.
    capped = [p for p in finalists if p.power_limit_w is not None]
    assert capped, "the search found a capped finalist to check this with"
    for point in capped:
        assert point.model_copy(update={"power_limit_w": None}) in finalists


def test_search_never_measures_a_point_twice(tmp_path: Path) -> None:
    study = _open(tmp_path, _spec(budget={"maxTrials": 30, "finalistRepeats": 0}))
    plans = _run(study)
    points = [p.point for p in plans]
    assert len(points) == len(set(points))
    # 6 seqs values (256 joins as the baseline's) x 5 power choices: the space is exhausted.
    assert len(points) == study.grid.size() == 30


def test_power_steps_stay_on_the_running_server(tmp_path: Path) -> None:
    study = _open(tmp_path, _spec(slos=[], budget={"maxTrials": 6, "finalistRepeats": 0}))
    plans = _run(study)
    # The baseline (no SLO: feasible) is followed by lower caps on the same server, each
    # below the power it drew, while J/token keeps falling.
    assert plans[1].point.server == plans[0].point.server
    assert plans[1].point.power_limit_w == 600.0
    caps = [p.point.power_limit_w for p in plans if p.point.server == plans[0].point.server]
    assert caps[:3] == [None, 600.0, 500.0]


def test_cap_above_the_power_drawn_is_skipped(tmp_path: Path) -> None:
    # seqs 8 draws ~490 W: a 600 W cap would not bind, so the step goes to 400 W.
    study = _open(
        tmp_path,
        _spec(
            searchSpace={"maxNumSeqs": [8], "powerLimitW": [600, 400]},
            baseline={"serveArgs": ["--max-num-seqs", "8"]},
            slos=[],
            budget={"maxTrials": 5, "finalistRepeats": 0},
        ),
    )
    plans = _run(study)
    assert [p.point.power_limit_w for p in plans] == [None, 400.0, 600.0]


def test_resume_after_a_crash_repeats_no_finished_trial(tmp_path: Path) -> None:
    study = _open(tmp_path)
    finished = []
    for _ in range(4):
        plan = study.ask()
        assert plan is not None
        study.tell(plan, measured(plan.point))
        finished.append(plan.point)
    lost = study.ask()  # asked, then the process "dies" before telling
    assert lost is not None

    resumed = _open(tmp_path)
    assert resumed.abandon_running() == [lost.number]
    plans = _run(resumed)
    search = [p for p in plans if p.role is not Role.FINALIST]
    assert search[0].point == lost.point  # the interrupted point runs first
    assert not {p.point for p in search} & set(finished)
    measured_points = [r.point for r in resumed.measured() if r.role is not Role.FINALIST]
    assert len(measured_points) == len(set(measured_points)) == 10


def test_resume_with_another_spec_is_refused(tmp_path: Path) -> None:
    _open(tmp_path)
    with pytest.raises(StudyMismatchError, match="different search spec"):
        _open(tmp_path, _spec(slos=[{"metric": "tpot_p90", "maxMs": 9}]))


def test_failed_trials_stop_the_search_at_max_failed(tmp_path: Path) -> None:
    study = _open(tmp_path)
    told = []
    while (plan := study.ask()) is not None:
        told.append(study.tell(plan, TrialOutcome(fail_reason="server exited: OOM")))
    assert [r.state for r in told] == [TrialState.FAILED] * 3
    assert told and all(r.fail_reason == "server exited: OOM" for r in told)
    assert study.phase() == Phase.DONE
    assert study.finalists() == []


def test_infeasible_slo_spends_no_repeats(tmp_path: Path) -> None:
    study = _open(tmp_path, _spec(slos=[{"metric": "tpot_p90", "maxMs": 1}]))
    plans = _run(study)
    assert plans and all(p.role is not Role.FINALIST for p in plans)
    assert study.measured() and all(r.feasible is False for r in study.measured())
    assert study.finalists() == []


def test_read_only_collapses_the_power_axis(tmp_path: Path) -> None:
    spec = _spec(searchSpace={"maxNumSeqs": [8, 64]}, budget={"maxTrials": 10})
    storage = open_storage(default_storage_url(tmp_path))
    study = Study.open(spec=spec, name="ro", storage=storage, read_only=True)
    assert list(study.grid.power_limits_w) == [None]
    plans = _run(study)
    assert {p.point.power_limit_w for p in plans} == {None}


def test_bracket_probes_where_the_latency_line_crosses_the_slo(tmp_path: Path) -> None:
    # Synthetic tpot_p90 (ms): 48 -> 8.8, 160 -> 13.5, 256 -> 17.6; the SLO is 15. Once 256
    # misses and 48 meets it, the line through them crosses 15 ms at ~194, so the third start
    # goes to 160 (the largest feasible value), where plain bisection would try 96.
    spec = _spec(
        searchSpace={"maxNumSeqs": [1, 16, 48, 96, 160, 256]},
        baseline={"serveArgs": ["--max-num-seqs", "256"]},  # as on the H100 (tune.yaml)
        slos=[{"metric": "tpot_p90", "maxMs": 15}],
        budget={"maxTrials": 3, "finalistRepeats": 0},
    )
    storage = open_storage(default_storage_url(tmp_path))
    study = Study.open(spec=spec, name="rf", storage=storage, read_only=True)
    plans = _run(study)
    assert [p.point.max_num_seqs for p in plans] == [256, 48, 160]
    assert [r.feasible for r in study.measured()] == [False, True, True]


def test_a_latency_knee_costs_no_more_starts_than_bisection(tmp_path: Path) -> None:
    # 128 values; p90 TPOT is nearly flat until 600 sequences, then climbs. The line through
    # the bracket ends crosses the SLO just above `lo` every time: without the midpoint floor
    # the bracket crept up 544, 560, ... (10 starts); with it, it halves (8: bisection's).
    seqs = list(range(8, 1025, 8))

    def knee(point: Point) -> TrialOutcome:
        n = point.max_num_seqs
        tpot = 6.0 + 0.01 * n + 0.02 * max(0, n - 600)
        found = figures(point)
        latency = found.latency_ms | {"tpot_p90": tpot}
        return TrialOutcome(figures=found.model_copy(update={"latency_ms": latency}))

    spec = _spec(
        searchSpace={"maxNumSeqs": seqs},
        baseline={"serveArgs": ["--max-num-seqs", "1024"]},
        slos=[{"metric": "tpot_p90", "maxMs": 12}],
        budget={"maxTrials": 40, "finalistRepeats": 0},
    )
    storage = open_storage(default_storage_url(tmp_path))
    study = Study.open(spec=spec, name="knee", storage=storage, read_only=True)
    probes = []
    while not brackets_closed(study.records(), study.grid):
        plan = study.ask()
        assert plan is not None
        study.tell(plan, knee(plan.point))
        probes.append(plan.point.max_num_seqs)
    assert len(probes) <= 8, probes  # the baseline + log2(128)
    assert {600, 608} <= set(probes)  # closed where it should be: 600 meets 12 ms, 608 not


def test_rebuilt_from_records_continues_by_number(tmp_path: Path) -> None:
    study = _open(tmp_path)
    for _ in range(3):
        plan = study.ask()
        assert plan is not None
        study.tell(plan, measured(plan.point))
    running = study.ask()
    assert running is not None
    records = study.records()

    rebuilt = Study.from_records(spec=_spec(), records=records)
    assert rebuilt.records() == records
    record = rebuilt.tell(running.number, measured(running.point))
    assert record.state is TrialState.COMPLETE and record.number == running.number


def test_figures_without_the_slo_statistic_fail_the_trial(tmp_path: Path) -> None:
    study = _open(tmp_path)
    plan = study.ask()
    assert plan is not None
    found = figures(plan.point)
    latency = {k: v for k, v in found.latency_ms.items() if k != "tpot_p90"}
    record = study.tell(
        plan, TrialOutcome(figures=found.model_copy(update={"latency_ms": latency}))
    )
    assert record.state is TrialState.FAILED
    assert record.fail_reason == "the bench reported no tpot_p90"


def _unless_missing(*modules: str) -> pytest.MarkDecorator:
    """Skip a missing-driver case where the driver happens to be installed."""
    there = [m for m in modules if importlib.util.find_spec(m) is not None]
    return pytest.mark.skipif(bool(there), reason=f"{there} installed")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("sqlite:////nonexistent-dir/x/study.db", "unable to open database file"),
        ("postgresql://u:secret@127.0.0.1:1/db", "storage postgresql://u:***@127.0.0.1:1/db"),
        # The driver SQLAlchemy picks for postgresql:// (psycopg, or psycopg2 before 2.1).
        pytest.param(
            "postgresql://u@127.0.0.1:1/db",
            "not installed (pip install",
            marks=_unless_missing("psycopg", "psycopg2"),
        ),
        pytest.param(
            "mysql+pymysql://u@127.0.0.1:1/db",
            "driver pymysql not installed (pip install PyMySQL)",
            marks=_unless_missing("pymysql"),
        ),
        ("not a url", "Could not parse"),
    ],
)
def test_unusable_storage_is_one_clear_error(url: str, reason: str) -> None:
    with pytest.raises(StorageError, match=re.escape(reason)) as info:
        open_storage(url)
    assert "\n" not in str(info.value)
    assert "secret" not in str(info.value)


# --- SM clock locks: a second ladder under the same server ----------------------------------

CLOCKS: dict[str, Any] = {
    "searchSpace": {"maxNumSeqs": [8], "powerLimitW": [600, 400], "smClockMhz": [1950, 1500, 990]},
    "baseline": {"serveArgs": ["--max-num-seqs", "8"]},
    "slos": [],
}


def test_clock_locks_are_walked_after_the_caps_under_the_same_server(tmp_path: Path) -> None:
    # seqs 8 draws ~464 W at 1,980 MHz: the 600 W cap would not bind (skipped), 400 W does;
    # then the clocks, uncapped: 1,950 MHz is within 5% of the clock it ran at (skipped), so
    # 1,500, then 990, while each lock still pays.
    study = _open(tmp_path, _spec(**CLOCKS, budget={"maxTrials": 4, "finalistRepeats": 0}))
    plans = _run(study)
    steps = [(p.point.power_limit_w, p.point.sm_clock_mhz) for p in plans]
    assert steps == [(None, None), (400.0, None), (None, 1500), (None, 990)]
    assert {p.point.server for p in plans} == {plans[0].point.server}, "one server throughout"
    energy = {r.point: r.energy_per_output_token_j or 0.0 for r in study.measured()}
    server = plans[0].point
    locked = [energy[server.model_copy(update={"sm_clock_mhz": c})] for c in (990, 1500)]
    assert locked[0] < locked[1] < energy[server]


def test_a_lock_that_stops_paying_ends_the_clock_walk(tmp_path: Path) -> None:
    def flat_below_1500(point: Point) -> TrialOutcome:
        found = figures(point)
        if point.sm_clock_mhz == 990:  # a lock past the knee: more joules, not fewer
            found = found.model_copy(update={"energy_per_output_token_j": 10.0})
        return TrialOutcome(figures=found)

    spec = _spec(
        searchSpace={"maxNumSeqs": [8], "smClockMhz": [1500, 990, 600]},
        baseline={"serveArgs": ["--max-num-seqs", "8"]},
        slos=[],
        budget={"maxTrials": 3, "finalistRepeats": 0},
    )
    study = _open(tmp_path, spec)
    clocks = []
    while (plan := study.ask()) is not None and plan.role is not Role.FINALIST:
        clocks.append(plan.point.sm_clock_mhz)
        study.tell(plan, flat_below_1500(plan.point))
    assert clocks == [None, 1500, 990]
    # 990 did not pay: from there the walk is done (600 is not its next step).
    records = study.records()
    assert next_gpu_step(records[-1], records, gpu_ladders([None], [None, 1500, 990, 600])) is None


def test_riders_walk_the_caps_then_the_clocks_and_the_grid_takes_every_pair(
    tmp_path: Path,
) -> None:
    study = _open(tmp_path, _spec(**CLOCKS, budget={"maxTrials": 20, "finalistRepeats": 0}))
    baseline = study.ask()
    assert baseline is not None
    study.tell(baseline, measured(baseline.point))
    plan = study.ask()
    assert plan is not None and plan.point.power_limit_w == 400.0
    riders = study.riders(plan, limit=10)
    # Below 400 W no cap is left: the clock ladder follows, uncapped, from its top.
    assert [(p.power_limit_w, p.sm_clock_mhz) for p in riders] == [
        (None, 1950),
        (None, 1500),
        (None, 990),
    ]
    (tmp_path / "grid").mkdir()
    grid = _open(tmp_path / "grid", _spec(**CLOCKS, sampler="grid", budget={"maxTrials": 20}))
    first = grid.ask()
    assert first is not None
    grid.tell(first, measured(first.point))
    plan = grid.ask()
    assert plan is not None
    pairs = [(p.power_limit_w, p.sm_clock_mhz) for p in grid.riders(plan, limit=20)]
    assert len(pairs) == grid.grid.size() - 2 and (400.0, 990) in pairs


def test_read_only_collapses_the_clock_axis_too(tmp_path: Path) -> None:
    spec = _spec(searchSpace={"maxNumSeqs": [8, 64], "smClockMhz": [1500]})
    storage = open_storage(default_storage_url(tmp_path))
    study = Study.open(spec=spec, name="ro", storage=storage, read_only=True)
    assert list(study.grid.sm_clocks_mhz) == [None]
    assert {p.point.sm_clock_mhz for p in _run(study)} == {None}


def test_a_study_stored_before_api_server_counts_resumes_while_none_is_searched() -> None:
    space: dict[str, Any] = {"maxNumSeqs": [64, 128], "powerLimitW": [400]}
    spec = parse_spec({"model": "org/model", "searchSpace": space})
    baseline = resolve_baseline(spec, defaults=None).point
    # The fingerprint jouletune stored for this spec before the knob existed (at 895e9c0).
    assert fingerprint(spec, read_only=False, baseline=baseline) == "3f5d598720c2015b"
    searched = parse_spec({"model": "org/model", "searchSpace": {**space, "apiServerCount": [2]}})
    assert fingerprint(searched, read_only=False, baseline=baseline) != "3f5d598720c2015b"
