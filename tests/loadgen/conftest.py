"""Real processes for the load generator's end-to-end tests: a `jouletune sim-server`, a
`jouletune exporter --sim URL` in front of it, and `jouletune bench` runs against both."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.procs import Proc, sim_exporter, sim_server
from tests.validity import SHORT_RUN

__all__ = ["SHORT_RUN"]  # re-exported for the load generator's tests

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
BENCH_TIMEOUT_S = 120.0


@dataclass
class SimStack:
    """A sim-server and the exporter that serves its GPUs."""

    sim: Proc
    exporter: Proc


@dataclass
class BenchRun:
    """A finished `jouletune bench` process."""

    returncode: int
    stdout: str
    stderr: str
    result: dict[str, Any] | None


@contextmanager
def sim_stack(*sim_args: str) -> Iterator[SimStack]:
    """A sim-server with its exporter."""
    with ExitStack() as stack:
        sim = stack.enter_context(sim_server(MODEL, *sim_args))
        exporter = stack.enter_context(sim_exporter(sim.url))
        yield SimStack(sim=sim, exporter=exporter)


@pytest.fixture(scope="module")
def stack() -> Iterator[SimStack]:
    """One sim-server + exporter shared by a test module (the bench waits for idle)."""
    with sim_stack() as s:
        yield s


def bench_args(base_url: str, *extra: str, result: Path) -> list[str]:
    """`jouletune bench` arguments with a result file and no progress bar."""
    return [
        "bench",
        "--base-url",
        base_url,
        "--result-filename",
        str(result),
        "--no-progress",
        *extra,
    ]


def run_bench_cli(args: list[str], *, timeout_s: float = BENCH_TIMEOUT_S) -> BenchRun:
    """Run `python -m jouletune ARGS` to completion; read the result file if one was written."""
    proc = subprocess.run(
        [sys.executable, "-m", "jouletune", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    return BenchRun(proc.returncode, proc.stdout, proc.stderr, _result(args))


def spawn_bench(args: list[str]) -> subprocess.Popen[str]:
    """Start `python -m jouletune ARGS` in the background (stdout and stderr piped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "jouletune", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(args: list[str]) -> dict[str, Any] | None:
    if "--result-filename" not in args:
        return None
    path = Path(args[args.index("--result-filename") + 1])
    return json.loads(path.read_text()) if path.exists() else None


def get_json(url: str) -> Any:
    """GET a JSON document."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def truth(sim_url: str, start_unix_s: float, end_unix_s: float) -> dict[str, Any]:
    """The simulator's ground truth between two instants."""
    data: dict[str, Any] = get_json(
        f"{sim_url}/sim/truth?start_unix_s={start_unix_s}&end_unix_s={end_unix_s}"
    )
    return data


def generated_tokens(sim_url: str) -> float:
    """`vllm:generation_tokens_total` of a server, summed over its series."""
    with urllib.request.urlopen(sim_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:generation_tokens_total")
    )


def no_traceback(stderr: str) -> bool:
    """True when stderr holds no Python traceback."""
    return "Traceback" not in stderr
