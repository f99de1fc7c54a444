"""Each validity check fails when exactly its condition is broken, and only it.

Real runs against a sim-server where the condition can be broken for real (a short run, a
trickle of requests, a stale exporter, a power cap set mid-run, requests the server refuses,
a GPU warming up); the energy counter's reset is fed to the energy arithmetic directly, since
no exporter can be made to reset on cue. The prompt-length check is broken in
tests/loadgen/test_tokenizer.py (prompts built with another tokenizer than the server's).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from jouletune.loadgen import ValidityThresholds, Window
from jouletune.loadgen._checks import Evidence, run_checks
from jouletune.loadgen._sources import GpuReading
from jouletune.loadgen._telemetry import ExporterScrape, measure_energy
from tests.loadgen.conftest import (
    MODEL,
    SimStack,
    bench_args,
    generated_tokens,
    run_bench_cli,
)
from tests.poll import wait_for
from tests.procs import sim_exporter, sim_server

LOAD = ["--max-concurrency", "32", "--num-prompts", "100000", "--random-input-len", "256",
        "--random-output-len", "64"]  # fmt: skip


@pytest.fixture(scope="module")
def stack() -> Iterator[SimStack]:
    """A sim-server that refuses prompts over 2048 tokens, and its exporter."""
    with ExitStack() as stack:
        sim = stack.enter_context(sim_server(MODEL, "--max-model-len", "2048"))
        exporter = stack.enter_context(sim_exporter(sim.url))
        yield SimStack(sim=sim, exporter=exporter)


def _failing(stack: SimStack, tmp_path: Path, *args: str, exporter: str = "") -> list[str]:
    """The names of the checks a run with `args` failed (it must be invalid for no other
    reason)."""
    run = run_bench_cli(
        bench_args(
            stack.sim.url, "--exporter-url", exporter or stack.exporter.url, *args,
            result=tmp_path / "r.json",
        )
    )  # fmt: skip
    result: dict[str, Any] | None = run.result
    assert result is not None, run.stderr
    failed = [c for c in result["checks"] if c["verdict"] == "fail"]
    assert run.returncode == (1 if failed else 0), run.stderr
    assert result["invalid_reason"] == ("; ".join(c["message"] for c in failed) or None)
    return [c["name"] for c in failed]


def test_a_gpu_warming_up_is_not_steady(stack: SimStack, tmp_path: Path) -> None:
    # The first run on an idle GPU: it warms by degrees over the window (tens of seconds of
    # thermal lag), which a 1 °C bound does not allow.
    failing = _failing(stack, tmp_path, *LOAD, "--duration", "7", "--check",
                       "max_temperature_drift_c=1")  # fmt: skip
    assert failing == ["temperature_stable"]


def test_a_short_run(stack: SimStack, tmp_path: Path) -> None:
    failing = _failing(stack, tmp_path, *LOAD, "--duration", "2")
    assert failing == ["window_duration"]


def test_a_trickle_of_requests(stack: SimStack, tmp_path: Path) -> None:
    # Two requests a second of 16 tokens each: a long enough window with too few tokens.
    failing = _failing(
        stack, tmp_path, "--request-rate", "2", "--num-prompts", "16",
        "--random-input-len", "64", "--random-output-len", "16",
    )  # fmt: skip
    assert failing == ["window_output_tokens"]


def test_an_exporter_that_refreshes_once_a_second(stack: SimStack, tmp_path: Path) -> None:
    # Decode-heavy: the stale exporter's few SM-clock readings (three a half) must not land on
    # prefill steps, whose clock under the 700 W limit is 30% lower, or the clock check fails
    # too (one run in four with LOAD's 256:64).
    decode_heavy = [*LOAD, "--random-input-len", "64", "--random-output-len", "256"]  # last wins
    with sim_exporter(stack.sim.url, "--format", "dcgm", "--collect-interval-s", "1") as stale:
        failing = _failing(
            stack, tmp_path, *decode_heavy, "--duration", "7", "--energy-source", "dcgm",
            exporter=stale.url,
        )  # fmt: skip
    assert failing == ["energy_samples"]


def _set_cap(sim_url: str, watts: float) -> None:
    body = json.dumps({"watts": watts}).encode()
    req = urllib.request.Request(
        f"{sim_url}/sim/gpus/0/power-limit", data=body, method="PUT",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    urllib.request.urlopen(req, timeout=5).close()


def _cap_once_running(sim_url: str, after_s: float, watts: float) -> threading.Thread:
    """Cap the GPU `after_s` seconds after the server starts running requests."""

    def cap() -> None:
        wait_for(lambda: generated_tokens(sim_url) > 0, timeout_s=60, what="the run to start")
        time.sleep(after_s)
        _set_cap(sim_url, watts)

    thread = threading.Thread(target=cap, daemon=True)
    thread.start()
    return thread


def test_a_power_cap_set_mid_run_moves_the_clock(tmp_path: Path) -> None:
    with ExitStack() as stack:  # a fresh server: its token counter tells when the run starts
        sim = stack.enter_context(sim_server(MODEL))
        fresh = SimStack(sim=sim, exporter=stack.enter_context(sim_exporter(sim.url)))
        thread = _cap_once_running(sim.url, 3.5, 250.0)
        failing = _failing(fresh, tmp_path, *LOAD, "--duration", "7")
        thread.join()
    assert failing == ["sm_clock_stable"]


def test_requests_the_server_refuses(stack: SimStack, tmp_path: Path) -> None:
    # One prompt in ten is longer than the server's 2048-token context: HTTP 400.
    data = tmp_path / "prompts.jsonl"
    lines = [{"prompt": "t1 " * (3000 if i % 10 == 0 else 200), "output_len": 64}
             for i in range(400)]  # fmt: skip
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    failing = _failing(
        stack, tmp_path, "--dataset-name", "custom", "--dataset-path", str(data),
        "--max-concurrency", "16", "--num-prompts", "400",
    )  # fmt: skip
    assert failing == ["error_rate"]


def test_an_energy_counter_that_resets() -> None:
    # 500 W, and the counter starts again from zero halfway (a driver reload).
    points = [(i / 20, 25.0 * (i if i < 100 else i - 100)) for i in range(200)]
    scrapes = [
        ExporterScrape(
            url="http://x",
            t_s=t,
            gpus=(GpuReading(gpu="0", uuid="u", model_name="m", energy_j=e),),
        )
        for t, e in points
    ]
    m = measure_energy(scrapes, Window(start_s=1, end_s=9, plateau_in_flight=1), cap_ratio=0.98)
    assert m.energy_j is None and m.problem is not None and "went backwards" in m.problem
    evidence = Evidence(
        window_s=8.0, window_output_tokens=10_000, energy_samples=160,
        counter_decreases=m.counter_decreases, sm_clock_drift=0.0, temperature_drift_c=0.0,
        error_rate=0.0, prompt_tokens_deviation=0.0,
    )  # fmt: skip
    checks = run_checks(evidence, ValidityThresholds())
    assert [c.name for c in checks if c.verdict == "fail"] == ["energy_counter_monotonic"]


def test_a_check_that_cannot_be_measured_is_unknown_not_failed() -> None:
    evidence = Evidence(
        window_s=30.0, window_output_tokens=10_000, energy_samples=100, counter_decreases=0,
        sm_clock_drift=None, temperature_drift_c=None, error_rate=0.0,
        prompt_tokens_deviation=None,
    )  # fmt: skip
    verdicts = {c.name: c.verdict for c in run_checks(evidence, ValidityThresholds())}
    assert verdicts["sm_clock_stable"] == verdicts["temperature_stable"] == "unknown"
    assert set(verdicts.values()) == {"pass", "unknown"}
