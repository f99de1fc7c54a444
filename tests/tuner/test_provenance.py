"""Provenance read from what bench results carry: a committed real H100 result reads as
measured; the simulator's engine or its GPUs, either one, make a prediction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jouletune import __version__
from jouletune.loadgen import EnvironmentInfo
from jouletune.tuner import Provenance, parse_spec, recommend
from jouletune.tuner._provenance import common_provenance

ROOT = Path(__file__).resolve().parents[2]
# A real vLLM 0.24.0 run on an H100 (benchmarks/results/h100-vllm/README.md); its exporter
# predates the driver label, so the result names no driver.
H100_RESULT = ROOT / "benchmarks" / "results" / "h100-vllm" / "n64_w512-256.json"
# What a sim-server's /version answers (jouletune.sim._server).
SIM_SERVER_VERSION = f"jouletune-sim {__version__} (vLLM 0.24 API)"


def _h100() -> EnvironmentInfo:
    return EnvironmentInfo.model_validate(json.loads(H100_RESULT.read_text())["environment"])


def test_a_committed_h100_result_reads_as_measured() -> None:
    where = Provenance.of(_h100())
    assert where.kind == "measured" and not where.predicted
    assert where.sentence() == "measured on NVIDIA H100 80GB HBM3, driver unknown, vLLM 0.24.0"
    named = Provenance.of(_h100().model_copy(update={"gpu_driver_version": "580.159.04"}))
    assert named.sentence() == "measured on NVIDIA H100 80GB HBM3, driver 580.159.04, vLLM 0.24.0"


def test_the_simulators_server_and_gpus_read_as_predicted() -> None:
    sim = _h100().model_copy(
        update={"server_version": SIM_SERVER_VERSION, "gpu_driver_version": "simulated"}
    )
    where = Provenance.of(sim)
    assert where.kind == "predicted"
    assert (where.gpu, where.driver, where.engine) == ("h100-80gb", "simulated", "jouletune-sim")
    assert where.sentence() == (
        f"predicted by jouletune's simulator (jouletune {__version__}, GPU model h100-80gb, "
        "not a measurement)"
    )


@pytest.mark.parametrize(
    ("server_version", "driver"),
    [
        # A real vLLM whose energy came from a sim-server's GPUs.
        ("0.24.0", "simulated"),
        # A sim-server measured on a real GPU's counter (dcgm-exporter names its driver).
        (SIM_SERVER_VERSION, "580.159.04"),
    ],
)
def test_either_half_simulated_is_a_prediction(server_version: str, driver: str) -> None:
    env = _h100().model_copy(
        update={"server_version": server_version, "gpu_driver_version": driver}
    )
    assert Provenance.of(env).kind == "predicted"


def test_a_mean_with_any_predicted_run_is_predicted() -> None:
    measured = Provenance.of(_h100())
    predicted = Provenance.of(_h100().model_copy(update={"server_version": SIM_SERVER_VERSION}))
    assert common_provenance([None, measured, predicted]) == predicted
    assert common_provenance([measured, None]) == measured
    assert common_provenance([None]) is None


def test_the_summary_names_an_origin_only_where_there_are_figures() -> None:
    spec = parse_spec({"model": "m", "slos": [{"metric": "tpot_p90", "maxMs": 10}]})
    nothing = recommend(spec=spec, records=[], finalists=[], done=True)
    assert nothing.verdict == "failed" and nothing.summary() == nothing.message
    where = Provenance.of(_h100())
    told = nothing.model_copy(update={"provenance": where})
    assert told.summary() == f"{nothing.message}\n{where.sentence()}"
