"""The diagnosis: recomputed from every committed real H100 result, the best 512/256 point
within 1-3x the physical floor; each cause named where its condition holds; and a fresh
result's diagnosis recomputed from its own JSON."""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

import pytest

from jouletune.gpu.simulated import gpu_model
from jouletune.loadgen import BenchResult, diagnose, inputs_of
from jouletune.loadgen._diagnosis import DiagnosisInputs, floor_flops_per_joule
from jouletune.models import model_arch
from tests.loadgen.conftest import SHORT_RUN, SimStack, bench_args, run_bench_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import diagnose_results
from result_files import read_json

LLAMA = model_arch("meta-llama/Llama-3.1-8B-Instruct")
API_SERVER_RUNS = Path(__file__).resolve().parents[2] / "benchmarks/results/h100-api-server"


def test_every_committed_h100_result_is_diagnosed_and_the_best_lies_near_the_floor() -> None:
    rows = diagnose_results.committed()
    assert len(rows) >= 25
    assert all(r.diagnosis.held_back_by != "unknown" for r in rows)
    assert all(r.diagnosis.decode_bound == "memory" for r in rows)  # Llama-8B decode on H100
    best = diagnose_results.best_512_256(rows)
    assert best.path.name == "n256_w512-256.json"
    assert best.diagnosis.floor_distance is not None
    assert 1.0 <= best.diagnosis.floor_distance <= 3.0
    # The floor: 2 x active parameters x 3 processed tokens per output token at 0.967 TFLOP/J.
    expected = 2 * LLAMA.active_params * 3 / 0.967e12
    assert best.diagnosis.floor_j_per_output_token == pytest.approx(expected, rel=0.001)


def test_the_h100_floor_is_the_measured_matmul_and_others_are_estimates() -> None:
    per_j, source = floor_flops_per_joule(gpu_model("h100-80gb"))
    assert per_j == pytest.approx(0.967e12, rel=0.001) and source.startswith("measured")
    assert floor_flops_per_joule(gpu_model("a100-80gb"))[1].startswith("estimated")


BASE = DiagnosisInputs(
    j_per_output_token=0.08, energy_j=1000.0, idle_energy_j=0.0, window_s=10.0,
    window_completed=100, batch=120.0, max_num_seqs=128, client_concurrency=128,
    mean_prompt_tokens=512.0, mean_output_tokens=256.0, gpu_name="NVIDIA H100 80GB HBM3",
    num_gpus=1, utilization=0.97, sm_clock_hz=1.98e9, cap_bound_fraction=0.0,
    power_limit_w=700.0,
)  # fmt: skip


@pytest.mark.parametrize(
    ("change", "cause", "knob"),
    [
        ({}, "memory bandwidth", "larger max_num_seqs"),
        ({"idle_energy_j": 400.0}, "load", "more concurrent requests"),
        ({"cap_bound_fraction": 0.9, "power_limit_w": 300.0, "sm_clock_hz": 1.1e9}, "power cap",
         "higher cap"),
        ({"batch": 40.0, "client_concurrency": 48}, "load", "more would cut"),
        ({"batch": 30.0, "client_concurrency": 48, "waiting": 0.0, "in_flight": 48.0}, "load",
         "more would cut"),
        ({"batch": 40.0}, "scheduler", "max_num_batched_tokens"),
        ({"batch": 40.0, "waiting": 80.0, "in_flight": 128.0}, "scheduler", "max_num_batched"),
        ({"batch": 40.0, "waiting": 0.0, "in_flight": 128.0}, "api server", "--api-server-count"),
        ({"waiting": 2.0, "in_flight": 128.0}, "memory bandwidth", "larger max_num_seqs"),
        ({"batch": 40.0, "waiting": 30.0, "in_flight": 128.0}, "scheduler", "max_num_batched"),
        ({"waiting": 0.0, "in_flight": 160.0}, "memory bandwidth", "larger max_num_seqs"),
        ({"batch": 90.0, "waiting": 0.0, "in_flight": 120.0}, "scheduler", "max_num_batched"),
        ({"batch": 90.0, "waiting": 0.0, "in_flight": 121.0}, "api server", "--api-server-count"),
        ({"mean_prompt_tokens": 8192.0, "mean_output_tokens": 16.0}, "compute", "TTFT"),
        ({"batch": 2048.0, "max_num_seqs": 2048, "client_concurrency": 2048,
          "mean_prompt_tokens": 16.0, "mean_output_tokens": 16.0, "window_completed": 10},
         "compute", "locked SM clock"),
    ],
    ids=["memory", "idle", "cap", "client", "client-outside", "scheduler", "queued",
         "api-server", "few-outside", "some-queued", "full-batch", "outside-at-bound",
         "outside-past-bound", "prefill", "compute"],
)  # fmt: skip
def test_each_cause_and_its_knob(change: dict[str, object], cause: str, knob: str) -> None:
    d = diagnose(BASE.model_copy(update=change), model=LLAMA, model_name="llama")
    assert d.held_back_by == cause, d.sentence
    assert knob in d.sentence


def _logged_waiting(log: Path) -> list[int]:
    """vLLM's `Waiting: N reqs` in every stats line it logged while it ran requests."""
    pattern = re.compile(r"Running: (\d+) reqs, Waiting: (\d+) reqs")
    with gzip.open(log, "rt") as f:
        pairs = [(int(m[1]), int(m[2])) for line in f if (m := pattern.search(line))]
    return [waiting for running, waiting in pairs if running > 0]


def _in_flight(result: BenchResult) -> float:
    """The client's mean requests in flight over the window, from the per-request detail."""
    assert result.window is not None and result.requests is not None
    start, end = result.window.start_unix_s, result.window.end_unix_s
    busy = sum(
        max(0.0, min(r.end_unix_s, end) - max(r.send_unix_s, start)) for r in result.requests
    )
    return busy / (end - start)


def test_a_real_api_server_that_held_the_batch_back_is_named_with_its_knob() -> None:
    # 512 streams of 128/256 on the H100 with one API server (h100-api-server/api1): vLLM ran
    # ~300 of them and queued none. That run predates the result's own waiting and in-flight
    # figures, so they come from vLLM's log and the per-request detail.
    run = API_SERVER_RUNS / "api1"
    result = BenchResult.model_validate(read_json(run / "n512_w128-256.json.gz"))
    waiting = _logged_waiting(run / "vllm_n512.log.gz")
    assert len(waiting) >= 2 and max(waiting) == 0
    in_flight = _in_flight(result)
    assert in_flight == pytest.approx(512, rel=0.01)
    inputs = inputs_of(result).model_copy(update={"waiting": 0.0, "in_flight": in_flight})
    diagnosis = diagnose(inputs, model=LLAMA, model_name="llama")
    assert diagnosis.held_back_by == "api server" and "--api-server-count" in diagnosis.sentence
    assert diagnosis.front_end_requests is not None and diagnosis.front_end_requests > 150
    # Without the engine's queue the diagnosis cannot tell, and says the old cause.
    assert diagnose(inputs_of(result), model=LLAMA, model_name="llama").held_back_by != (
        "api server"
    )


def test_a_result_is_diagnosed_again_from_its_own_json(stack: SimStack, tmp_path: Path) -> None:
    run = run_bench_cli(
        bench_args(
            stack.sim.url, *SHORT_RUN, "--exporter-url", stack.exporter.url,
            "--max-concurrency", "16", "--num-prompts", "200", "--duration", "3",
            "--random-input-len", "128", "--random-output-len", "64",
            "--server-max-num-seqs", "256", result=tmp_path / "r.json",
        )
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = BenchResult.model_validate_json((tmp_path / "r.json").read_text())
    assert result.diagnosis is not None
    assert result.diagnosis.held_back_by == "load"  # 16 clients against 256 sequences
    fill = result.diagnosis.batch_fill
    assert fill is not None and 0 < fill <= 16 / 256
    again = diagnose(inputs_of(result), model=model_arch(result.diagnosis.model or ""),
                     model_name=result.diagnosis.model or "")  # fmt: skip
    assert again == result.diagnosis
    assert json.loads(result.model_dump_json())["diagnosis"]["sentence"] == again.sentence
