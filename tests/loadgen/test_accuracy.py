"""`jouletune bench` against a real `jouletune sim-server` and `jouletune exporter --sim`:
TTFT, TPOT and energy per output token agree with the simulator's ground truth within 2%.

The truth (`GET /sim/truth`) is taken over the result's window (`window.start_unix_s`..
`end_unix_s`); latencies are compared over the requests the result's statistics cover (the
steady-state cohort, named with --save-detailed), with the simulator's server-side times.

The client's TTFT also holds the trip of the request into the server and of the first token
out of it: on a 2-core machine a millisecond or two at one stream (the sim-server's asyncio
timers wake up to 1 ms late), and around ten at 256 streams, where each engine step ends with
256 chunk writes by the sim-server and 256 reads by the client, the new streams' first tokens
among them. Both are fixed costs, so the workloads keep prefill, not transport, in charge of
TTFT: 8192-token prompts at one stream (TTFT ~245 ms), and at 256 streams a prefill budget of
2048 tokens per step (`--max-num-batched-tokens 2048`, vLLM's pre-V1 default) so that queued
prefills set TTFT (~2 s). Output lengths vary by ±50% so completions, and with them arrivals,
spread out. `pytest -s` prints the figures.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jouletune.contract import RESULT_KEYS
from tests.loadgen.conftest import SHORT_RUN, SimStack, bench_args, run_bench_cli, sim_stack, truth

TOLERANCE = 0.02
# More than a chunk's way from the simulator to the client and the client's clock drift.
_CLOCK_SLACK_S = 5.0


@pytest.fixture(scope="module")
def chunked() -> Iterator[SimStack]:
    """A sim-server with a 2048-token prefill budget per step, and its exporter."""
    with sim_stack("--max-num-batched-tokens", "2048") as s:
        yield s


def _truth_means(reqs: list[dict[str, Any]]) -> tuple[float, float]:
    """(mean TTFT ms, mean TPOT ms) of the simulator's records."""
    assert reqs, "no truth record to compare with"
    ttft_ms = 1000 * sum(r["first_token_unix_s"] - r["arrival_unix_s"] for r in reqs) / len(reqs)
    tpots = [
        (r["last_token_unix_s"] - r["first_token_unix_s"]) / (r["output_tokens"] - 1)
        for r in reqs
        if r["output_tokens"] > 1
    ]
    return ttft_ms, 1000 * sum(tpots) / len(tpots)


@pytest.mark.parametrize(
    ("concurrency", "input_len", "output_len", "range_ratio", "num_prompts"),
    [(1, 8192, 16, 0.0, 5), (256, 512, 32, 0.5, 640)],
    ids=["1-stream", "256-streams"],
)
def test_latency_and_energy_match_simulator_truth(
    chunked: SimStack,
    tmp_path: Path,
    concurrency: int,
    input_len: int,
    output_len: int,
    range_ratio: float,
    num_prompts: int,
) -> None:
    run = run_bench_cli(
        bench_args(
            chunked.sim.url,
            *SHORT_RUN,
            "--exporter-url", chunked.exporter.url,
            "--max-concurrency", str(concurrency),
            "--num-prompts", str(num_prompts),
            "--random-input-len", str(input_len),
            "--random-output-len", str(output_len),
            "--random-range-ratio", str(range_ratio),
            "--save-detailed",
            result=tmp_path / "result.json",
        )
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    res = run.result
    assert res is not None and res["valid"] and not res["partial"]
    assert res.keys() >= set(RESULT_KEYS)
    w = res["window"]
    t = truth(chunked.sim.url, w["start_unix_s"], w["end_unix_s"])
    covered = {q["request_id"] for q in res["requests"] if q["in_window"] and q["cohort"]}
    assert len(covered) == res["latency_requests"] > 0
    # The server emits a last token before its client reads it (one the client read just after
    # the window opened may have left the simulator just before), and the client's unix times
    # are its monotonic clock plus one offset taken at the start, which a host's clock slewing
    # moves: so look a little beyond the window, on both sides.
    around = truth(
        chunked.sim.url, w["start_unix_s"] - _CLOCK_SLACK_S, w["end_unix_s"] + _CLOCK_SLACK_S
    )
    same = [r for r in around["requests"] if r["request_id"] in covered]
    assert len(same) == len(covered), "the simulator finished every request the client did"
    ttft_ms, tpot_ms = _truth_means(same)
    j_per_token = t["energy_j"] / t["output_tokens"]
    print(  # shown with `pytest -s`: the figures behind the assertions
        f"\n{concurrency} stream(s), {len(same)} requests: "
        f"TTFT {res['ttft_ms']['mean']:.2f} vs truth {ttft_ms:.2f} ms, "
        f"TPOT {res['tpot_ms']['mean']:.3f} vs {tpot_ms:.3f} ms, "
        f"J/token {res['energy_per_output_token_j']:.5f} vs {j_per_token:.5f}"
    )
    assert res["ttft_ms"]["mean"] == pytest.approx(ttft_ms, rel=TOLERANCE)
    assert res["tpot_ms"]["mean"] == pytest.approx(tpot_ms, rel=TOLERANCE)
    assert res["energy_per_output_token_j"] == pytest.approx(j_per_token, rel=TOLERANCE)
    # The detail's gaps are the ones the ITL statistics were taken over: one per later token.
    cohort = [q for q in res["requests"] if q["request_id"] in covered]
    gaps = [g for q in cohort for g in q["itl_ms"]]
    assert len(gaps) == sum(q["output_tokens"] - 1 for q in cohort)
    assert statistics.mean(gaps) == pytest.approx(res["itl_ms"]["mean"], rel=1e-4)
    # The window's requests and tokens are the ones the simulator finished and emitted in it.
    assert w["completed_requests"] == pytest.approx(len(t["requests"]), rel=TOLERANCE)
    assert res["window_output_tokens"] == pytest.approx(t["output_tokens"], rel=TOLERANCE)
    # The batch the server ran (vLLM's running gauge: with a small prefill budget part of the
    # 256 streams wait) and the GPU the exporter served.
    assert res["avg_batch_size_source"] == "server"
    assert 0 < res["avg_batch_size"] <= concurrency
    assert [g["model_name"] for g in res["gpus"]] == ["NVIDIA H100 80GB HBM3"]
    assert res["environment"]["gpu_models"] == ["NVIDIA H100 80GB HBM3"]
    assert res["avg_power_w"] > res["idle_power_w"] > 0


def test_vllms_default_invocation_gets_the_servers_steady_state(tmp_path: Path) -> None:
    """`vllm bench serve`'s default: every prompt at once, no concurrency cap, more prompts
    than the server's batch. The window is the server's (its gauges: batch full while the
    queue lasts) and its J/token is the simulator's."""
    with sim_stack("--max-num-seqs", "64") as s:
        run = run_bench_cli(
            bench_args(
                s.sim.url,
                "--exporter-url", s.exporter.url,
                # Issue 12's must-hold, at the default checks: a queue of ~4.9 s at 64 streams.
                "--num-prompts", "300",
                "--request-rate", "inf",
                "--random-input-len", "256",
                "--random-output-len", "128",
                result=tmp_path / "result.json",
            )
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        res = run.result
        assert res is not None and res["valid"], res and res["invalid_reason"]
        w = res["window"]
        t = truth(s.sim.url, w["start_unix_s"], w["end_unix_s"])
    assert w["rule"] == "server-queue" and w["plateau_in_flight"] == 64
    j_per_token = t["energy_j"] / t["output_tokens"]
    print(
        f"\nqueue rule: window {w['duration_s']:.1f} s, batch {res['avg_batch_size']:.1f}, "
        f"J/token {res['energy_per_output_token_j']:.5f} vs truth {j_per_token:.5f}"
    )
    assert res["energy_per_output_token_j"] == pytest.approx(j_per_token, rel=TOLERANCE)
    assert res["avg_batch_size"] == pytest.approx(64, rel=0.05)  # a full batch throughout
    assert w["duration_s"] > 0.5 * res["duration_s"]
