"""`jouletune bench` as a real process: bad input, lost servers and exporters, counter resets.

Every failure must be one clear line on stderr, a non-zero exit and no traceback; a run that
went wrong after it started still writes its JSON (invalid or partial)."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.loadgen.conftest import (
    MODEL,
    SHORT_RUN,
    SimStack,
    bench_args,
    generated_tokens,
    get_json,
    no_traceback,
    run_bench_cli,
    spawn_bench,
)
from tests.poll import wait_for
from tests.procs import free_port, sim_exporter, sim_server

# Small, fast workload for the tests that are not about accuracy.
SMALL = ["--random-input-len", "64", "--random-output-len", "16", *SHORT_RUN]


def _one_line_error(stderr: str, *fragments: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("jouletune bench:"), stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr


def test_unreachable_server(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    run = run_bench_cli(bench_args(url, result=tmp_path / "r.json"))
    assert run.returncode == 1 and run.result is None
    _one_line_error(run.stderr, "cannot reach the server", url)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--num-prompts", "0"], "--num-prompts"),
        (["--request-rate", "fast"], "--request-rate"),
        (["--dataset-name", "custom"], "--dataset-path"),
        (["--exporter-url", "localhost:9400"], "--exporter-url"),
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], fragment: str) -> None:
    run = run_bench_cli(bench_args("http://127.0.0.1:1", *args, result=tmp_path / "r.json"))
    assert run.returncode == 2
    _one_line_error(run.stderr, fragment)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "empty dataset file"),
        ('{"prompt": "hi", "output_len": 4}\nnot json\n', ":2: not valid JSON"),
    ],
)
def test_bad_dataset_file(stack: SimStack, tmp_path: Path, content: str, fragment: str) -> None:
    data = tmp_path / "w.jsonl"
    data.write_text(content)
    args = ["--dataset-name", "custom", "--dataset-path", str(data)]
    run = run_bench_cli(bench_args(stack.sim.url, *args, result=tmp_path / "r.json"))
    assert run.returncode == 1 and run.result is None
    _one_line_error(run.stderr, str(data), fragment)


def test_unreachable_exporter(stack: SimStack, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    run = run_bench_cli(
        bench_args(stack.sim.url, "--exporter-url", url, result=tmp_path / "r.json")
    )
    assert run.returncode == 1 and run.result is None
    _one_line_error(run.stderr, "exporter unreachable", url)


def test_custom_dataset_and_chat_endpoint(stack: SimStack, tmp_path: Path) -> None:
    data = tmp_path / "w.jsonl"
    data.write_text(
        "".join(f'{{"prompt": "t{i} t5 t6", "output_len": {4 + i}}}\n' for i in range(8))
    )
    args = [
        "--dataset-name",
        "custom",
        "--dataset-path",
        str(data),
        "--endpoint",
        "/v1/chat/completions",
    ]
    run = run_bench_cli(
        bench_args(
            stack.sim.url,
            *args,
            *SHORT_RUN,
            "--max-concurrency",
            "2",
            "--num-prompts",
            "16",
            result=tmp_path / "r.json",
        )
    )
    assert run.returncode == 0, run.stderr
    res = run.result
    assert res is not None and res["completed"] == 16 and res["failed"] == 0
    assert res["energy_j"] is None and res["gpus"] == []  # no exporter given: no energy, not 0
    assert res["run"]["output_tokens"] == 2 * sum(4 + i for i in range(8))
    # A chat stream opens with a role chunk, counted as vLLM's benchmark counts it: fewer
    # tokens than chunks, nothing merged, nothing to warn of.
    assert res["tokens_per_chunk"] < 1 and res["warnings"] == []
    assert "TTFT" in run.stdout and "steady-state window" in run.stdout  # the rich summary


def test_no_steady_state_is_invalid_but_written(stack: SimStack, tmp_path: Path) -> None:
    # Every request sent at once: ramp-up runs straight into drain.
    run = run_bench_cli(
        bench_args(stack.sim.url, *SMALL, "--num-prompts", "4", result=tmp_path / "r.json")
    )
    assert run.returncode == 1
    _one_line_error(run.stderr, "invalid result", "no steady state")
    res = run.result
    assert res is not None and res["valid"] is False and res["window"] is None
    assert res["completed"] == 4 and res["latency_scope"] == "all"
    assert res["ttft_ms"]["mean"] is not None and res["energy_per_output_token_j"] is None


def test_server_dying_mid_run_keeps_partial_result(tmp_path: Path) -> None:
    result = tmp_path / "r.json"
    with sim_server(MODEL) as sim:
        before = generated_tokens(sim.url)
        args = ["--max-concurrency", "4", "--num-prompts", "2000"]
        bench = spawn_bench(bench_args(sim.url, *SMALL, *args, result=result))
        try:
            wait_for(
                lambda: generated_tokens(sim.url) > before + 200, timeout_s=30, what="progress"
            )
            sim.popen.kill()
            _, stderr = bench.communicate(timeout=60)
        finally:
            bench.kill()
    assert bench.returncode == 1 and no_traceback(stderr)
    _one_line_error(stderr, "partial result", "server lost mid-run", str(result))
    res = json.loads(result.read_text())
    assert res["partial"] is True and res["valid"] is False
    assert 0 < res["completed"] < 2000 and res["failed"] >= 1


def test_energy_counter_going_backwards_invalidates(tmp_path: Path) -> None:
    """Mid-run, the exporter behind the URL is replaced by one reading another GPU whose
    counter is lower (a sidecar restarted against a different device): the energy counter
    goes backwards inside the window."""
    result = tmp_path / "r.json"
    port = free_port()
    # `busy` starts first and runs the load, so its counter is the higher one.
    with sim_server(MODEL) as busy, sim_server(MODEL) as fresh, ExitStack() as first_exporter:
        assert _energy_j(busy.url) > _energy_j(fresh.url)
        first_exporter.enter_context(sim_exporter(busy.url, port=port))
        args = [
            "--max-concurrency",
            "4",
            "--num-prompts",
            "160",
            "--exporter-url",
            f"http://127.0.0.1:{port}",
        ]
        bench = spawn_bench(bench_args(busy.url, *SMALL, *args, result=result))
        try:
            start = generated_tokens(busy.url)
            wait_for(
                lambda: generated_tokens(busy.url) > start + 500, timeout_s=30, what="progress"
            )
            first_exporter.close()
            with sim_exporter(fresh.url, port=port):
                _, stderr = bench.communicate(timeout=90)
        finally:
            bench.kill()
    assert bench.returncode == 1 and no_traceback(stderr)
    _one_line_error(stderr, "invalid result", "went backwards")
    res = json.loads(result.read_text())
    assert res["valid"] is False and res["energy_j"] is None and res["completed"] == 160


def _energy_j(sim_url: str) -> float:
    return float(sum(g["energy_j"] for g in get_json(sim_url + "/sim/gpus")["gpus"]))


def test_open_loop_rate_with_warmup(stack: SimStack, tmp_path: Path) -> None:
    args = ["--request-rate", "40", "--burstiness", "0.5", "--num-prompts", "120"]
    args += ["--warmup-requests", "4", "--exporter-url", stack.exporter.url]
    run = run_bench_cli(bench_args(stack.sim.url, *SMALL, *args, result=tmp_path / "r.json"))
    assert run.returncode == 0, run.stderr
    res = run.result
    assert res is not None and res["valid"]
    assert res["completed"] == 120 and res["workload"]["sent"] == 120  # warm-up not counted
    assert res["config"]["request_rate"] == 40.0 and res["workload"]["request_rate"] == 40.0
    # 120 requests at 40/s take ~3 s to send; the window sits inside the sending phase.
    assert 0 < res["window"]["start_s"] < res["window"]["end_s"] <= res["duration_s"]
    assert res["energy_per_output_token_j"] > 0 and res["avg_batch_size_source"] == "server"
    assert res["tokens_per_chunk"] == 1.0  # the sim-server streams each token as it comes


def test_duration_caps_the_sending(stack: SimStack, tmp_path: Path) -> None:
    args = ["--max-concurrency", "8", "--num-prompts", "100000", "--duration", "1.5"]
    run = run_bench_cli(bench_args(stack.sim.url, *SMALL, *args, result=tmp_path / "r.json"))
    assert run.returncode == 0, run.stderr
    res = run.result
    assert res is not None and res["valid"]
    assert 8 < res["workload"]["sent"] < 100000 and res["completed"] == res["workload"]["sent"]
    assert 1.5 <= res["duration_s"] < 5.0
