"""Pareto front, recommendation and the report files, from a study on SQLite."""

from __future__ import annotations

import base64
import csv
import json
import random
import re
from pathlib import Path
from typing import Any

import optuna
import pytest

from jouletune.tuner import (
    Phase,
    Point,
    Provenance,
    Role,
    Study,
    TrialFigures,
    TrialRecord,
    TrialState,
    default_storage_url,
    front,
    open_storage,
    pareto_front,
    parse_spec,
    recommend,
    summarize_points,
    write_report,
)
from jouletune.tuner._plot import plot_label
from jouletune.tuner._provenance import (
    PREDICTED_API_SERVER_CAVEAT,
    PREDICTED_CLOCK_CAVEAT,
    PREDICTED_ITL_CAVEAT,
    PREDICTED_TTFT_CAVEAT,
    ProvenanceKind,
    SimProfile,
)
from tests.tuner.synthetic import measured

SPEC: dict[str, Any] = {
    "model": "meta-llama/Llama-3.1-8B-Instruct",
    "searchSpace": {"maxNumSeqs": [16, 32, 64, 128], "powerLimitW": [500, 400, 300]},
    "slos": [{"metric": "tpot_p90", "maxMs": 12}],
    "budget": {"maxTrials": 12, "finalistRepeats": 2},
}


def test_pareto_front_agrees_with_optuna_best_trials() -> None:
    rng = random.Random(7)
    values = [(rng.random(), rng.random()) for _ in range(60)] + [(0.5, 0.5), (0.5, 0.5)]
    study = optuna.create_study(directions=["minimize", "minimize"])
    for v in values:
        study.add_trial(optuna.trial.create_trial(values=list(v)))
    ours = sorted(pareto_front(values, lambda v: v))
    optunas = sorted(tuple(t.values) for t in study.best_trials)
    assert ours == optunas
    assert len(ours) >= 2


def _finished_study(tmp_path: Path, spec_data: dict[str, Any]) -> tuple[Any, Study]:
    spec = parse_spec(spec_data)
    study = Study.open(spec=spec, name="r", storage=open_storage(default_storage_url(tmp_path)))
    noise = iter([0.0] * 12 + [0.02, -0.02] * 20)
    while (plan := study.ask()) is not None:
        study.tell(plan, measured(plan.point, noise=next(noise)))
    assert study.phase() == Phase.DONE
    return spec, study


def test_recommendation_is_the_lowest_energy_feasible_finalist(tmp_path: Path) -> None:
    spec, study = _finished_study(tmp_path, SPEC)
    records = study.records()
    rec = recommend(spec=spec, records=records, finalists=study.finalists(), done=True)
    assert rec.verdict == "recommended"
    best = rec.recommended
    assert best is not None and best.feasible and best.runs == 3
    feasible = [p for p in summarize_points(records, spec) if p.feasible]
    finalists = {p.label for p in rec.finalists}
    assert best.energy_per_output_token_j == min(
        p.energy_per_output_token_j for p in feasible if p.label in finalists
    )
    # Spread of the three runs (0, +2%, -2% noise) is reported.
    assert abs(best.energy_spread_pct - 4.0) < 0.01
    base = rec.baseline
    assert base is not None and base.is_baseline and base.runs == 3
    expected = 100 * (1 - best.energy_per_output_token_j / base.energy_per_output_token_j)
    assert rec.saving_pct is not None and abs(rec.saving_pct - expected) < 1e-9
    tpot = "tpot_p90"
    assert rec.latency_cost_ms == best.figures.latency_ms[tpot] - base.figures.latency_ms[tpot]
    art = rec.artifacts
    assert art is not None
    assert art.vllm_serve_command.startswith("vllm serve meta-llama/Llama-3.1-8B-Instruct ")
    assert f"--max-num-seqs {best.point.max_num_seqs}" in art.vllm_serve_command
    assert art.kubernetes_container.resources["limits"]["nvidia.com/gpu"] == "1"
    assert art.kubernetes_container.image == "vllm/vllm-openai:v0.24.0"
    cap = best.point.power_limit_w
    if cap is not None:
        assert art.power_limit_command == f"sudo nvidia-smi -i 0 -pl {cap:g}"


def test_infeasible_slo_gives_the_closest_points(tmp_path: Path) -> None:
    spec, study = _finished_study(tmp_path, {**SPEC, "slos": [{"metric": "tpot_p90", "maxMs": 5}]})
    rec = recommend(spec=spec, records=study.records(), finalists=study.finalists(), done=True)
    assert rec.verdict == "infeasible" and rec.recommended is None
    assert "tpot_p90 <= 5 ms" in rec.message
    excess = [p.slo_excess_ms["tpot_p90"] for p in rec.closest]
    every = [p.slo_excess_ms["tpot_p90"] for p in summarize_points(study.records(), spec)]
    assert excess == sorted(every)[:3]


def test_report_files(tmp_path: Path) -> None:
    spec, study = _finished_study(tmp_path, SPEC)
    records = study.records()
    rec = recommend(spec=spec, records=records, finalists=study.finalists(), done=True)
    out = tmp_path / "out"
    names = write_report(out, spec=spec, name="r", records=records, recommendation=rec)
    assert sorted(names) == sorted(p.name for p in out.iterdir())
    rows = list(csv.DictReader((out / "trials.csv").read_text().splitlines()))
    assert [int(r["number"]) for r in rows] == [r.number for r in records]
    assert rows[0]["role"] == Role.BASELINE.value and rows[0]["tpot_p90_ms"]
    # The baseline is vLLM 0.24's default on an H100: 1024 sequences.
    assert rows[0]["max_num_seqs"] == "1024" and rows[0]["energy_per_output_token_j"]
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["front"] == [
        p.model_dump(mode="json") for p in front(summarize_points(records, spec), spec)
    ]
    assert pareto["front"] and all(p["feasible"] for p in pareto["front"])
    assert json.loads((out / "recommendation.json").read_text())["verdict"] == "recommended"
    png = (out / "pareto.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    page = (out / "report.html").read_text()
    inlined = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert inlined is not None and base64.b64decode(inlined.group(1)) == png
    assert "src='http" not in page and 'src="http' not in page  # self-contained
    assert rec.artifacts is not None and rec.artifacts.vllm_serve_command in page


def _trial(number: int, point: Point, j: float, provenance: Provenance) -> TrialRecord:
    latency_ms = {"itl_p50": 9.0, "tpot_p90": 10.0, "ttft_p90": 400.0}
    figures = TrialFigures(energy_per_output_token_j=j, latency_ms=latency_ms)
    return TrialRecord(
        number=number, role=Role.BASELINE if point.unconstrained else Role.SEARCH,
        state=TrialState.COMPLETE, point=point, figures=figures, feasible=True, server_run="s",
        provenance=provenance,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["predicted", "measured"])
def test_a_recommended_lock_comes_with_its_command_report_and_a_predicted_caveat(
    kind: ProvenanceKind,
) -> None:
    provenance = Provenance(kind=kind, gpu="h100-80gb", engine="vLLM", jouletune_version="0.1")
    server = Point(tensor_parallel_size=2, max_num_seqs=64)
    locked = server.model_copy(update={"sm_clock_mhz": 1200})
    records = [_trial(0, server, 0.10, provenance), _trial(1, locked, 0.07, provenance)]
    spec = parse_spec({"gpu": {"count": 2}, "searchSpace": {"tensorParallelSize": [2]}})
    rec = recommend(spec=spec, records=records, finalists=[server, locked], done=True)
    assert rec.recommended is not None and rec.recommended.point == locked
    assert rec.recommended.label == "tp2 seqs64 uncapped 1200MHz"
    art = rec.artifacts
    assert art is not None and art.power_limit_command is None
    assert (art.sm_clock_mhz, art.sm_clock_lock_command) == (
        1200,
        "sudo nvidia-smi -i 0,1 -lgc 1200,1200",
    )
    assert rec.cap_report is None
    assert rec.clock_report is not None and rec.clock_report.saving_pct == pytest.approx(30.0)
    if kind == "predicted":
        assert rec.caveats == [PREDICTED_CLOCK_CAVEAT]
        assert "prediction, not a measurement" in rec.summary()
    else:
        assert rec.caveats == [], "a measured lock needs no caveat"
    assert plot_label(locked) == "tp 2 · seqs 64 · no cap · 1200 MHz"


def test_a_lock_predicted_with_a_profile_calibrated_under_locks_names_the_profile() -> None:
    provenance = Provenance(
        kind="predicted", gpu="h100-80gb", engine="jouletune-sim", jouletune_version="0.1"
    )
    server = Point(tensor_parallel_size=1, max_num_seqs=64)
    locked = server.model_copy(update={"sm_clock_mhz": 1200})
    records = [_trial(0, server, 0.10, provenance), _trial(1, locked, 0.07, provenance)]
    spec = parse_spec({"searchSpace": {"smClockMhz": [1200]}})
    calibrated = SimProfile(
        path="cal/profile.json",
        gpu_name="NVIDIA H100 80GB HBM3",
        created="2026-12-07T01:00:00Z",
        power_limits_measured=True,
        clock_locks_measured=True,
    )
    caps_only = calibrated.model_copy(update={"clock_locks_measured": False})

    def caveats(profile: SimProfile | None) -> list[str]:
        return recommend(
            spec=spec, records=records, finalists=[server, locked], done=True, sim_profile=profile
        ).caveats

    (caveat,) = caveats(calibrated)
    assert "cal/profile.json" in caveat and "under SM clock locks" in caveat
    assert "prediction, not a measurement" in caveat
    assert caveats(caps_only) == caveats(None) == [PREDICTED_CLOCK_CAVEAT]


@pytest.mark.parametrize(
    ("range_ratio", "metric", "caveat"),
    [(0.5, "itl_p50", True), (0.0, "itl_p50", False), (0.5, "tpot_p90", False)],
)
def test_a_predicted_itl_at_varied_lengths_is_labelled(
    range_ratio: float, metric: str, caveat: bool
) -> None:
    # The simulator's ITL p50 read 20% low on the one varied-length H100 point, and is within
    # 10% at every fixed-length one: only the former answer carries the caveat.
    provenance = Provenance(
        kind="predicted", gpu="h100-80gb", engine="vLLM", jouletune_version="0.1"
    )
    small = Point(tensor_parallel_size=1, max_num_seqs=64)
    large = small.model_copy(update={"max_num_seqs": 256})
    records = [_trial(0, small, 0.10, provenance), _trial(1, large, 0.07, provenance)]
    spec = parse_spec(
        {
            "searchSpace": {"maxNumSeqs": [64, 256]},
            "workload": {"rangeRatio": range_ratio},
            "slos": [{"metric": metric, "maxMs": 500}],
        }
    )
    rec = recommend(spec=spec, records=records, finalists=[small, large], done=True)
    assert (PREDICTED_ITL_CAVEAT in rec.caveats) is caveat
    assert PREDICTED_TTFT_CAVEAT not in rec.caveats


@pytest.mark.parametrize(
    ("kind", "counts", "caveat"),
    [("predicted", [2], True), ("predicted", [], False), ("measured", [2], False)],
)
def test_a_predicted_api_server_count_is_labelled(
    kind: str, counts: list[int], caveat: bool
) -> None:
    provenance = Provenance(kind=kind, gpu="h100-80gb", engine="vLLM", jouletune_version="0.1")
    one = Point(tensor_parallel_size=1, max_num_seqs=512)
    two = one.model_copy(update={"api_server_count": 2 if counts else None, "max_num_seqs": 256})
    records = [_trial(0, one, 0.05, provenance), _trial(1, two, 0.04, provenance)]
    spec = parse_spec({"searchSpace": {"maxNumSeqs": [256, 512], "apiServerCount": counts}})
    rec = recommend(spec=spec, records=records, finalists=[one, two], done=True)
    assert (PREDICTED_API_SERVER_CAVEAT in rec.caveats) is caveat


@pytest.mark.parametrize(
    ("kind", "latency", "caveat"),
    [
        ("predicted", {"slos": [{"metric": "ttft_p90", "maxMs": 500}]}, True),
        ("predicted", {"objective": "ttft_p90"}, True),
        ("predicted", {"slos": [{"metric": "tpot_p90", "maxMs": 50}]}, False),
        ("measured", {"slos": [{"metric": "ttft_p90", "maxMs": 500}]}, False),
    ],
)
def test_a_predicted_ttft_the_answer_rests_on_is_labelled(
    kind: ProvenanceKind, latency: dict[str, Any], caveat: bool, tmp_path: Path
) -> None:
    provenance = Provenance(kind=kind, gpu="h100-80gb", engine="vLLM", jouletune_version="0.1")
    small = Point(tensor_parallel_size=1, max_num_seqs=64)
    large = small.model_copy(update={"max_num_seqs": 256})
    records = [_trial(0, small, 0.10, provenance), _trial(1, large, 0.07, provenance)]
    spec = parse_spec({"searchSpace": {"maxNumSeqs": [64, 256]}, **latency})
    rec = recommend(spec=spec, records=records, finalists=[small, large], done=True)
    assert rec.recommended is not None and rec.recommended.point == large
    assert (PREDICTED_TTFT_CAVEAT in rec.caveats) is caveat
    assert ("TTFT figures are the simulator's predictions" in rec.summary()) is caveat
    write_report(tmp_path, spec=spec, name="r", records=records, recommendation=rec)
    page = (tmp_path / "report.html").read_text()
    assert ("Before relying on its TTFT." in page) is caveat
    assert "Published evidence" not in page, "no cap or lock: no cap evidence"
