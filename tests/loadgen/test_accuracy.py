"""`jouletune bench` against a real `jouletune sim-server` and `jouletune exporter --sim`:
TTFT, TPOT and energy per output token agree with the simulator's ground truth within 2%.

The truth (`GET /sim/truth`) covers the requests that finished in the result's window
(`window.start_unix_s`..`end_unix_s`), with server-side timestamps. The client's TTFT also
holds the trip of the request into the server and of the first token out of it: about 1-2 ms
at one stream (measured: ~0.5 ms the client's own, the rest the sim-server's asyncio timers,
which wake up to 1 ms late) and 15-50 ms at 256 streams, where the sim-server parses a burst of
up to 256 requests before its handler stamps their arrival. Prompts are therefore long enough
that prefill, not transport, dominates TTFT: 8192 tokens at one stream, a 256-deep prefill
queue at 256.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.loadgen.conftest import SimStack, bench_args, run_bench_cli, truth

DESIGN_KEYS = {
    "config", "workload", "completed", "failed", "duration_s", "window", "ttft_ms", "tpot_ms",
    "itl_ms", "e2el_ms", "request_throughput", "output_token_throughput", "energy_j",
    "energy_per_output_token_j", "energy_per_request_j", "avg_power_w", "gpus", "avg_batch_size",
}  # fmt: skip
TOLERANCE = 0.02


def _truth_means(t: dict[str, Any]) -> tuple[float, float, float]:
    """(mean TTFT ms, mean TPOT ms, J per output token) from the simulator's records."""
    reqs = t["requests"]
    assert reqs, "the truth window holds no finished request"
    ttft_ms = 1000 * sum(r["first_token_unix_s"] - r["arrival_unix_s"] for r in reqs) / len(reqs)
    tpots = [
        (r["last_token_unix_s"] - r["first_token_unix_s"]) / (r["output_tokens"] - 1)
        for r in reqs
        if r["output_tokens"] > 1
    ]
    return ttft_ms, 1000 * sum(tpots) / len(tpots), t["energy_j"] / t["output_tokens"]


@pytest.mark.parametrize(
    ("concurrency", "input_len", "output_len", "num_prompts"),
    [(1, 8192, 16, 5), (256, 512, 32, 512)],
    ids=["1-stream", "256-streams"],
)
def test_latency_and_energy_match_simulator_truth(
    stack: SimStack,
    tmp_path: Path,
    concurrency: int,
    input_len: int,
    output_len: int,
    num_prompts: int,
) -> None:
    run = run_bench_cli(
        bench_args(
            stack.sim.url,
            "--exporter-url", stack.exporter.url,
            "--max-concurrency", str(concurrency),
            "--num-prompts", str(num_prompts),
            "--random-input-len", str(input_len),
            "--random-output-len", str(output_len),
            result=tmp_path / "result.json",
        )
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    res = run.result
    assert res is not None and res["valid"] and not res["partial"]
    assert res.keys() >= DESIGN_KEYS
    w = res["window"]
    t = truth(stack.sim.url, w["start_unix_s"], w["end_unix_s"])
    ttft_ms, tpot_ms, j_per_token = _truth_means(t)
    assert res["ttft_ms"]["mean"] == pytest.approx(ttft_ms, rel=TOLERANCE)
    assert res["tpot_ms"]["mean"] == pytest.approx(tpot_ms, rel=TOLERANCE)
    assert res["energy_per_output_token_j"] == pytest.approx(j_per_token, rel=TOLERANCE)
    # The window's requests and tokens are the ones the simulator finished and emitted in it.
    assert w["completed_requests"] == pytest.approx(len(t["requests"]), rel=TOLERANCE)
    assert res["window_output_tokens"] == pytest.approx(t["output_tokens"], rel=TOLERANCE)
    # The batch the server ran and the GPU the exporter served.
    assert res["avg_batch_size_source"] == "server"
    assert res["avg_batch_size"] == pytest.approx(concurrency, rel=0.1)
    assert [g["model_name"] for g in res["gpus"]] == ["NVIDIA H100 80GB HBM3"]
    assert res["environment"]["gpu_models"] == ["NVIDIA H100 80GB HBM3"]
    assert res["avg_power_w"] > res["idle_power_w"] > 0
